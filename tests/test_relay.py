"""
The relay's per-connection state machine, on in-memory transports and a
fake clock: every state meets every event.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone

from twisted_relay.errors import ErrorCode
from twisted_relay.relay import CLOSE_GRACE, RelayFactory, RelayProtocol, State
from twisted_relay.wire import (
    MAX_FRAME,
    RELAY_PROTOCOL_VERSION,
    FrameType,
    decode_error,
    encode_channel,
    encode_frame,
    encode_version,
)

from tests.helpers import make_transport, parse_frames

HELLO = encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION))


class Relay:
    """A relay factory on a fake clock, and ways to open connections to it."""

    def __init__(
        self, handshake_timeout: float | None = 30.0, wait_timeout: float | None = 3600.0, **factory_args: Any
    ) -> None:
        self.clock = Clock()
        self.factory = RelayFactory(
            self.clock, handshake_timeout=handshake_timeout, wait_timeout=wait_timeout, **factory_args
        )

    def connect(self, host: str = "10.0.0.1") -> RelayProtocol:
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(make_transport(host))
        return proto

    def greeted(self, host: str = "10.0.0.1") -> RelayProtocol:
        proto = self.connect(host)
        proto.dataReceived(HELLO)
        proto.transport.clear()
        return proto

    def sender(self) -> tuple[RelayProtocol, int]:
        proto = self.greeted()
        proto.dataReceived(encode_frame(FrameType.REGISTER))
        [(ftype, value)] = parse_frames(proto.transport.value())
        assert ftype == FrameType.CHANNEL
        proto.transport.clear()
        return proto, int(value)

    def receiver(self, channel: int, extra: bytes = b"", host: str = "10.0.0.1") -> RelayProtocol:
        proto = self.greeted(host)
        proto.dataReceived(encode_frame(FrameType.CLAIM, encode_channel(channel)) + extra)
        return proto

    def pair(self) -> tuple[RelayProtocol, RelayProtocol]:
        sender, channel = self.sender()
        receiver = self.receiver(channel)
        sender.transport.clear()
        receiver.transport.clear()
        return sender, receiver


def lose(proto: RelayProtocol) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def error_of(proto: RelayProtocol) -> ErrorCode:
    """The code of the last ERROR frame the protocol wrote; it must be closing."""
    frames = parse_frames(proto.transport.value())
    assert frames and frames[-1][0] == FrameType.ERROR, frames
    assert proto.transport.disconnecting
    return ErrorCode(decode_error(frames[-1][1])[0])


@pytest.fixture
def relay() -> Relay:
    return Relay()


# NEW


def test_hello_is_welcomed(relay: Relay) -> None:
    """A client that says HELLO with our version is welcomed and may choose a role."""
    proto = relay.connect()
    proto.dataReceived(HELLO)
    assert parse_frames(proto.transport.value()) == [(FrameType.WELCOME, encode_version(RELAY_PROTOCOL_VERSION))]
    assert proto.state is State.GREETED


def test_other_version_is_refused(relay: Relay) -> None:
    """A client of another protocol version gets a version-mismatch error and is closed."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION + 1)))
    assert error_of(proto) is ErrorCode.VERSION_MISMATCH
    assert proto.state is State.CLOSED


@pytest.mark.parametrize("ftype", [FrameType.REGISTER, FrameType.CLAIM, FrameType.PAIRED, 0xFF])
def test_anything_before_hello_is_refused(relay: Relay, ftype: int) -> None:
    """Any frame but HELLO first is a protocol error."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(ftype, b"1"))
    assert error_of(proto) is ErrorCode.PROTOCOL_ERROR


def test_short_hello_is_refused(relay: Relay) -> None:
    """A HELLO too short to hold a version is a protocol error, not a crash."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(FrameType.HELLO, b"\x01"))
    assert error_of(proto) is ErrorCode.PROTOCOL_ERROR


def test_oversize_prefix_refused_before_payload(relay: Relay) -> None:
    """A length prefix above the maximum is refused as soon as the prefix is in."""
    proto = relay.connect()
    proto.dataReceived(struct.pack("!I", MAX_FRAME + 1))
    assert error_of(proto) is ErrorCode.FRAME_TOO_LARGE
    proto.dataReceived(b"x" * 100_000)
    assert proto._unprocessed == b""


def test_zero_length_frame_refused(relay: Relay) -> None:
    """A zero-length frame (no type byte) is a protocol error."""
    proto = relay.connect()
    proto.dataReceived(b"\0\0\0\0")
    assert error_of(proto) is ErrorCode.PROTOCOL_ERROR


def test_lost_while_new(relay: Relay) -> None:
    """A connection dropped before HELLO leaves nothing behind."""
    proto = relay.connect()
    lose(proto)
    assert proto.state is State.CLOSED
    assert relay.factory.connections == set()
    assert relay.clock.getDelayedCalls() == []


# handshake timeout


def test_silent_connection_times_out(relay: Relay) -> None:
    """A connection that says nothing is closed after the handshake timeout."""
    proto = relay.connect()
    relay.clock.advance(29.9)
    assert not proto.transport.disconnecting
    relay.clock.advance(0.2)
    assert error_of(proto) is ErrorCode.TIMEOUT


def test_greeted_connection_times_out(relay: Relay) -> None:
    """A client that said HELLO but never chose a role is told it timed out."""
    proto = relay.greeted()
    relay.clock.advance(30)
    assert error_of(proto) is ErrorCode.TIMEOUT


def test_registered_sender_has_no_handshake_timeout(relay: Relay) -> None:
    """Once registered, a sender is bound only by the wait timeout."""
    sender, _ = relay.sender()
    relay.clock.advance(31)
    assert not sender.transport.disconnecting


def test_unread_close_is_cut_after_grace(relay: Relay) -> None:
    """A refused client that does not read its error is cut after a grace period."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(FrameType.CLAIM, b"1"))
    assert not proto.transport.aborted
    relay.clock.advance(CLOSE_GRACE)
    assert proto.transport.aborted
    lose(proto)
    assert relay.clock.getDelayedCalls() == []


# GREETED


def test_register_gives_channel(relay: Relay) -> None:
    """A sender that registers gets a channel number and waits."""
    sender, channel = relay.sender()
    assert sender.state is State.WAITING
    assert sender.role == "sender"
    assert relay.factory.registry.waiting() == [sender]
    assert 1 <= channel <= 9


def test_claim_unknown_channel(relay: Relay) -> None:
    """A receiver with a channel nobody holds is told the code is unknown."""
    receiver = relay.receiver(42)
    assert error_of(receiver) is ErrorCode.UNKNOWN_CODE


@pytest.mark.parametrize("value", [b"", b"0", b"07", b"-1", b"1a", b"1234567890"])
def test_claim_malformed_channel(relay: Relay, value: bytes) -> None:
    """A CLAIM whose channel is not a plain positive number is a protocol error."""
    proto = relay.greeted()
    proto.dataReceived(encode_frame(FrameType.CLAIM, value))
    assert error_of(proto) is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("ftype", [FrameType.HELLO, FrameType.PAIRED, FrameType.ERROR, FrameType.PEER_HELLO])
def test_greeted_unexpected_frame(relay: Relay, ftype: int) -> None:
    """After HELLO, only REGISTER or CLAIM are allowed."""
    proto = relay.greeted()
    proto.dataReceived(encode_frame(ftype, b"\0\1"))
    assert error_of(proto) is ErrorCode.PROTOCOL_ERROR


def test_lost_while_greeted(relay: Relay) -> None:
    """A greeted connection that drops leaves no timer and no entry."""
    proto = relay.greeted()
    lose(proto)
    assert relay.factory.connections == set()
    assert relay.clock.getDelayedCalls() == []


# WAITING


def test_waiting_sender_lost_frees_channel(relay: Relay) -> None:
    """When a waiting sender leaves, its channel is free and its code unknown."""
    sender, channel = relay.sender()
    lose(sender)
    assert len(relay.factory.registry) == 0
    assert relay.clock.getDelayedCalls() == []
    assert error_of(relay.receiver(channel)) is ErrorCode.UNKNOWN_CODE


def test_waiting_sender_must_not_talk(relay: Relay) -> None:
    """A waiting sender that sends a frame is closed and its channel freed."""
    sender, channel = relay.sender()
    sender.dataReceived(encode_frame(FrameType.REGISTER))
    assert error_of(sender) is ErrorCode.PROTOCOL_ERROR
    assert len(relay.factory.registry) == 0


def test_wait_timeout_drops_sender() -> None:
    """A sender nobody claims is told why and closed after the wait timeout."""
    relay = Relay(wait_timeout=60)
    sender, channel = relay.sender()
    relay.clock.advance(59)
    assert not sender.transport.disconnecting
    relay.clock.advance(1)
    assert error_of(sender) is ErrorCode.TIMEOUT
    assert len(relay.factory.registry) == 0


def test_channel_released_once(relay: Relay) -> None:
    """A sender closed for an error does not free its number twice (which could
    free a newer sender's channel)."""
    sender, channel = relay.sender()
    sender.dataReceived(b"\0\0\0\0")  # protocol error: channel released
    relay.clock.advance(relay.factory.registry.cooldown)
    relay.factory.registry._randbelow = lambda n: channel - 1  # force reuse
    newcomer, channel2 = relay.sender()
    assert channel2 == channel
    lose(sender)
    assert relay.factory.registry.waiting() == [newcomer]


# RECEIVER -> PAIRED


def test_pairing(relay: Relay) -> None:
    """A receiver's CLAIM pairs it with the waiting sender; both are told."""
    sender, channel = relay.sender()
    receiver = relay.receiver(channel)
    assert parse_frames(sender.transport.value()) == [(FrameType.PAIRED, b"")]
    assert parse_frames(receiver.transport.value()) == [(FrameType.PAIRED, b"")]
    assert sender.state is receiver.state is State.PAIRED
    assert relay.factory.registry.waiting() == []
    assert sender.transport.producer is receiver.transport
    assert receiver.transport.producer is sender.transport
    assert sender.transport.streaming and receiver.transport.streaming


def test_paired_bytes_forwarded_raw(relay: Relay) -> None:
    """After pairing, bytes move unparsed in both directions and are counted."""
    sender, receiver = relay.pair()
    sender.dataReceived(b"\xff\xff\xff\xffnot a frame")
    receiver.dataReceived(b"\0\0\0\0reply")
    assert receiver.transport.value() == b"\xff\xff\xff\xffnot a frame"
    assert sender.transport.value() == b"\0\0\0\0reply"
    assert sender.splice.bytes_up == 15 and sender.splice.bytes_down == 9


def test_bytes_after_claim_are_forwarded(relay: Relay) -> None:
    """Bytes that arrive in the same read as the CLAIM go to the sender, not the parser."""
    sender, channel = relay.sender()
    relay.receiver(channel, extra=b"early bytes")
    assert sender.transport.value().endswith(b"early bytes")


def test_bytes_held_from_waiting_sender_follow_paired(relay: Relay) -> None:
    """Part of a frame a waiting sender sent reaches the receiver right after the receiver's PAIRED."""
    sender, channel = relay.sender()
    sender.dataReceived(b"\0\0")
    receiver = relay.receiver(channel)
    assert receiver.transport.value().endswith(encode_frame(FrameType.PAIRED) + b"\0\0")
    assert sender.splice.bytes_up == 2


def test_second_receiver_refused(relay: Relay) -> None:
    """A second receiver for a channel already paired is told the code is in use."""
    sender, channel = relay.sender()
    first = relay.receiver(channel)
    second = relay.receiver(channel)
    assert error_of(second) is ErrorCode.CODE_IN_USE
    assert first.state is State.PAIRED
    assert not first.transport.disconnecting


def test_receiver_leaves_then_sender_closed(relay: Relay) -> None:
    """When the receiver of a pair drops, the sender's leg is closed after flushing."""
    sender, receiver = relay.pair()
    lose(receiver)
    assert sender.transport.disconnecting
    assert sender.transport.producer is None
    assert sender.state is State.PAIRED  # until its own connectionLost
    lose(sender)
    assert relay.factory.splices == set()
    assert len(relay.factory.registry) == 0


def test_sender_leaves_then_receiver_closed(relay: Relay) -> None:
    """When the sender of a pair drops, the receiver is closed and the channel freed."""
    sender, receiver = relay.pair()
    channel = sender.channel
    lose(sender)
    assert receiver.transport.disconnecting
    assert len(relay.factory.registry) == 0
    lose(receiver)
    assert relay.factory.connections == set()
    assert error_of(relay.receiver(channel)) is ErrorCode.UNKNOWN_CODE


def test_channel_held_while_paired(relay: Relay) -> None:
    """A paired sender's channel is not handed to a new sender."""
    sender, receiver = relay.pair()
    picks = iter([sender.channel - 1, 0, 1, 2, 3])
    relay.factory.registry._randbelow = lambda n: next(picks)
    _, channel2 = relay.sender()
    assert channel2 != sender.channel


def test_paired_has_no_timeouts(relay: Relay) -> None:
    """A paired transfer is not cut by the handshake or wait timers."""
    sender, receiver = relay.pair()
    relay.clock.advance(4000)
    assert not sender.transport.disconnecting
    assert not receiver.transport.disconnecting


# CLOSED


def test_closed_ignores_input(relay: Relay) -> None:
    """Bytes after an error are ignored; nothing more is written."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(FrameType.REGISTER))
    written = proto.transport.value()
    proto.dataReceived(HELLO + encode_frame(FrameType.REGISTER))
    assert proto.transport.value() == written
    proto.close_with_error(ErrorCode.TIMEOUT, "again")
    assert proto.transport.value() == written


def test_lost_after_close(relay: Relay) -> None:
    """connectionLost after an error close cleans up timers once."""
    proto = relay.connect()
    proto.dataReceived(encode_frame(FrameType.REGISTER))
    lose(proto)
    assert relay.clock.getDelayedCalls() == []
    assert relay.factory.connections == set()


def test_when_idle_fires_after_last_connection(relay: Relay) -> None:
    """The factory reports when its last connection has gone (for draining)."""
    a, b = relay.connect(), relay.connect()
    d = relay.factory.when_idle()
    fired = []
    d.addCallback(fired.append)
    lose(a)
    assert not fired
    lose(b)
    assert fired == [None]


def test_partner_that_will_not_read_is_cut() -> None:
    """After one leg goes, the other gets a grace period to flush, then is cut."""
    from twisted_relay.splice import CLOSE_GRACE as SPLICE_GRACE

    relay = Relay()
    sender, receiver = relay.pair()
    lose(receiver)
    assert sender.transport.disconnecting and not sender.transport.aborted
    relay.clock.advance(SPLICE_GRACE)
    assert sender.transport.aborted
    lose(sender)
    assert relay.clock.getDelayedCalls() == []


def test_partner_closing_in_time_cancels_cut() -> None:
    """A leg that closes within the grace period leaves no timer behind."""
    relay = Relay()
    sender, receiver = relay.pair()
    lose(sender)
    lose(receiver)
    assert relay.clock.getDelayedCalls() == []
    assert relay.factory.splices == set()


# idle timeout on paired transfers


def test_idle_transfer_is_cut_on_both_sides() -> None:
    """A paired transfer in which no byte moves either way for the idle timeout is cut on both sides."""
    relay = Relay(idle_timeout=300)
    sender, receiver = relay.pair()
    relay.clock.advance(299)
    assert not sender.transport.disconnecting and not receiver.transport.disconnecting
    relay.clock.advance(1)
    assert sender.transport.aborted and receiver.transport.aborted
    assert sender.splice.outcome == "idle-timeout"


def test_traffic_either_way_keeps_transfer_alive() -> None:
    """Bytes in either direction restart the idle countdown; the cut comes a full timeout after the last byte."""
    relay = Relay(idle_timeout=300)
    sender, receiver = relay.pair()
    relay.clock.advance(200)
    sender.dataReceived(b"up")
    relay.clock.advance(200)
    receiver.dataReceived(b"down")
    relay.clock.advance(299)
    assert not sender.transport.disconnecting
    relay.clock.advance(1)
    assert sender.transport.aborted and receiver.transport.aborted


def test_idle_check_costs_one_timer_per_transfer() -> None:
    """Forwarding many chunks schedules nothing: a transfer holds one idle timer whatever its traffic."""
    relay = Relay(idle_timeout=300)
    sender, receiver = relay.pair()
    assert len(relay.clock.getDelayedCalls()) == 1
    timer = relay.clock.getDelayedCalls()[0]
    for _ in range(100):
        sender.dataReceived(b"x" * 10)
        receiver.dataReceived(b"y")
        relay.clock.advance(1)
    assert relay.clock.getDelayedCalls() == [timer]


def test_idle_timer_goes_with_the_transfer() -> None:
    """A transfer that ends, or is cut for idleness, leaves no idle timer behind."""
    relay = Relay(idle_timeout=300)
    sender, receiver = relay.pair()
    lose(receiver)
    lose(sender)
    assert relay.clock.getDelayedCalls() == []
    sender, receiver = relay.pair()
    relay.clock.advance(300)
    lose(sender)
    lose(receiver)
    assert relay.clock.getDelayedCalls() == []
    assert relay.factory.splices == set()


def test_idle_timeout_off_never_cuts() -> None:
    """With no idle timeout a silent transfer is left alone."""
    relay = Relay(idle_timeout=None)
    sender, receiver = relay.pair()
    relay.clock.advance(10 * 3600)
    assert not sender.transport.disconnecting and not receiver.transport.disconnecting
    assert relay.clock.getDelayedCalls() == []


def test_waiting_sender_has_no_idle_timer() -> None:
    """The idle timeout applies to paired transfers only; a waiting sender is bound by the wait timeout."""
    relay = Relay(idle_timeout=5, wait_timeout=60)
    sender, _ = relay.sender()
    relay.clock.advance(59)
    assert not sender.transport.disconnecting


# connection limits


def test_connection_beyond_total_limit_is_told_busy() -> None:
    """Beyond --max-connections a new connection gets RELAY_BUSY and is closed; open ones are untouched."""
    relay = Relay(max_connections=2)
    sender, channel = relay.sender()
    other = relay.connect("10.0.0.2")
    extra = relay.connect("10.0.0.3")
    assert error_of(extra) is ErrorCode.RELAY_BUSY
    assert sender.state is State.WAITING and not sender.transport.disconnecting
    assert other.state is State.NEW and not other.transport.disconnecting
    assert relay.factory.registry.waiting() == [sender]


def test_busy_refusal_is_sent_before_any_frame() -> None:
    """The busy refusal is the connection's only output: no WELCOME, whatever the client sends."""
    relay = Relay(max_connections=1)
    relay.connect()
    extra = relay.connect()
    extra.dataReceived(HELLO + encode_frame(FrameType.REGISTER))
    assert [ftype for ftype, _ in parse_frames(extra.transport.value())] == [FrameType.ERROR]
    assert len(relay.factory.registry) == 0


def test_closed_connection_frees_its_slot() -> None:
    """Once a connection closes, a new one is admitted again."""
    relay = Relay(max_connections=1)
    first = relay.connect()
    lose(first)
    second = relay.connect()
    assert not second.transport.disconnecting


def test_refused_connections_do_not_use_slots() -> None:
    """A refused connection is not counted: when it closes, the open ones still hold exactly their slots."""
    relay = Relay(max_connections=1)
    first = relay.connect()
    for _ in range(3):
        refused = relay.connect()
        assert error_of(refused) is ErrorCode.RELAY_BUSY
        lose(refused)
    assert relay.factory.limits.total == 1
    lose(first)
    assert relay.factory.limits.total == 0
    assert not relay.connect().transport.disconnecting


def test_refused_connection_has_only_its_close_grace_timer() -> None:
    """A busy refusal starts no handshake timer; once it has closed no timer is left."""
    relay = Relay(max_connections=1)
    relay.connect()
    before = len(relay.clock.getDelayedCalls())
    refused = relay.connect()
    assert len(relay.clock.getDelayedCalls()) == before + 1
    lose(refused)
    assert len(relay.clock.getDelayedCalls()) == before


def test_per_address_limit() -> None:
    """Beyond --max-per-ip an address is told busy while other addresses are still admitted."""
    relay = Relay(max_per_ip=2)
    a1, a2 = relay.connect("10.0.0.1"), relay.connect("10.0.0.1")
    a3 = relay.connect("10.0.0.1")
    assert error_of(a3) is ErrorCode.RELAY_BUSY
    b1 = relay.connect("10.0.0.2")
    assert not b1.transport.disconnecting
    assert not a1.transport.disconnecting and not a2.transport.disconnecting
    lose(a1)
    assert not relay.connect("10.0.0.1").transport.disconnecting


def test_paired_transfer_unaffected_by_limits() -> None:
    """A running transfer keeps flowing while new connections are refused as busy."""
    relay = Relay(max_connections=2)
    sender, receiver = relay.pair()
    assert error_of(relay.connect("10.0.0.9")) is ErrorCode.RELAY_BUSY
    sender.dataReceived(b"still here")
    assert receiver.transport.value() == b"still here"


def test_no_connection_limit_by_default() -> None:
    """A factory given no limits admits any number of connections from one address."""
    relay = Relay()
    protos = [relay.connect() for _ in range(200)]
    assert not any(p.transport.disconnecting for p in protos)


# failed codes per address


def _fail_claims(relay: Relay, n: int, host: str = "10.0.0.66") -> None:
    for i in range(n):
        assert error_of(relay.receiver(900_000 + i, host=host)) is ErrorCode.UNKNOWN_CODE


def test_too_many_failed_codes_blocks_the_address() -> None:
    """After --max-failed-codes unknown codes, the address's next claim is refused, even for a real code."""
    relay = Relay(max_failed_codes=3)
    sender, channel = relay.sender()
    _fail_claims(relay, 3)
    guesser = relay.receiver(channel, host="10.0.0.66")
    assert error_of(guesser) is ErrorCode.TOO_MANY_ATTEMPTS
    assert sender.state is State.WAITING and not sender.transport.disconnecting
    assert relay.factory.registry.waiting() == [sender]


def test_blocked_address_does_not_touch_the_registry() -> None:
    """A blocked claim neither pairs nor learns whether the channel is taken."""
    relay = Relay(max_failed_codes=1)
    sender, receiver = relay.pair()
    _fail_claims(relay, 1)
    taken = relay.receiver(sender.channel, host="10.0.0.66")
    free = relay.receiver(77, host="10.0.0.66")
    assert error_of(taken) is error_of(free) is ErrorCode.TOO_MANY_ATTEMPTS


def test_codes_in_use_count_as_failures() -> None:
    """Claiming a channel that is already paired counts as a failed code."""
    relay = Relay(max_failed_codes=2)
    sender, receiver = relay.pair()
    for _ in range(2):
        assert error_of(relay.receiver(sender.channel, host="10.0.0.66")) is ErrorCode.CODE_IN_USE
    assert error_of(relay.receiver(sender.channel, host="10.0.0.66")) is ErrorCode.TOO_MANY_ATTEMPTS


def test_other_addresses_are_not_blocked() -> None:
    """One address's failed codes do not stop another from claiming its code."""
    relay = Relay(max_failed_codes=2)
    sender, channel = relay.sender()
    _fail_claims(relay, 2)
    receiver = relay.receiver(channel, host="10.0.0.7")
    assert receiver.state is State.PAIRED


def test_block_ends_with_the_window() -> None:
    """A blocked address may claim again once the minute that began with its first failure is over."""
    relay = Relay(max_failed_codes=2, wait_timeout=None)
    sender, channel = relay.sender()
    _fail_claims(relay, 1)
    relay.clock.advance(50)
    _fail_claims(relay, 1)
    relay.clock.advance(9)
    assert error_of(relay.receiver(channel, host="10.0.0.66")) is ErrorCode.TOO_MANY_ATTEMPTS
    relay.clock.advance(1)
    assert relay.receiver(channel, host="10.0.0.66").state is State.PAIRED


def test_successful_claims_are_not_failures() -> None:
    """Claims that pair never count towards the limit."""
    relay = Relay(max_failed_codes=1)
    for _ in range(3):
        sender, channel = relay.sender()
        assert relay.receiver(channel, host="10.0.0.66").state is State.PAIRED


def test_failed_codes_unlimited_when_off() -> None:
    """With no failed-code limit, any number of unknown codes just get UNKNOWN_CODE."""
    relay = Relay(max_failed_codes=None)
    _fail_claims(relay, 50)
    assert len(relay.factory.failed_claims) == 0


def test_bytes_after_a_leg_is_lost_are_neither_forwarded_nor_counted() -> None:
    """Once one leg has gone, what the survivor still sends is dropped, and the byte counters (logs, metrics) stay true."""
    relay = Relay()
    sender, receiver = relay.pair()
    sender.dataReceived(b"12345")
    lose(receiver)
    sender.dataReceived(b"dropped")
    assert sender.splice.bytes_up == 5
    assert receiver.transport.value() == b"12345"
