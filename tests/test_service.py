"""
The twistd options, the service tree, and graceful shutdown, on a memory
reactor: no real port is opened.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from twisted_relay import zero_copy
from twisted_relay.errors import ErrorCode
from twisted_relay.relay import State
from twisted_relay.service import (
    DrainingService,
    LogObserverService,
    Options,
    makeService,
    normalize_metrics_port,
    normalize_port,
    with_backlog,
)
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


@pytest.mark.parametrize(
    "given, expected",
    [
        ("tcp:9021", "tcp:9021:backlog=1024"),
        ("tcp6:9021:interface=\\:\\:1", "tcp6:9021:interface=\\:\\:1:backlog=1024"),
        ("tcp:9021:backlog=64", "tcp:9021:backlog=64"),
        ("unix:/run/relay.sock", "unix:/run/relay.sock"),
    ],
)
def test_tcp_ports_get_a_larger_listen_backlog(given: str, expected: str) -> None:
    """TCP ports listen with a backlog of 1024 unless the operator set one (Twisted's 50 overflows under bursts)."""
    assert with_backlog(given) == expected


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
    assert options["idle-timeout"] == 300.0
    assert options["max-connections"] is None
    assert options["max-per-ip"] is None
    assert options["max-failed-codes"] == 10
    assert options["log-format"] == "text"
    assert options["metrics-port"] is None
    assert options["forwarding"] == "auto"
    assert options["socket-buffer"] is None


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


# the hardening options


def parsed(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize("flag", ["--idle-timeout", "--max-connections", "--max-per-ip", "--max-failed-codes"])
def test_limits_can_be_turned_off(flag: str) -> None:
    """The idle timeout and every limit accept 'off'."""
    assert parsed(flag, "off")[flag[2:]] is None


@pytest.mark.parametrize("flag", ["--max-connections", "--max-per-ip", "--max-failed-codes"])
@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "many", ""])
def test_limits_refuse_bad_values(flag: str, bad: str) -> None:
    """A limit must be a whole number above 0 (or 'off')."""
    with pytest.raises(usage.UsageError):
        parsed(flag, bad)


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_idle_timeout_refuses_bad_values(bad: str) -> None:
    """The idle timeout must be a positive number of seconds (or 'off')."""
    with pytest.raises(usage.UsageError):
        parsed("--idle-timeout", bad)


def test_log_format_choices() -> None:
    """--log-format takes text or json, in any case, and nothing else."""
    assert parsed("--log-format", "JSON")["log-format"] == "json"
    assert parsed("--log-format", "text")["log-format"] == "text"
    with pytest.raises(usage.UsageError):
        parsed("--log-format", "xml")


@pytest.mark.parametrize(
    "given, expected",
    [
        ("9102", "tcp:9102:interface=127.0.0.1"),
        (":9102", "tcp:9102:interface=127.0.0.1"),
        ("tcp:9102", "tcp:9102"),
        ("tcp:9102:interface=0.0.0.0", "tcp:9102:interface=0.0.0.0"),
        ("unix:/run/filerelay-metrics", "unix:/run/filerelay-metrics"),
    ],
)
def test_metrics_port_bare_number_is_loopback(given: str, expected: str) -> None:
    """A bare metrics port binds to 127.0.0.1 only; an endpoint string is used as given."""
    assert normalize_metrics_port(given) == expected
    assert parsed("--metrics-port", given)["metrics-port"] == expected


@pytest.mark.parametrize("bad", ["", "70000", ":"])
def test_metrics_port_refuses(bad: str) -> None:
    """An empty or out-of-range metrics port is a usage error."""
    with pytest.raises(usage.UsageError):
        parsed("--metrics-port", bad)


def test_help_documents_every_option() -> None:
    """--help names every option with a description and its default."""
    text = str(Options())
    for name in (
        "port",
        "handshake-timeout",
        "wait-timeout",
        "drain-timeout",
        "idle-timeout",
        "max-connections",
        "max-per-ip",
        "max-failed-codes",
        "log-format",
        "metrics-port",
        "forwarding",
        "socket-buffer",
    ):
        assert f"--{name}=" in text
    for param in Options.optParameters:
        assert param[3], f"--{param[0]} has no help text"
    assert "[default: 300.0]" in text and "[default: 10]" in text


def test_make_service_configures_the_relay() -> None:
    """The idle timeout and limits given as options reach the relay."""
    options = parsed(
        "--idle-timeout", "42", "--max-connections", "100", "--max-per-ip", "5", "--max-failed-codes", "3"
    )
    reactor = MemoryReactorClock()
    makeService(options, reactor=reactor).startService()
    factory = reactor.tcpServers[0][1]
    assert factory.idle_timeout == 42
    assert factory.limits.max_connections == 100
    assert factory.limits.max_per_host == 5
    assert factory.failed_claims.limit == 3
    assert factory.failed_claims._clock is reactor


def test_make_service_defaults_reach_the_relay() -> None:
    """With no options the relay runs with the documented idle timeout and failed-code limit, no caps."""
    reactor = MemoryReactorClock()
    makeService(parsed(), reactor=reactor).startService()
    factory = reactor.tcpServers[0][1]
    assert factory.idle_timeout == 300
    assert factory.limits.max_connections is None and factory.limits.max_per_host is None
    assert factory.failed_claims.limit == 10
    assert factory.kernel_forwarding is True and factory.socket_buffer is None


@pytest.mark.parametrize(("given", "kernel"), [("auto", True), ("copy", False), ("COPY", False)])
def test_forwarding_option_reaches_the_relay(given: str, kernel: bool) -> None:
    """--forwarding copy keeps every transfer on the portable path."""
    reactor = MemoryReactorClock()
    makeService(parsed("--forwarding", given), reactor=reactor).startService()
    assert reactor.tcpServers[0][1].kernel_forwarding is kernel


def test_forwarding_splice_needs_os_splice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for splice where the platform has none is a usage error at
    start, not a silent fallback; an unknown mode is refused too."""
    monkeypatch.setattr(zero_copy, "AVAILABLE", False)
    with pytest.raises(usage.UsageError, match="Linux"):
        parsed("--forwarding", "splice")
    with pytest.raises(usage.UsageError):
        parsed("--forwarding", "sendfile")


def test_socket_buffer_option() -> None:
    """--socket-buffer reaches the relay, which caps its pipes with it too."""
    reactor = MemoryReactorClock()
    makeService(parsed("--socket-buffer", "65536"), reactor=reactor).startService()
    assert reactor.tcpServers[0][1].socket_buffer == 65536
    for bad in ("0", "100", "-5", "1e9", "lots"):
        with pytest.raises(usage.UsageError):
            parsed("--socket-buffer", bad)
    assert parsed("--socket-buffer", "off")["socket-buffer"] is None


def test_no_metrics_port_by_default() -> None:
    """Without --metrics-port the relay listens on its own ports only."""
    reactor = MemoryReactorClock()
    makeService(parsed("--port", "9021"), reactor=reactor).startService()
    assert [port for port, *_ in reactor.tcpServers] == [9021]


def test_metrics_port_serves_the_relay_registry() -> None:
    """--metrics-port listens on loopback with the metrics site, and stops listening with the relay."""
    from twisted_relay.metrics import MetricsSite

    reactor = MemoryReactorClock()
    service = makeService(parsed("--port", "9021", "--metrics-port", "9102"), reactor=reactor)
    service.startService()
    (relay_port, factory, _, _), (metrics_port, site, _, interface) = reactor.tcpServers
    assert (relay_port, metrics_port, interface) == (9021, 9102, "127.0.0.1")
    assert isinstance(site, MetricsSite)
    [metrics_service] = [s for s in service if getattr(s, "endpoint", None) and s.factory is site]
    assert metrics_service.running
    success_result_of(service.stopService())
    assert not metrics_service.running


def test_json_log_format_wraps_the_service_tree() -> None:
    """--log-format json puts the relay under a service that adds a JSON observer; text does not."""
    json_top = makeService(parsed("--log-format", "json"), reactor=MemoryReactorClock())
    assert isinstance(json_top, LogObserverService)
    assert any(isinstance(s, DrainingService) for s in json_top)
    text_top = makeService(parsed(), reactor=MemoryReactorClock())
    assert not isinstance(text_top, LogObserverService)


def test_shutdown_leaves_no_timer_or_count() -> None:
    """After a drain, no idle timer, wait timer or connection count is left behind."""
    relay = Relay(idle_timeout=300, max_connections=10, max_per_ip=5, max_failed_codes=2)
    sender, receiver = relay.pair()
    waiting, _ = relay.sender()
    lose(relay.receiver(99))
    d = _drainer(relay, timeout=5).stopService()
    lose(waiting)
    relay.clock.advance(5)
    assert sender.transport.aborted and receiver.transport.aborted
    lose(sender)
    lose(receiver)
    success_result_of(d)
    assert relay.clock.getDelayedCalls() == []
    assert relay.factory.limits.total == 0
    assert relay.factory.limits.open_from("10.0.0.1") == 0


def test_orderly_drain_clears_the_signal_twistd_would_reraise() -> None:
    """After a complete drain the relay exits 0 on SIGTERM: the recorded signal is cleared."""
    from twisted.internet.interfaces import _ISupportsExitSignalCapturing
    from zope.interface import directlyProvides

    relay = Relay()
    directlyProvides(relay.clock, _ISupportsExitSignalCapturing)
    relay.clock._exitSignal = 15
    sender, receiver = relay.pair()
    d = _drainer(relay).stopService()
    assert relay.clock._exitSignal == 15  # not while transfers still run
    lose(sender)
    lose(receiver)
    success_result_of(d)
    assert relay.clock._exitSignal is None


def test_second_signal_while_draining_cuts_at_once(monkeypatch) -> None:
    """A second SIGTERM or SIGINT during the drain cuts the remaining transfers instead of waiting."""
    import signal as signal_module

    installed: dict[int, object] = {}
    monkeypatch.setattr(signal_module, "signal", lambda signum, handler: installed.__setitem__(signum, handler))
    relay = Relay()
    relay.clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
    sender, receiver = relay.pair()
    d = _drainer(relay).stopService()
    assert set(installed) == {signal_module.SIGINT, signal_module.SIGTERM}
    assert not sender.transport.aborted
    installed[signal_module.SIGTERM](signal_module.SIGTERM, None)  # type: ignore[operator]
    assert sender.transport.aborted and receiver.transport.aborted
    lose(sender)
    lose(receiver)
    success_result_of(d)


def test_help_has_examples() -> None:
    """twistd filerelay --help ends with runnable examples."""
    text = str(Options())
    assert "examples:" in text and "twistd -n filerelay --port 9021" in text
