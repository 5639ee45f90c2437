"""
The relay's Prometheus metrics, scraped in-process from each factory's own
registry, on in-memory transports and a fake clock.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.web.test.requesthelper import DummyRequest

from twisted_relay.errors import ErrorCode
from twisted_relay.metrics import METRICS_PATH, metrics_site

from tests.test_relay import Relay, error_of, lose


def sample(relay: Relay, name: str, **labels: str) -> float:
    """One sample's value, as a scrape would show it."""
    value = relay.factory.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def test_fresh_relay_exports_zeros() -> None:
    """A new relay exports every metric, every outcome and limit label included, at zero."""
    relay = Relay()
    text = generate_latest(relay.factory.metrics.registry).decode()
    for name in (
        "filerelay_open_connections 0.0",
        "filerelay_waiting_senders 0.0",
        "filerelay_active_transfers 0.0",
        "filerelay_bytes_relayed_total 0.0",
        "filerelay_pairings_total 0.0",
        'filerelay_transfers_finished_total{outcome="idle-timeout"} 0.0',
        'filerelay_transfers_finished_total{outcome="receiver-closed"} 0.0',
        'filerelay_connections_refused_total{limit="max-connections"} 0.0',
        'filerelay_connections_refused_total{limit="max-per-ip"} 0.0',
        'filerelay_connections_refused_total{limit="max-failed-codes"} 0.0',
    ):
        assert name in text


def test_gauges_follow_connections() -> None:
    """Open connections, waiting senders and active transfers are what they are at scrape time."""
    relay = Relay()
    sender, channel = relay.sender()
    relay.connect()
    assert sample(relay, "filerelay_open_connections") == 2
    assert sample(relay, "filerelay_waiting_senders") == 1
    assert sample(relay, "filerelay_active_transfers") == 0
    relay.receiver(channel)
    assert sample(relay, "filerelay_waiting_senders") == 0
    assert sample(relay, "filerelay_active_transfers") == 1
    assert sample(relay, "filerelay_open_connections") == 3


def test_pairings_and_finished_transfers() -> None:
    """Each pairing is counted, and each finished transfer under its outcome."""
    relay = Relay(idle_timeout=10)
    sender, receiver = relay.pair()
    lose(receiver)
    lose(sender)
    sender, receiver = relay.pair()
    relay.clock.advance(10)
    lose(sender)
    lose(receiver)
    assert sample(relay, "filerelay_pairings_total") == 2
    assert sample(relay, "filerelay_transfers_finished_total", outcome="receiver-closed") == 1
    assert sample(relay, "filerelay_transfers_finished_total", outcome="idle-timeout") == 1
    assert sample(relay, "filerelay_active_transfers") == 0


def test_bytes_relayed_counts_running_and_finished_transfers() -> None:
    """Bytes relayed both ways show up while a transfer runs and stay counted after it ends."""
    relay = Relay()
    sender, receiver = relay.pair()
    sender.dataReceived(b"x" * 1000)
    receiver.dataReceived(b"y" * 10)
    assert sample(relay, "filerelay_bytes_relayed_total") == 1010
    lose(sender)
    lose(receiver)
    assert sample(relay, "filerelay_bytes_relayed_total") == 1010
    sender, receiver = relay.pair()
    sender.dataReceived(b"z" * 5)
    assert sample(relay, "filerelay_bytes_relayed_total") == 1015


def test_bytes_relayed_never_goes_back() -> None:
    """The bytes counter is monotonic even if a transfer seems to vanish between two reads."""
    relay = Relay()
    sender, receiver = relay.pair()
    sender.dataReceived(b"x" * 100)
    assert sample(relay, "filerelay_bytes_relayed_total") == 100
    relay.factory.splices.clear()  # as if a scrape ran between the two steps of a transfer's end
    assert sample(relay, "filerelay_bytes_relayed_total") == 100


def test_refusals_counted_by_limit() -> None:
    """Refusals are counted under the limit that caused them; other errors are not refusals."""
    relay = Relay(max_connections=3, max_per_ip=2, max_failed_codes=1)
    relay.connect("10.0.0.1")
    relay.connect("10.0.0.1")
    assert error_of(relay.connect("10.0.0.1")) is ErrorCode.RELAY_BUSY
    lose(relay.receiver(99, host="10.0.0.2"))
    assert error_of(relay.receiver(99, host="10.0.0.2")) is ErrorCode.TOO_MANY_ATTEMPTS
    assert error_of(relay.connect("10.0.0.3")) is ErrorCode.RELAY_BUSY
    assert sample(relay, "filerelay_connections_refused_total", limit="max-per-ip") == 1
    assert sample(relay, "filerelay_connections_refused_total", limit="max-failed-codes") == 1
    assert sample(relay, "filerelay_connections_refused_total", limit="max-connections") == 1


def test_each_factory_has_its_own_registry() -> None:
    """Two relays never share a metric, and the global registry holds none of ours."""
    one, two = Relay(), Relay()
    one.sender()
    assert sample(one, "filerelay_waiting_senders") == 1
    assert sample(two, "filerelay_waiting_senders") == 0
    assert REGISTRY.get_sample_value("filerelay_waiting_senders") is None


def test_metrics_site_serves_prometheus_resource() -> None:
    """The metrics site serves prometheus_client's Twisted resource at /metrics."""
    site = metrics_site(Relay().factory.metrics.registry)
    assert type(site.getResourceFor(DummyRequest([METRICS_PATH]))).__name__ == "WSGIResource"


def test_metrics_site_does_not_log_requests() -> None:
    """Requests do not write a log line each (a plain twisted.web Site would); unknown paths are not found."""
    site = metrics_site(Relay().factory.metrics.registry)
    site.doStart()
    try:
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = StringTransport()
        with capturedLogs() as events:
            channel.makeConnection(transport)
            channel.dataReceived(b"GET /nothing HTTP/1.0\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.0 404")
        assert events == []
    finally:
        channel.connectionLost(None)
        site.doStop()
