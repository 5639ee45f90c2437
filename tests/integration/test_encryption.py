"""
What a relay operator, or anyone tapping the line, sees of a real transfer
between the real command-line programs: recorded by a proxy in front of the
relay.
"""

from __future__ import annotations

import struct
import sys
import time
from types import SimpleNamespace
from pathlib import Path

from tests.integration.processes import Clients, Launcher, Relay, entries, poll_until

MARKER = b"KNOWN-MARKER-5e0c9b71-"
NAME = "very-distinctive-corgi-name.bin"
HERE = Path(__file__).parent


def start_proxy(launcher: Launcher, relay: Relay, record: Path) -> str:
    record.mkdir()
    proc = launcher.start("proxy", [sys.executable, str(HERE / "recording_proxy.py"), str(relay.port), str(record)])
    port = poll_until(lambda: proc.stdout().strip() or None, "the proxy to listen")
    return f"127.0.0.1:{port}"


def recorded(record: Path, direction: str = "") -> bytes:
    return b"".join(p.read_bytes() for p in sorted(record.iterdir()) if p.name.endswith(direction))


def frame_types(stream: bytes) -> list[int]:
    """The type of every complete frame in a client -> relay recording."""
    types, offset = [], 0
    while offset + 5 <= len(stream):
        (length,) = struct.unpack_from("!I", stream, offset)
        types.append(stream[offset + 4])
        offset += 4 + length
    return types


def test_tap_sees_no_content_name_or_words(tmp_path: Path, relay: Relay, launcher: Launcher) -> None:
    """A transfer through a recording proxy leaves no trace of the file's content, its name or the code's words on the wire."""
    address = start_proxy(launcher, relay, tmp_path / "record")
    clients = Clients(SimpleNamespace(address=address), launcher)  # type: ignore[arg-type]
    source = tmp_path / NAME
    source.write_bytes(MARKER * 50_000)  # about 1 MiB
    sender = clients.send(source)
    code = clients.code_of(sender)
    receiver = clients.receive(code, tmp_path / "out")
    assert receiver.wait() == 0, receiver.describe()
    assert sender.wait() == 0, sender.describe()
    assert (tmp_path / "out" / NAME).read_bytes() == source.read_bytes()

    wire = recorded(tmp_path / "record")
    assert len(wire) > source.stat().st_size  # the file did cross the proxy
    assert MARKER not in wire
    assert NAME.encode() not in wire and b"distinctive" not in wire
    for word in code.split("-")[1:]:
        assert word.encode() not in wire


def test_wrong_code_fails_fast_and_sends_nothing(tmp_path: Path, relay: Relay, launcher: Launcher) -> None:
    """A wrong code fails both programs within two seconds, and the sender sends no sealed record at all."""
    address = start_proxy(launcher, relay, tmp_path / "record")
    clients = Clients(SimpleNamespace(address=address), launcher)  # type: ignore[arg-type]
    source = tmp_path / "secret.bin"
    source.write_bytes(MARKER * 50_000)
    sender = clients.send(source)
    channel, first, second = clients.code_of(sender).split("-")
    wrong = f"{channel}-{second}-{first}" if first != second else f"{channel}-{first}-orbit"
    started = time.monotonic()
    receiver = clients.receive(wrong, tmp_path / "out")
    assert receiver.wait() == 5, receiver.describe()
    assert sender.wait() == 5, sender.describe()
    elapsed = time.monotonic() - started
    # Interpreter start-up is most of this; the exchange itself is milliseconds.
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    wire = recorded(tmp_path / "record")
    assert MARKER not in wire
    sender_stream = (tmp_path / "record" / "0-up").read_bytes()
    assert all(t < 0x20 for t in frame_types(sender_stream)), frame_types(sender_stream)
    assert len(sender_stream) < 1000
    assert entries(tmp_path / "out") == []
