"""
What the sender and the receiver share: reading a relay address, connecting,
greeting the relay, and ending a transfer with one well-defined result.

A client protocol's L{ClientProtocol.done} fires only after its connection
has closed, so anything it last wrote (an ACK, an ERROR for the peer) has
been flushed before the process exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from twisted_relay.codes import Code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed, default_message
from twisted_relay.pake import BadKeyExchange, KeyExchange, SessionKeys
from twisted_relay.records import MAX_SEALED_FRAME, Corrupted, Opener, Sealer
from twisted_relay.wire import (
    PEER_PROTOCOL_VERSION,
    RELAY_PROTOCOL_VERSION,
    SEALED_TYPES,
    FrameReceiver,
    FrameType,
    MalformedFrame,
    decode_error,
    decode_version,
    encode_error,
    encode_version,
)

DEFAULT_RELAY_PORT = 9021

#: Seconds to connect to the relay and for it to answer HELLO, REGISTER
#: and CLAIM.
HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Timeouts:
    """
    How long a client waits before giving up, in seconds. Only the relay
    can tell a waiting sender that nobody came, so the sender's own limit
    is a backstop for a relay that has silently died, a little beyond the
    relay's default wait timeout.

    @ivar handshake: for the relay to answer each handshake frame.
    @ivar stall: without a byte moving either way once paired.
    @ivar wait: for a receiver to claim the sender's code.
    """

    handshake: float = HANDSHAKE_TIMEOUT
    stall: float = 120.0
    wait: float = 3600.0 + 300.0

#: Seconds to let a closing connection flush before cutting it.
CLOSE_GRACE = 5.0


_UNDECIDED = object()


def parse_relay_address(text: str) -> tuple[str, int]:
    """
    C{HOST:PORT}, C{[IPv6]:PORT}, C{HOST} or C{[IPv6]} (port 9021).

    @raise ValueError: with a sentence for the user.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad relay address {text!r}: unclosed '['")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad relay address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"bad relay address {text!r}: write IPv6 addresses as [::1]:9021")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad relay address {text!r}: no host")
    if not port_text:
        return host, DEFAULT_RELAY_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad relay port {port_text!r}")
    return host, int(port_text)


def relay_endpoint(reactor: object, address: str) -> IStreamClientEndpoint:
    host, port = parse_relay_address(address)
    return HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)


async def connect(endpoint: IStreamClientEndpoint, protocol: "ClientProtocol") -> None:
    """Connect C{protocol} and wait for its transfer's end.

    @raise TransferFailed: for every way the transfer can fail, including an
        unreachable relay.
    """
    try:
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
    except (ConnectError, DNSLookupError) as e:
        raise TransferFailed(ExitCode.RELAY_UNREACHABLE, f"cannot reach the relay: {e}") from None
    await protocol.done


def _version_text(theirs: int, ours: int) -> str:
    return (
        f"the other side speaks protocol version {theirs}, this side speaks {ours}; "
        "both must run compatible versions"
    )


class ClientProtocol(FrameReceiver):
    """
    Greets the relay, runs the key exchange with the peer once paired, then
    dispatches each frame to the handler the current phase expects; any
    other frame ends the transfer as a protocol error. Before keys are
    confirmed, ERROR frames from the relay or the peer are understood in
    every phase; after, only sealed records are accepted, so nothing the
    relay injects or alters is believed.

    @ivar done: fires with C{None} on success or fails with
        L{TransferFailed}, after the connection has closed.
    """

    def __init__(self, clock: IReactorTime, timeouts: Timeouts = Timeouts()) -> None:
        self.clock = clock
        self.timeouts = timeouts
        self.done: Deferred[None] = Deferred()
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._result: TransferFailed | None | object = _UNDECIDED
        self._timer: IDelayedCall | None = None
        self._timer_seconds: float | None = None
        self._timer_message = "timed out"
        self._abort_timer: IDelayedCall | None = None
        self._closed: Deferred[None] = Deferred()
        #: Set once PAIRED: only then is anyone listening for our ERROR frames.
        self.paired = False
        self._exchange: KeyExchange | None = None
        self._keys: SessionKeys | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None

    # hooks for subclasses

    def greeted(self) -> None:
        """The relay accepted our version: say what we are."""
        raise NotImplementedError

    def secured(self) -> None:
        """Both sides proved they hold the same code; sealed records may flow."""
        raise NotImplementedError

    def wrong_code(self) -> None:
        """The peer's key confirmation failed: someone has the wrong code."""
        raise NotImplementedError

    def lost_before_end(self) -> TransferFailed:
        """Why the transfer failed when the connection dropped unexpectedly."""
        return TransferFailed(ExitCode.PEER_GONE, "the connection to the relay was lost")

    # phases

    def expect(self, handlers: dict[int, Callable[[bytes], None]]) -> None:
        """Enter a phase: only these frame types (and ERROR) are allowed."""
        self._handlers = handlers

    def watch(self, seconds: float | None, message: str = "timed out") -> None:
        """Fail with C{message} unless some byte moves within C{seconds};
        C{None} waits forever. Every byte received restarts the count."""
        self._cancel_timer()
        self._timer_seconds = seconds
        self._timer_message = message
        self.progressed()

    def progressed(self) -> None:
        """Something moved: restart the stall count."""
        if self._timer_seconds is None or self._result is not _UNDECIDED:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timer_seconds)
        else:
            self._timer = self.clock.callLater(self._timer_seconds, self._timed_out)

    # events

    def connectionMade(self) -> None:
        self.send_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION))
        self.expect({FrameType.WELCOME: self._on_welcome})
        self.watch(self.timeouts.handshake, "the relay did not answer in time")

    def dataReceived(self, data: bytes) -> None:
        self.progressed()
        super().dataReceived(data)

    #: Sealed records are opened straight from the read buffer (see
    #: L{FrameReceiver.frame_values_as_views}); handlers still get bytes,
    #: except DATA's, which is written out before the next record arrives.
    frame_values_as_views = True

    def frame_received(self, ftype: int, value: bytes | memoryview) -> None:  # type: ignore[override]
        try:
            if self._opener is not None:
                if ftype not in SEALED_TYPES:
                    raise Corrupted(f"unsealed frame {ftype:#04x} after keys were confirmed")
                plaintext = self._opener.open(ftype, value)
                value = plaintext if ftype == FrameType.SEALED_DATA else bytes(plaintext)
                is_error = ftype == FrameType.SEALED_ERROR
            else:
                value = bytes(value)
                is_error = ftype == FrameType.ERROR
            if is_error:
                code, message = decode_error(value)
                self.finish(TransferFailed.from_wire(code, message))
                return
            handler = self._handlers.get(ftype)
            if handler is None:
                self.protocol_error(f"unexpected frame type {ftype:#04x}")
                return
            handler(value)
        except Corrupted as e:
            self.finish(
                TransferFailed(ExitCode.TRANSFER_CORRUPTED, f"transfer corrupted: {e}"),
                tell_peer=ErrorCode.TRANSFER_CORRUPTED,
            )
        except (MalformedFrame, BadKeyExchange) as e:
            self.protocol_error(str(e))

    def bad_length(self, length: int) -> None:
        if self._opener is not None:
            # Our authenticated peer never sends this: something altered the stream.
            self.finish(
                TransferFailed(ExitCode.TRANSFER_CORRUPTED, f"transfer corrupted: frame length {length} out of bounds"),
                tell_peer=ErrorCode.TRANSFER_CORRUPTED,
            )
            return
        self.protocol_error(f"frame length {length} out of bounds")

    def _on_welcome(self, value: bytes) -> None:
        version = decode_version(value)
        if version != RELAY_PROTOCOL_VERSION:
            self.protocol_error(f"the relay answered with protocol version {version}")
            return
        self.greeted()

    # the key exchange, the same on both sides

    def start_key_exchange(self, code: Code, role: str) -> None:
        """Paired: announce our version and our SPAKE2 message together."""
        self.paired = True
        self._exchange = KeyExchange(code, role)
        self.send_frame(FrameType.PEER_HELLO, encode_version(PEER_PROTOCOL_VERSION))
        self.send_frame(FrameType.PAKE, self._exchange.start())
        self.expect({FrameType.PEER_HELLO: self._on_peer_hello})

    def _on_peer_hello(self, value: bytes) -> None:
        if self.check_peer_hello(value):
            self.expect({FrameType.PAKE: self._on_pake})

    def _on_pake(self, value: bytes) -> None:
        assert self._exchange is not None
        self._keys = self._exchange.finish(value)
        self.send_frame(FrameType.CONFIRM, self._keys.confirmation)
        self.expect({FrameType.CONFIRM: self._on_confirm})

    def _on_confirm(self, value: bytes) -> None:
        assert self._keys is not None
        if not self._keys.confirms(value):
            self.wrong_code()
            return
        self._sealer = Sealer(self._keys.send_key)
        self._opener = Opener(self._keys.receive_key)
        self.max_frame_length = MAX_SEALED_FRAME
        self.secured()

    def send_sealed(self, ftype: FrameType, plaintext: bytes | memoryview) -> None:
        """Seal C{plaintext} as the next record of our direction and send it."""
        assert self._sealer is not None
        self.send_record(ftype, self._sealer.seal_frame(ftype, plaintext))

    def send_record(self, ftype: FrameType, frame: bytes) -> None:
        """Write one sealed record's whole frame (tests hook here to drop,
        cut or inspect records)."""
        self.transport.write(frame)

    def check_peer_hello(self, value: bytes) -> bool:
        """Compare the peer's protocol version with ours; on a mismatch,
        tell it and fail. Returns whether the transfer may go on."""
        version = decode_version(value)
        if version == PEER_PROTOCOL_VERSION:
            return True
        # Each side reads the message as "the other side" being the sender.
        self.finish(
            TransferFailed(ExitCode.PROTOCOL_ERROR, _version_text(version, PEER_PROTOCOL_VERSION)),
            tell_peer=ErrorCode.VERSION_MISMATCH,
            message=_version_text(PEER_PROTOCOL_VERSION, version),
        )
        return False

    def interrupt(self) -> Deferred[None]:
        """
        The user stopped us (Ctrl-C, SIGTERM): tell the peer, clean up.
        The returned Deferred fires once the connection has closed, so a
        reactor shutdown that waits for it lets the ERROR frame out first.
        """
        self.finish(
            TransferFailed(ExitCode.INTERRUPTED, "interrupted"),
            tell_peer=ErrorCode.PEER_GONE,
            message="the other side cancelled the transfer",
        )
        if self.transport is None or self.done.called:
            return succeed(None)  # never connected, or already closed
        return self._closed

    def protocol_error(self, message: str) -> None:
        self.finish(TransferFailed(ExitCode.PROTOCOL_ERROR, f"protocol error: {message}"), tell_peer=ErrorCode.PROTOCOL_ERROR)

    def _timed_out(self) -> None:
        self._timer = None
        self.finish(TransferFailed(ExitCode.TIMEOUT, self._timer_message), tell_peer=ErrorCode.TIMEOUT)

    # the end

    def finish(self, result: TransferFailed | None, tell_peer: ErrorCode | None = None, message: str | None = None) -> None:
        """
        Decide the outcome (the first decision wins), optionally send an
        ERROR frame, and close; L{done} fires once the connection is gone.
        """
        if self._result is not _UNDECIDED:
            return
        self._result = result
        self._cancel_timer()
        self.discard_input()
        if tell_peer is not None and self.paired and self.transport is not None:
            # The peer reads this, so the text is from its point of view:
            # our own message (say "the receiver stopped answering") is not.
            text = message or default_message(tell_peer)
            if self._sealer is not None:
                self.send_sealed(FrameType.SEALED_ERROR, encode_error(tell_peer, text))
            else:
                self.send_frame(FrameType.ERROR, encode_error(tell_peer, text))
        self.cleanup()
        if self.transport is not None:
            self.transport.loseConnection()
            self._abort_timer = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def cleanup(self) -> None:
        """Release local resources (files); called once, when the outcome is
        decided, before the connection has finished closing."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._result is _UNDECIDED:
            self._result = self.lost_before_end()
            self._cancel_timer()
            self.cleanup()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._closed.callback(None)
        result = self._result
        if isinstance(result, TransferFailed):
            self.done.errback(result)
        else:
            self.done.callback(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
