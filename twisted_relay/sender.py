"""
The sending side: register with the relay, announce the code, agree keys with
the receiver, offer the file in a sealed header, stream it as sealed records
with backpressure, and succeed only once the receiver acknowledges (sealed)
that the file is stored.

No argv and no printing here: the code is handed to a callback, so the CLI
decides where it goes and tests can capture it.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_relay.client import ClientProtocol, Timeouts
from twisted_relay.codes import DEFAULT_WORD_COUNT, Code, make_code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed
from twisted_relay.pake import SENDER
from twisted_relay.records import MAX_RECORD, encode_end
from twisted_relay.sources import CHUNK_SIZE, Outgoing, SourceChanged
from twisted_relay.wire import FrameType, decode_channel, encode_header

assert CHUNK_SIZE <= MAX_RECORD


@implementer(IConsumer)
class SealedData:
    """
    The file streamer's consumer: each chunk it writes leaves as one sealed
    DATA record. Producer registration goes straight to the transport, so
    the transport's own buffer limit pauses the streamer.
    """

    def __init__(self, proto: ClientProtocol) -> None:
        self._proto = proto

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._proto.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._proto.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._proto.send_sealed(FrameType.SEALED_DATA, data)


class SenderProtocol(ClientProtocol):
    """
    Phases: greeting -> registered (waiting for a receiver) -> key exchange
    -> offered (sealed header sent) -> sending -> awaiting the sealed ACK.

    @ivar code: set once the relay has given us a channel.
    """

    def __init__(
        self,
        clock: IReactorTime,
        outgoing: Outgoing,
        on_code: Callable[[Code], None],
        word_count: int = DEFAULT_WORD_COUNT,
        on_event: Callable[[str], None] = lambda text: None,
        on_progress: Callable[[int, int | None], None] = lambda done, total: None,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        super().__init__(clock, timeouts)
        self.outgoing = outgoing
        self.code: Code | None = None
        self._on_code = on_code
        self._word_count = word_count
        self._on_event = on_event
        self._on_progress = on_progress
        self._sent = 0
        self._body_done = False

    def greeted(self) -> None:
        self.send_frame(FrameType.REGISTER)
        self.expect({FrameType.CHANNEL: self._on_channel})

    def _on_channel(self, value: bytes) -> None:
        self.code = make_code(decode_channel(value), self._word_count)
        self._on_code(self.code)
        # The relay's wait timeout should end this wait; ours is a backstop.
        self.watch(self.timeouts.wait, "no receiver came, and the relay did not say so; start again")
        self.expect({FrameType.PAIRED: self._on_paired})

    def _on_paired(self, value: bytes) -> None:
        assert self.code is not None
        self._on_event("receiver connected; checking the code")
        self.watch(self.timeouts.stall, "the receiver stopped answering")
        self.start_key_exchange(self.code, SENDER)

    def wrong_code(self) -> None:
        # One guess per code: whoever this is, the code is now spent.
        self.finish(
            TransferFailed(ExitCode.WRONG_CODE, "the receiver used a wrong code; nothing was sent. Start again for a new code"),
            tell_peer=ErrorCode.WRONG_CODE,
        )

    def secured(self) -> None:
        out = self.outgoing
        self.send_sealed(FrameType.SEALED_HEADER, encode_header(out.name, out.size, out.kind, out.entries))
        self.expect({FrameType.SEALED_ACCEPT: self._on_accept})

    def _on_accept(self, value: bytes) -> None:
        self._on_event("sending")
        self.expect({})
        self.outgoing.start(SealedData(self), self.clock, self._chunk_sent).addCallbacks(
            self._body_sent, self._body_failed
        )

    def _chunk_sent(self, n: int) -> None:
        self._sent += n
        self.progressed()
        self._on_progress(self._sent, self.outgoing.size)

    def _body_sent(self, total: int) -> None:
        self._body_done = True
        self.send_sealed(FrameType.SEALED_END, encode_end(total))
        self.watch(self.timeouts.stall, "the receiver did not confirm in time; the file may or may not have been stored")
        self._on_event("all bytes sent; waiting for the receiver to store the file")
        self.expect({FrameType.SEALED_ACK: self._on_ack})

    def _body_failed(self, failure: Failure) -> None:
        if failure.check(SourceChanged):
            why = "a file got shorter while it was being sent"
        elif failure.check(OSError):
            why = f"cannot read the input: {failure.value.strerror or failure.value}"
        else:
            why = f"cannot read the input: {failure.getErrorMessage()}"
        self.finish(
            TransferFailed(ExitCode.INPUT_UNREADABLE, why),
            tell_peer=ErrorCode.PEER_GONE,
            message="the sender could not read its file; nothing was saved",
        )

    def _on_ack(self, value: bytes) -> None:
        self.finish(None)

    def lost_before_end(self) -> TransferFailed:
        if not self.paired:
            return TransferFailed(ExitCode.PEER_GONE, "the relay closed the connection")
        if self._body_done:
            return TransferFailed(
                ExitCode.PEER_GONE,
                "the connection closed before the receiver confirmed; the file may or may not have been stored",
            )
        return TransferFailed(ExitCode.PEER_GONE, "the receiver went away before the file was stored")

    def cleanup(self) -> None:
        # Stopping unregisters the streamer, so the transport can close
        # without asking a closed file for more.
        self.outgoing.close()
