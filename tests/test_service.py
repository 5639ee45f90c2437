"""
The twistd options, the service tree, and graceful shutdown, on a memory
reactor: no real port is opened.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from twisted_relay.errors import ErrorCode
from twisted_relay.relay import State
from twisted_relay.service import DrainingService, Options, makeService, normalize_port
from twisted_relay.wire import decode_error

from tests.helpers import assert_no_result, parse_frames, success_result_of
from tests.test_relay import Relay, lose


@pytest.mark.parametrize(
    "given, expected",
    [
        ("9021", "tcp:9021"),
        (":9021", "tcp:9021"),
        (" 9021 ", "tcp:9021"),
        ("tcp:9021:interface=127.0.0.1", "tcp:9021:interface=127.0.0.1"),
        ("tcp6:9021:interface=\\:\\:1", "tcp6:9021:interface=\\:\\:1"),
    ],
)
def test_normalize_port(given: str, expected: str) -> None:
    """A bare port number becomes a TCP endpoint; endpoint strings pass through."""
    assert normalize_port(given) == expected


@pytest.mark.parametrize("bad", ["", "70000", ":"])
def test_normalize_port_refuses(bad: str) -> None:
    """An empty or out-of-range port is a usage error."""
    with pytest.raises(usage.UsageError):
        normalize_port(bad)


def test_options_defaults() -> None:
    """With no options the relay listens on TCP 9021 with the documented timeouts."""
    options = Options()
    options.parseOptions([])
    assert options["ports"] == ["tcp:9021"]
    assert options["handshake-timeout"] == 30.0
    assert options["wait-timeout"] == 3600.0
    assert options["drain-timeout"] == 60.0


def test_options_repeatable_port() -> None:
    """--port may be given several times."""
    options = Options()
    options.parseOptions(["--port", "9021", "--port", "tcp6:9022"])
    assert options["ports"] == ["tcp:9021", "tcp6:9022"]


@pytest.mark.parametrize("flag", ["--handshake-timeout", "--wait-timeout", "--drain-timeout"])
def test_options_refuse_non_positive(flag: str) -> None:
    """Timeouts must be positive numbers."""
    with pytest.raises(usage.UsageError):
        Options().parseOptions([flag, "0"])
    with pytest.raises(usage.UsageError):
        Options().parseOptions([flag, "soon"])


def test_make_service_listens_on_each_port() -> None:
    """makeService opens one listening port per --port, on the given reactor."""
    options = Options()
    options.parseOptions(["--port", "tcp:9021:interface=127.0.0.1", "--port", "9022", "--wait-timeout", "5"])
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    service.startService()
    listening = [(port, interface) for port, _factory, _backlog, interface in reactor.tcpServers]
    assert listening == [(9021, "127.0.0.1"), (9022, "")]
    factory = reactor.tcpServers[0][1]
    assert factory.registry.wait_timeout == 5
    assert factory.clock is reactor


def _drainer(relay: Relay, timeout: float = 60) -> DrainingService:
    service = DrainingService(relay.factory, relay.clock, timeout)
    service.startService()
    return service


def test_shutdown_with_no_connections_is_immediate() -> None:
    """An idle relay stops at once."""
    relay = Relay()
    success_result_of(_drainer(relay).stopService())


def test_shutdown_tells_waiting_senders() -> None:
    """On shutdown, waiting senders and half-open clients are told why and closed."""
    relay = Relay()
    sender, _ = relay.sender()
    half_open = relay.connect()
    d = _drainer(relay).stopService()
    for proto in (sender, half_open):
        frames = parse_frames(proto.transport.value())
        assert decode_error(frames[-1][1])[0] == ErrorCode.SHUTTING_DOWN
        assert proto.transport.disconnecting
    assert_no_result(d)
    lose(sender)
    lose(half_open)
    success_result_of(d)


def test_shutdown_lets_transfers_finish() -> None:
    """A paired transfer keeps flowing during the drain; the stop completes when it ends."""
    relay = Relay()
    sender, receiver = relay.pair()
    d = _drainer(relay).stopService()
    assert sender.state is receiver.state is State.PAIRED
    sender.dataReceived(b"still flowing")
    assert receiver.transport.value() == b"still flowing"
    relay.clock.advance(59)
    assert_no_result(d)
    lose(receiver)
    lose(sender)
    success_result_of(d)
    assert relay.clock.getDelayedCalls() == []


def test_shutdown_cuts_transfers_after_drain_timeout() -> None:
    """Transfers still running when the drain timeout ends are cut."""
    relay = Relay()
    sender, receiver = relay.pair()
    d = _drainer(relay, timeout=5).stopService()
    relay.clock.advance(5)
    assert sender.transport.aborted and receiver.transport.aborted
    lose(sender)
    lose(receiver)
    success_result_of(d)
