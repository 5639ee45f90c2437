"""
The metrics endpoint over real loopback HTTP: in-process against a relay
factory on the real reactor, and in a real C{twistd filerelay} started with
--metrics-port and --log-format json, which must still shut down cleanly.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, Response

from twisted_relay.metrics import metrics_site
from twisted_relay.relay import RelayFactory
from twisted_relay.wire import RELAY_PROTOCOL_VERSION, FrameType, encode_frame, encode_version

from tests.integration.processes import LISTENING, TWISTD, Launcher, Relay, poll_until, stop_relay

HELLO_REGISTER = encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION)) + encode_frame(
    FrameType.REGISTER
)

METRICS_LISTENING = re.compile(r"MetricsSite starting on (\d+)")


class WaitingSender(Protocol):
    """Registers and waits; fires L{registered} on CHANNEL."""

    def __init__(self) -> None:
        self.registered: Deferred[None] = Deferred()
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(HELLO_REGISTER)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if bytes([FrameType.CHANNEL]) in self.received and not self.registered.called:
            self.registered.callback(None)


class _Body(Protocol):
    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(self.data)


def read_body(response: Response) -> Deferred[bytes]:
    """The whole body (readBody warns about Agent's own transports)."""
    body = _Body()
    response.deliverBody(body)
    return body.done


@pytest_twisted.ensureDeferred
async def test_scrape_over_http() -> None:
    """A real HTTP GET of /metrics returns this relay's metrics in Prometheus text format."""
    factory = RelayFactory(reactor)
    relay_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    metrics_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        metrics_site(factory.metrics.registry)
    )
    sender = WaitingSender()
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", relay_port.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: sender))
        await sender.registered
        base = f"http://127.0.0.1:{metrics_port.getHost().port}".encode()
        agent = Agent(reactor)
        response = await agent.request(b"GET", base + b"/metrics")
        body = (await read_body(response)).decode()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        assert "filerelay_waiting_senders 1.0" in body
        assert "filerelay_open_connections 1.0" in body
        assert "filerelay_pairings_total 0.0" in body
        other = await agent.request(b"GET", base + b"/")
        await read_body(other)
        assert other.code == 404
    finally:
        for proto in list(factory.connections):
            proto.transport.abortConnection()
        await relay_port.stopListening()
        await metrics_port.stopListening()
        await deferLater(reactor, 0.05, lambda: None)


def _frames(sock: socket.socket, count: int) -> list[int]:
    """Read C{count} frames' types from a blocking socket."""
    types = []
    buf = b""
    while len(types) < count:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack("!I", buf[:4])[0]:
            chunk = sock.recv(4096)
            assert chunk, "the relay closed the connection"
            buf += chunk
        length = struct.unpack("!I", buf[:4])[0]
        types.append(buf[4])
        buf = buf[4 + length :]
    return types


def _json_events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_twistd_serves_metrics_and_logs_json(launcher: Launcher) -> None:
    """twistd filerelay with --metrics-port serves metrics on loopback, logs JSON lines, and stops cleanly."""
    proc = launcher.start(
        "relay",
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "filerelay",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--metrics-port",
            "tcp:0:interface=127.0.0.1",
            "--log-format",
            "json",
        ],
    )

    def ports() -> tuple[int, int] | None:
        relay_port, metrics_port = LISTENING.search(proc.stdout()), METRICS_LISTENING.search(proc.stdout())
        if relay_port and metrics_port:
            return int(relay_port.group(1)), int(metrics_port.group(1))
        if not proc.running():
            pytest.fail(f"the relay exited before listening\n{proc.describe()}")
        return None

    relay_port, metrics_port = poll_until(ports, "the relay and its metrics to listen")
    relay = Relay(proc, relay_port)
    try:
        with socket.create_connection(("127.0.0.1", relay_port), timeout=10) as sock:
            sock.sendall(HELLO_REGISTER)
            assert _frames(sock, 2) == [FrameType.WELCOME, FrameType.CHANNEL]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                body = response.read().decode()
            assert "filerelay_waiting_senders 1.0" in body
            poll_until(
                lambda: any(e.get("event") == "registered" for e in _json_events(proc.stdout())),
                "a JSON line for the registration",
            )
            stop_relay(relay)
    finally:
        proc.kill()
    events = _json_events(proc.stdout())
    steps = [(e["event"], e["outcome"]) for e in events if "event" in e]
    assert steps == [
        ("opened", None),
        ("registered", None),
        ("refused", "shutting-down"),
        ("closed", "shutting-down"),
    ], proc.describe()
    assert all({"peer", "role", "channel", "bytes_up", "bytes_down", "duration"} <= e.keys() for e in events if "event" in e)
