"""
The relay's connection protocol and its factory.

L{RelayProtocol} is an adapter: it turns frames into state transitions, sends
the frames each transition calls for, and hands a paired connection over to
a L{Splice}. Every (state, event) pair has a defined outcome; anything
unexpected becomes an ERROR frame and a close, never a traceback. The states
are documented in docs/protocol.rst.

Each connection logs one event per step of its life (opened, registered or
claimed, paired, refused, closed) with the fields of L{twisted_relay.logs};
state changes themselves are not logged, so the default log is one line per
step.
"""

from __future__ import annotations

import socket
from enum import Enum

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_relay import logs
from twisted_relay.errors import ErrorCode, default_message
from twisted_relay.limits import MAX_FAILED_CODES, ConnectionLimits, FailedClaims, peer_host
from twisted_relay.metrics import RelayMetrics
from twisted_relay.registry import ChannelInUse, ChannelRegistry, UnknownChannel
from twisted_relay.splice import Splice
from twisted_relay.zero_copy import PIPE_SIZE
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
    @ivar host: the peer's host, as limits count it; C{None} if it has none.
    @ivar admitted: counted by the factory's connection limits (so to be
        uncounted when it closes); C{False} for a connection refused as busy.
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
        self.host: str | None = None
        self.admitted = False
        self._peer_text = "?"
        self._opened_at = 0.0

    # connection events

    def connectionMade(self) -> None:
        if self.factory.socket_buffer is not None:
            _cap_socket_buffers(self.transport, self.factory.socket_buffer)
        peer = self.transport.getPeer()
        self.host = peer_host(peer)
        self._peer_text = logs.format_peer(peer)
        self._opened_at = self.factory.clock.seconds()
        refused_by = self.factory.connection_opened(self)
        self._log_step(logs.OPENED, "{peer} connected")
        if refused_by is not None:
            # Say "busy" and close, as LimitTotalConnectionsFactory's
            # overflowProtocol does; nothing else is disturbed.
            self.close_with_error(ErrorCode.RELAY_BUSY, default_message(ErrorCode.RELAY_BUSY), limit=refused_by)
            return
        timeout = self.factory.handshake_timeout
        if timeout is not None:
            self._handshake_timer = self.factory.clock.callLater(timeout, self._handshake_expired)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        old = self.state
        self._transition(State.CLOSED)
        self._cancel_timers()
        self._release_channel()
        if old is State.PAIRED and self.splice is not None:
            self.splice.leg_lost(self, outcome=self._closed_by_client())
        text = "{peer} closed ({outcome}) after {duration:.1f}s"
        if self.splice is not None:
            text += ": {bytes_up} bytes up, {bytes_down} down by {forwarding}"
        forwarding = self.splice.forwarding if self.splice is not None else None
        self._log_step(logs.CLOSED, text, outcome=self._outcome(), **{logs.FORWARDING: forwarding})
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
            self._log_step(logs.REGISTERED, "{peer} registered as sender on channel {channel}")
        elif ftype == FrameType.CLAIM:
            self.role = "receiver"
            self._transition(State.RECEIVER)
            self._claim(decode_channel(value))
        else:
            self.close_with_error(ErrorCode.PROTOCOL_ERROR, "expected REGISTER or CLAIM")

    def _claim(self, channel: int) -> None:
        self.channel = channel
        self._log_step(logs.CLAIMED, "{peer} claims channel {channel}")
        failed_claims = self.factory.failed_claims
        if failed_claims.blocked(self.host):
            # Refused before the registry is asked, so a blocked guesser
            # learns nothing about which channels are taken.
            self.close_with_error(
                ErrorCode.TOO_MANY_ATTEMPTS, default_message(ErrorCode.TOO_MANY_ATTEMPTS), limit=MAX_FAILED_CODES
            )
            return
        try:
            sender = self.factory.registry.claim(channel)
        except UnknownChannel:
            failed_claims.record_failure(self.host)
            self.close_with_error(ErrorCode.UNKNOWN_CODE, default_message(ErrorCode.UNKNOWN_CODE))
            return
        except ChannelInUse:
            failed_claims.record_failure(self.host)
            self.close_with_error(ErrorCode.CODE_IN_USE, default_message(ErrorCode.CODE_IN_USE))
            return
        self._cancel_handshake_timer()
        self.factory.pair(sender, self)

    # paired

    def start_forwarding(self, splice: Splice) -> None:
        """Called by the splice: tell the client it is paired. The splice
        then calls L{set_raw_mode}, from which every byte is the partner's."""
        self.splice = splice
        self._transition(State.PAIRED)
        self.send_frame(FrameType.PAIRED)
        self._log_step(logs.PAIRED, "{peer} paired as {role} on channel {channel}")

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

    def close_with_error(self, code: ErrorCode, message: str, limit: str | None = None) -> None:
        """
        Tell the client why, then close; cut it if it will not read.

        @param limit: the limit that caused this refusal (a
            L{twisted_relay.limits} name, counted in the metrics), if any.
        """
        if self.state is State.CLOSED:
            return
        self._log_step(
            logs.REFUSED,
            "{peer} refused ({outcome}): {message}",
            outcome=logs.error_outcome(code.name),
            message=message,
            state=self.state.value,
        )
        if limit is not None:
            self.factory.metrics.refused(limit)
        self._close_reason = code
        self._transition(State.CLOSED)
        self.discard_input()
        self._cancel_handshake_timer()
        self._release_channel()
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

    def _transition(self, new: State) -> None:
        """Every state change passes here. Not logged: the steps that matter
        to an operator are logged by L{_log_step}, one line each."""
        self.state = new

    def _closed_by_client(self) -> str:
        if self.role is None:
            return logs.CLIENT_CLOSED
        return logs.SENDER_CLOSED if self.role == "sender" else logs.RECEIVER_CLOSED

    def _outcome(self) -> str:
        """How this connection ended: its refusal, its transfer's outcome, or
        which client closed it."""
        if self._close_reason is not None:
            return logs.error_outcome(self._close_reason.name)
        if self.splice is not None and self.splice.outcome is not None:
            return self.splice.outcome
        return self._closed_by_client()

    def _log_step(self, event: str, text: str, outcome: str | None = None, **extra: object) -> None:
        """Log one step of this connection's life with every field of
        L{logs.LIFECYCLE_FIELDS}; C{text} is for people."""
        splice = self.splice
        fields: dict[str, object] = {
            logs.EVENT: event,
            logs.PEER: self._peer_text,
            logs.ROLE: self.role,
            logs.CHANNEL: self.channel,
            logs.BYTES_UP: splice.bytes_up if splice is not None else 0,
            logs.BYTES_DOWN: splice.bytes_down if splice is not None else 0,
            logs.DURATION: self.factory.clock.seconds() - self._opened_at,
            logs.OUTCOME: outcome,
        }
        self._log.info(text, **fields, **extra)


def _cap_socket_buffers(transport: object, size: int) -> None:
    """Bound the kernel memory a client's socket may hold. Set before any
    byte moves, so TCP's window never advertises more than this allows."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            handle.setsockopt(socket.SOL_SOCKET, option, size)


def _wait_expired(sender: RelayProtocol) -> None:
    sender.close_with_error(ErrorCode.TIMEOUT, "no receiver came for this code in time; start again")


class RelayFactory(Factory):
    """
    Holds what the connections share: the channel registry, the clock, the
    timeouts, the limits, the metrics, and the set of open connections (for
    shutdown and limits).

    Every limit and the idle timeout are off unless given: the defaults of
    C{twistd filerelay} live in L{twisted_relay.service.Options}.

    @ivar idle_timeout: seconds a paired transfer may move no byte either
        way before both legs are cut; C{None}: never.
    @ivar limits: open-connection caps, in total and per address.
    @ivar failed_claims: failed claims per address, and who must wait.
    @ivar metrics: this factory's Prometheus metrics and their registry.
    @ivar kernel_forwarding: let paired transfers be forwarded inside the
        kernel (L{twisted_relay.zero_copy}) where the platform allows;
        C{False} keeps every byte on the portable path.
    @ivar socket_buffer: cap, in bytes, of each client socket's kernel send
        and receive buffers; C{None}: the kernel's defaults.
    """

    protocol = RelayProtocol

    def __init__(
        self,
        clock: IReactorTime,
        handshake_timeout: float | None = 30.0,
        wait_timeout: float | None = 3600.0,
        idle_timeout: float | None = None,
        max_connections: int | None = None,
        max_per_ip: int | None = None,
        max_failed_codes: int | None = None,
        kernel_forwarding: bool = True,
        socket_buffer: int | None = None,
    ) -> None:
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.kernel_forwarding = kernel_forwarding
        self.socket_buffer = socket_buffer
        self.registry: ChannelRegistry[RelayProtocol] = ChannelRegistry(clock, wait_timeout)
        self.limits = ConnectionLimits(max_connections, max_per_ip)
        self.failed_claims = FailedClaims(clock, max_failed_codes)
        self.connections: set[RelayProtocol] = set()
        self.splices: set[Splice] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.metrics = RelayMetrics(self)

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        p = self.protocol()
        p.factory = self
        return p

    def connection_opened(self, proto: RelayProtocol) -> str | None:
        """
        Track C{proto} until it closes, and count it against the limits.

        @return: the name of the limit it would exceed, if it must be
            refused (it is then tracked, for shutdown, but not counted).
        """
        self.connections.add(proto)
        refused_by = self.limits.admit(proto.host)
        proto.admitted = refused_by is None
        return refused_by

    def connection_closed(self, proto: RelayProtocol) -> None:
        if proto.admitted:
            proto.admitted = False
            self.limits.release(proto.host)
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

    def pair(self, sender: RelayProtocol, receiver: RelayProtocol) -> None:
        assert sender.channel is not None
        splice = Splice(
            sender,
            receiver,
            self.clock,
            sender.channel,
            on_end=self._transfer_ended,
            idle_timeout=self.idle_timeout,
            kernel_forwarding=self.kernel_forwarding,
            # Capped socket buffers cap the pipes too: the operator asked
            # for bounded kernel memory per transfer.
            pipe_size=min(PIPE_SIZE, self.socket_buffer or PIPE_SIZE),
        )
        self.splices.add(splice)
        self.metrics.paired()
        splice.start()

    def _transfer_ended(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self.metrics.transfer_finished(splice)

    def stopFactory(self) -> None:
        self.registry.stop()
