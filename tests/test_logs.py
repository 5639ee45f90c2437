"""
What the relay logs: one event per step of each connection's life, with the
documented fields, never a code; and the JSON observer and the service that
adds it. Assertions are on event fields, not on rendered text.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Sequence

import pytest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, LogPublisher, Logger, capturedLogs, formatEvent

from twisted_relay import logs
from twisted_relay.errors import ErrorCode
from twisted_relay.service import LogObserverService

from tests.helpers import success_result_of
from tests.test_relay import Relay, error_of, lose

RELAY_NAMESPACES = ("twisted_relay.relay", "twisted_relay.splice")


def steps(events: Sequence[dict[str, Any]], peer: str | None = None) -> list[dict[str, Any]]:
    """The relay's lifecycle events, optionally for one peer only."""
    found = [e for e in events if e["log_namespace"].startswith(RELAY_NAMESPACES)]
    return [e for e in found if peer is None or e[logs.PEER] == peer]


def names(events: Sequence[dict[str, Any]]) -> list[str]:
    return [e[logs.EVENT] for e in events]


def test_transfer_logs_each_step_once() -> None:
    """A transfer logs, per connection: opened, registered or claimed, paired, closed; nothing else."""
    relay = Relay()
    with capturedLogs() as events:
        sender, channel = relay.sender()
        receiver = relay.receiver(channel, host="10.0.0.2")
        sender.dataReceived(b"x" * 100)
        receiver.dataReceived(b"ok")
        lose(receiver)
        lose(sender)
    assert names(steps(events, "10.0.0.1:4000")) == ["opened", "registered", "paired", "closed"]
    assert names(steps(events, "10.0.0.2:4000")) == ["opened", "claimed", "paired", "closed"]
    assert len(steps(events)) == len([e for e in events if e["log_namespace"].startswith("twisted_relay")])


def test_every_step_has_every_field() -> None:
    """Every lifecycle event carries all documented fields, at info level."""
    relay = Relay()
    with capturedLogs() as events:
        sender, receiver = relay.pair()
        lose(sender)
        lose(receiver)
        lose(relay.receiver(5))
    assert steps(events)
    for event in steps(events):
        assert set(logs.LIFECYCLE_FIELDS) <= event.keys(), event
        assert event[logs.EVENT] in logs.LIFECYCLE_EVENTS
        assert event["log_level"] is LogLevel.info


def test_closed_event_reports_the_transfer() -> None:
    """Each leg's close reports role, channel, bytes each way, duration and who closed first."""
    relay = Relay()
    with capturedLogs() as events:
        sender, channel = relay.sender()
        relay.clock.advance(2)
        receiver = relay.receiver(channel, host="10.0.0.2")
        sender.dataReceived(b"x" * 1000)
        receiver.dataReceived(b"ack")
        relay.clock.advance(3)
        lose(receiver)
        lose(sender)
    closed = {e[logs.ROLE]: e for e in steps(events) if e[logs.EVENT] == logs.CLOSED}
    for role in ("sender", "receiver"):
        assert closed[role][logs.CHANNEL] == channel
        assert closed[role][logs.BYTES_UP] == 1000
        assert closed[role][logs.BYTES_DOWN] == 3
        assert closed[role][logs.OUTCOME] == "receiver-closed"
    assert closed["sender"][logs.DURATION] == 5
    assert closed["receiver"][logs.DURATION] == 3


def test_refusal_is_logged_with_its_outcome() -> None:
    """A refused connection logs the refusal and its close, both with the error as outcome."""
    relay = Relay()
    with capturedLogs() as events:
        lose(relay.receiver(42))
    refused, closed = steps(events)[-2:]
    assert refused[logs.EVENT] == logs.REFUSED and refused[logs.OUTCOME] == "unknown-code"
    assert refused["message"] == "no sender is waiting with this code"
    assert refused[logs.ROLE] == "receiver" and refused[logs.CHANNEL] == 42
    assert closed[logs.EVENT] == logs.CLOSED and closed[logs.OUTCOME] == "unknown-code"


def test_busy_refusal_is_logged() -> None:
    """A connection refused by a limit logs opened, refused (relay-busy), closed."""
    relay = Relay(max_connections=1)
    relay.connect()
    with capturedLogs() as events:
        busy = relay.connect("10.0.0.9")
        assert error_of(busy) is ErrorCode.RELAY_BUSY
        lose(busy)
    assert names(steps(events)) == ["opened", "refused", "closed"]
    assert [e[logs.OUTCOME] for e in steps(events)] == [None, "relay-busy", "relay-busy"]


def test_idle_timeout_is_the_outcome() -> None:
    """Legs cut for idleness log the outcome idle-timeout."""
    relay = Relay(idle_timeout=10)
    sender, receiver = relay.pair()
    with capturedLogs() as events:
        relay.clock.advance(10)
        lose(sender)
        lose(receiver)
    assert [e[logs.OUTCOME] for e in steps(events)] == ["idle-timeout", "idle-timeout"]


def test_client_closing_before_pairing() -> None:
    """A waiting sender that leaves logs sender-closed; a client that leaves before choosing, client-closed."""
    relay = Relay()
    with capturedLogs() as events:
        sender, _ = relay.sender()
        lose(sender)
        lose(relay.greeted())
    assert [e[logs.OUTCOME] for e in steps(events) if e[logs.EVENT] == logs.CLOSED] == [
        "sender-closed",
        "client-closed",
    ]


def test_code_never_logged(tmp_path) -> None:
    """A whole transfer with real clients logs the channel but never the code's words."""
    from tests.test_clients import Transfer

    with capturedLogs() as events:
        t = Transfer(tmp_path)
        t.receive()
        success_result_of(t.receiver.done)
    [code] = t.codes
    rendered = "\n".join(formatEvent(e) for e in events)
    assert str(code.channel) in rendered
    assert code.secret not in rendered and str(code) not in rendered
    values = " ".join(str(v) for e in events for k, v in e.items() if not k.startswith("log_"))
    tokens = set(re.split(r"[^a-z]+", values.lower()))
    assert not tokens & set(code.words)


@pytest.mark.parametrize(
    "addr, text",
    [
        (IPv4Address("TCP", "192.0.2.1", 5000), "192.0.2.1:5000"),
        (IPv6Address("TCP", "2001:db8::1", 5000), "[2001:db8::1]:5000"),
        (UNIXAddress(b"/run/relay"), str(UNIXAddress(b"/run/relay"))),
    ],
)
def test_format_peer(addr, text: str) -> None:
    """Peers are logged as host:port, IPv6 hosts in brackets."""
    assert logs.format_peer(addr) == text


def test_json_observer_writes_json_lines() -> None:
    """The JSON observer writes one JSON object per line, with the event's fields, and no record separator."""
    out = io.StringIO()
    observer = logs.json_observer(out)
    publisher = LogPublisher(observer)
    log = Logger(observer=publisher)
    log.info("{peer} connected", event="opened", peer="192.0.2.1:5000", channel=None)
    log.warn("careful", outcome="x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1e" not in out.getvalue()
    first = json.loads(lines[0])
    assert first["event"] == "opened" and first["peer"] == "192.0.2.1:5000" and first["channel"] is None


def test_json_observer_leaves_out_debug() -> None:
    """Debug events are not written to the JSON log."""
    out = io.StringIO()
    Logger(observer=logs.json_observer(out)).debug("noise")
    assert out.getvalue() == ""


class SlowStop(Service):
    """A child whose stop takes a while and logs when it is done."""

    def __init__(self) -> None:
        self.stopped: Deferred[None] = Deferred()
        self.log = Logger()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopped


def test_observer_service_adds_and_removes_observer() -> None:
    """The JSON observer sees events from start to stop, including those logged while children drain."""
    seen: list[dict[str, Any]] = []
    publisher = LogPublisher()
    service = LogObserverService(seen.append, publisher)
    child = SlowStop()
    child.setServiceParent(service)
    log = Logger(observer=publisher)
    log.info("before start")
    service.startService()
    log.info("running")
    d = service.stopService()
    log.info("draining")
    child.stopped.callback(None)
    success_result_of(d)
    log.info("after stop")
    assert [e["log_format"] for e in seen] == ["running", "draining"]
