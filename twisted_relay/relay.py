"""
The relay's connection protocol and its factory.

L{RelayProtocol} is an adapter: it turns frames into state transitions, sends
the frames each transition calls for, and hands a paired connection over to
a L{Splice}. Every (state, event) pair has a defined outcome; anything
unexpected becomes an ERROR frame and a close, never a traceback. The states
are documented in docs/protocol.rst.
"""

from __future__ import annotations

from enum import Enum

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_relay.errors import ErrorCode, default_message
from twisted_relay.registry import ChannelInUse, ChannelRegistry, UnknownChannel
from twisted_relay.splice import Splice
from twisted_relay.wire import (
    RELAY_PROTOCOL_VERSION,
    FrameReceiver,
    FrameType,
    MalformedFrame,
    decode_channel,
    decode_version,
    encode_channel,
    encode_error,
    encode_version,
)


class State(Enum):
    NEW = "new"  # connected, HELLO not yet seen
    GREETED = "greeted"  # HELLO accepted, role not yet chosen
    WAITING = "waiting"  # a sender holding a channel, no receiver yet
    RECEIVER = "receiver"  # a receiver whose CLAIM is being matched
    PAIRED = "paired"  # forwarding raw bytes to the partner
    CLOSED = "closed"  # closing or closed; all input ignored


#: Seconds between an orderly close and cutting a peer that will not read.
CLOSE_GRACE = 10.0


class RelayProtocol(FrameReceiver):
    """
    One client connection. Roles are learnt from the frames: REGISTER makes
    a sender, CLAIM a receiver.

    @ivar state: where this connection is in its life; tests and logs read it.
    @ivar role: C{"sender"}, C{"receiver"} or C{None} before one is chosen.
    """

    _log = Logger()
    factory: "RelayFactory"

    def __init__(self) -> None:
        self.state = State.NEW
        self.role: str | None = None
        self.channel: int | None = None
        self.splice: Splice | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._close_reason: ErrorCode | None = None
        self._holds_channel = False

    @property
    def peer(self) -> IAddress:
        return self.transport.getPeer()

    # connection events

    def connectionMade(self) -> None:
        self.factory.connection_opened(self)
        timeout = self.factory.handshake_timeout
        if timeout is not None:
            self._handshake_timer = self.factory.clock.callLater(timeout, self._handshake_expired)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        old = self.state
        self._transition(State.CLOSED)
        self._cancel_timers()
        self._release_channel()
        if old is State.PAIRED and self.splice is not None:
            self.splice.leg_lost(self, outcome=f"{self.role}-closed")
        self.factory.connection_closed(self)

    # frames

    def frame_received(self, ftype: int, value: bytes) -> None:
        try:
            if self.state is State.NEW:
                self._on_new(ftype, value)
            elif self.state is State.GREETED:
                self._on_greeted(ftype, value)
            else:
                # WAITING senders have nothing to say until paired; PAIRED
                # and CLOSED never parse frames. Anything here is a breach.
                self.close_with_error(ErrorCode.PROTOCOL_ERROR, f"unexpected frame in state {self.state.value}")
        except MalformedFrame as e:
            self.close_with_error(ErrorCode.PROTOCOL_ERROR, str(e))

    def _on_new(self, ftype: int, value: bytes) -> None:
        if ftype != FrameType.HELLO:
            self.close_with_error(ErrorCode.PROTOCOL_ERROR, "expected HELLO first")
            return
        version = decode_version(value)
        if version != RELAY_PROTOCOL_VERSION:
            self.close_with_error(
                ErrorCode.VERSION_MISMATCH,
                f"this relay speaks protocol version {RELAY_PROTOCOL_VERSION}, "
                f"the client speaks {version}; upgrade the older side",
            )
            return
        self.send_frame(FrameType.WELCOME, encode_version(RELAY_PROTOCOL_VERSION))
        self._transition(State.GREETED)

    def _on_greeted(self, ftype: int, value: bytes) -> None:
        if ftype == FrameType.REGISTER:
            self.role = "sender"
            self._cancel_handshake_timer()
            self.channel = self.factory.registry.add_sender(self, _wait_expired)
            self._holds_channel = True
            self._transition(State.WAITING)
            self.send_frame(FrameType.CHANNEL, encode_channel(self.channel))
        elif ftype == FrameType.CLAIM:
            self.role = "receiver"
            self._transition(State.RECEIVER)
            self._claim(decode_channel(value))
        else:
            self.close_with_error(ErrorCode.PROTOCOL_ERROR, "expected REGISTER or CLAIM")

    def _claim(self, channel: int) -> None:
        self.channel = channel
        try:
            sender = self.factory.registry.claim(channel)
        except UnknownChannel:
            self.close_with_error(ErrorCode.UNKNOWN_CODE, default_message(ErrorCode.UNKNOWN_CODE))
            return
        except ChannelInUse:
            self.close_with_error(ErrorCode.CODE_IN_USE, default_message(ErrorCode.CODE_IN_USE))
            return
        self._cancel_handshake_timer()
        self.factory.pair(sender, self)

    # paired

    def start_forwarding(self, splice: Splice) -> None:
        """Called by the splice: from now on every byte is the partner's."""
        self.splice = splice
        self._transition(State.PAIRED, channel=self.channel)
        self.send_frame(FrameType.PAIRED)
        self.set_raw_mode()

    def raw_data_received(self, data: bytes) -> None:
        if self.splice is not None and self.state is State.PAIRED:
            self.splice.carry(self, data)

    # errors and closing

    def bad_length(self, length: int) -> None:
        if length == 0:
            self.close_with_error(ErrorCode.PROTOCOL_ERROR, "empty frame")
        else:
            self.close_with_error(
                ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes exceeds {self.max_frame_length}"
            )

    def close_with_error(self, code: ErrorCode, message: str) -> None:
        """Tell the client why, then close; cut it if it will not read."""
        if self.state is State.CLOSED:
            return
        self._log.info(
            "closing {role} connection: {message}",
            role=self.role,
            outcome=code.name.lower(),
            message=message,
            peer=str(self.peer),
            state=self.state.value,
        )
        self._close_reason = code
        self._transition(State.CLOSED)
        self.discard_input()
        self._cancel_handshake_timer()
        self._release_channel()
        self.factory.record_refusal(self, code)
        self.send_frame(FrameType.ERROR, encode_error(code, message))
        self.transport.loseConnection()
        self._abort_timer = self.factory.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _release_channel(self) -> None:
        # Exactly once: after release the number may go to another sender.
        if self._holds_channel and self.channel is not None:
            self._holds_channel = False
            self.factory.registry.release(self.channel)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.close_with_error(ErrorCode.TIMEOUT, "handshake timed out")

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_handshake_timer()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None

    def _transition(self, new: State, **fields: object) -> None:
        """Every state change passes here, so each is logged exactly once."""
        self._log.debug("{old} -> {new}", old=self.state.value, new=new.value, role=self.role, **fields)
        self.state = new


def _wait_expired(sender: RelayProtocol) -> None:
    sender.close_with_error(ErrorCode.TIMEOUT, "no receiver came for this code in time; start again")


class RelayFactory(Factory):
    """
    Holds what the connections share: the channel registry, the clock, the
    timeouts, and the set of open connections (for shutdown and limits).
    """

    protocol = RelayProtocol
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        handshake_timeout: float | None = 30.0,
        wait_timeout: float | None = 3600.0,
    ) -> None:
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.registry: ChannelRegistry[RelayProtocol] = ChannelRegistry(clock, wait_timeout)
        self.connections: set[RelayProtocol] = set()
        self.splices: set[Splice] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        p = self.protocol()
        p.factory = self
        return p

    def connection_opened(self, proto: RelayProtocol) -> None:
        self.connections.add(proto)

    def connection_closed(self, proto: RelayProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def record_refusal(self, proto: RelayProtocol, code: ErrorCode) -> None:
        """Hook for limits and metrics: a connection was refused with C{code}."""

    def pair(self, sender: RelayProtocol, receiver: RelayProtocol) -> None:
        assert sender.channel is not None
        splice = Splice(sender, receiver, self.clock, sender.channel, on_end=self.splices.discard)
        self.splices.add(splice)
        self._log.info("paired", channel=sender.channel, sender=str(sender.peer), receiver=str(receiver.peer))
        splice.start()

    def stopFactory(self) -> None:
        self.registry.stop()
