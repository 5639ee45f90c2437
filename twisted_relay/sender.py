"""
The sending side: register with the relay, announce the code, agree keys with
the receiver, offer the file in a sealed header, stream it as sealed records
with backpressure, and succeed only once the receiver acknowledges (sealed)
that the file is stored.

No argv and no printing here: the code is handed to a callback, so the CLI
decides where it goes and tests can capture it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from zope.interface import implementer

from twisted_relay.client import ClientProtocol, Timeouts
from twisted_relay.codes import DEFAULT_WORD_COUNT, Code, make_code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed
from twisted_relay.pake import SENDER
from twisted_relay.records import MAX_RECORD, encode_end
from twisted_relay.wire import FrameType, decode_channel, encode_header

#: Bytes read from the file per record: large, to keep per-record overhead
#: (a frame header, a GCM tag, a few Python calls) negligible.
CHUNK_SIZE = 256 * 1024
assert CHUNK_SIZE <= MAX_RECORD

#: Chunks written per turn of the reactor if the consumer never pauses us.
BURST = 16


@dataclass
class Outgoing:
    """An opened file and what the receiver is told about it."""

    file: IO[bytes]
    name: str
    size: int


class SourceChanged(Exception):
    """The file ended before its announced size: it shrank while sending."""


@implementer(IPushProducer)
class FileStreamer:
    """
    Writes exactly C{size} bytes of a file to a consumer, as fast as the
    consumer allows and no faster: a TCP transport pauses us as soon as its
    buffer holds more than C{bufferSize}, so at most one chunk beyond that
    is ever in memory.

    Chunks are read into one reused buffer and handed to the consumer as
    memoryviews valid only during C{write}: the consumer must use or copy
    them at once (L{SealedData} seals them straight away).

    C{start()} returns a Deferred that fires once every byte has been
    written, or fails with L{SourceChanged} or the read's C{OSError}.
    """

    def __init__(
        self,
        file: IO[bytes],
        size: int,
        consumer: IConsumer,
        clock: IReactorTime,
        chunk_size: int = CHUNK_SIZE,
        on_chunk: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._file = file
        self._remaining = size
        self._consumer = consumer
        self._clock = clock
        self._chunk_size = chunk_size
        self._on_chunk = on_chunk
        self._paused = True
        self._finished = False
        self._scheduled = None
        self._done: Deferred[None] = Deferred()
        self._buffer = memoryview(bytearray(min(chunk_size, size) or 1))

    def start(self) -> Deferred[None]:
        self._consumer.registerProducer(self, True)
        self.resumeProducing()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        """The consumer has gone; the connection's own end reports why."""
        self._finish()

    def _produce(self) -> None:
        self._scheduled = None
        for _ in range(BURST):
            if self._paused or self._finished:
                return
            if self._remaining == 0:
                self._finish()
                self._done.callback(None)
                return
            try:
                n = self._file.readinto(self._buffer[: min(self._chunk_size, self._remaining)])
            except OSError as e:
                self._finish()
                self._done.errback(e)
                return
            if not n:
                self._finish()
                self._done.errback(SourceChanged())
                return
            self._remaining -= n
            self._consumer.write(self._buffer[:n])
            self._on_chunk(n)
        if not self._paused and not self._finished and self._scheduled is None:
            # The consumer keeps taking bytes without pausing us; yield to
            # the reactor between bursts instead of starving it.
            self._scheduled = self._clock.callLater(0, self._produce)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._consumer.unregisterProducer()


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
        on_progress: Callable[[int, int], None] = lambda done, total: None,
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
        self._streamer: FileStreamer | None = None
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
        self.send_sealed(FrameType.SEALED_HEADER, encode_header(self.outgoing.name, self.outgoing.size))
        self.expect({FrameType.SEALED_ACCEPT: self._on_accept})

    def _on_accept(self, value: bytes) -> None:
        self._on_event("sending")
        self.expect({})
        self._streamer = FileStreamer(
            self.outgoing.file,
            self.outgoing.size,
            SealedData(self),
            self.clock,
            on_chunk=self._chunk_sent,
        )
        self._streamer.start().addCallbacks(self._body_sent, self._body_failed)

    def _chunk_sent(self, n: int) -> None:
        self._sent += n
        self.progressed()
        self._on_progress(self._sent, self.outgoing.size)

    def _body_sent(self, _: None) -> None:
        self._body_done = True
        self.send_sealed(FrameType.SEALED_END, encode_end(self.outgoing.size))
        self._on_event("all bytes sent; waiting for the receiver to store the file")
        self.expect({FrameType.SEALED_ACK: self._on_ack})

    def _body_failed(self, failure) -> None:  # type: ignore[no-untyped-def]
        if failure.check(SourceChanged):
            why = "the file got shorter while it was being sent"
        elif failure.check(OSError):
            why = f"cannot read the file: {failure.value.strerror or failure.value}"
        else:
            return  # stopProducing: the connection's end says why
        self.finish(
            TransferFailed(ExitCode.INPUT_UNREADABLE, why),
            tell_peer=ErrorCode.PEER_GONE,
            message="the sender could not read its file; nothing was saved",
        )

    def _on_ack(self, value: bytes) -> None:
        self.finish(None)

    def lost_before_end(self) -> TransferFailed:
        if self.code is None:
            return TransferFailed(ExitCode.PEER_GONE, "the relay closed the connection")
        if self._body_done:
            return TransferFailed(
                ExitCode.PEER_GONE,
                "the connection closed before the receiver confirmed; the file may or may not have been stored",
            )
        return TransferFailed(ExitCode.PEER_GONE, "the receiver went away before the file was stored")

    def cleanup(self) -> None:
        if self._streamer is not None:
            # Unregisters it, so the transport can close without asking a
            # closed file for more.
            self._streamer.stopProducing()
        self.outgoing.file.close()
