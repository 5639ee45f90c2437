"""
Garbage over real sockets against a real C{twistd filerelay} process: the
relay answers what the protocol says it answers (an ERROR frame, then a
close), survives hundreds of hostile or empty connections without keeping
anything of them, and still carries a normal transfer afterwards.

Expected codes and texts are written out from docs/protocol.rst (2. Framing,
5.3 Transition table, 9.1 Error codes), not imported from the relay, so a
relay that drifts from the document fails here.
"""

from __future__ import annotations

import os
import random
import re
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.processes import (
    Clients,
    Launcher,
    Relay,
    poll_until,
    start_relay,
    stop_relay,
)

# -- the protocol, as docs/protocol.rst writes it -----------------------------------

MAX_FRAME = 65536
HELLO, WELCOME, REGISTER, CHANNEL, CLAIM, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
PROTOCOL_ERROR, VERSION_MISMATCH, FRAME_TOO_LARGE = 1, 2, 3

#: Seconds one exchange with the relay may take, connect to close.
EXCHANGE = 5.0

#: Connections per round of the leak test, as the issue asks.
ROUND = 200

#: Connections opened before waiting for the relay to accept them.
BATCH = 25

#: The relay's log line for each accepted / closed connection.
OPENED = r" connected$"
CLOSED = r" closed \("

#: Allowed growth of the relay's VmRSS over the measured rounds, in KiB.
#: Without a leak it moved 0 to 360 KiB over 13 runs on the development
#: machine: CPython's allocator and glibc keep freed memory, so RSS drifts a
#: little with no leak at all. A relay that kept its closed connections
#: would keep, per connection, its protocol and transport (about 1.4 KiB,
#: measured by leaking them on purpose: +556 KiB over 400 connections) and,
#: for each of the 50 cut-short frames (L{PARTIAL}), its 60 KiB buffer: about
#: 3.5 MiB in all (measured: +3656 KiB). 2 MiB sits between the two, with
#: five times the worst noise seen below it.
RSS_SLACK_KIB = 2048


def frame(ftype: int, value: bytes = b"") -> bytes:
    return struct.pack("!IB", len(value) + 1, ftype) + value


HELLO_V1 = frame(HELLO, b"\x00\x01")


def random_garbage(seed: int, size: int = 512) -> bytes:
    """Seeded random bytes whose first four, read as a length, exceed
    MAX_FRAME (true of all but 1 in 65,000 random prefixes; checked)."""
    data = random.Random(seed).randbytes(size)
    assert struct.unpack("!I", data[:4])[0] > MAX_FRAME, f"seed {seed} makes a plausible length"
    return data


def oversize_frame() -> bytes:
    """A well-formed HELLO in every respect but its length, one byte over
    MAX_FRAME, sent in full."""
    value = b"\x00\x01" + bytes(MAX_FRAME - 2)
    assert len(value) + 1 == MAX_FRAME + 1
    return frame(HELLO, value)


def too_large(length: int) -> tuple[int, str]:
    return FRAME_TOO_LARGE, f"frame of {length} bytes exceeds {MAX_FRAME}"


#: Garbage name -> (bytes sent, expected ERROR (code, text) by state, or a
#: single (code, text) for every state).
GARBAGE: dict[str, tuple[bytes, dict[str, tuple[int, str]] | tuple[int, str]]] = {
    "random": (random_garbage(1), too_large(struct.unpack("!I", random_garbage(1)[:4])[0])),
    "max-length": (struct.pack("!I", 0x7FFFFFFF), too_large(0x7FFFFFFF)),
    "zero-length": (bytes(4) * 16, (PROTOCOL_ERROR, "empty frame")),
    "oversize-frame": (oversize_frame(), too_large(MAX_FRAME + 1)),
    "unknown-type": (
        frame(0xEE, b"\xde\xad\xbe\xef"),
        {
            "new": (PROTOCOL_ERROR, "expected HELLO first"),
            "greeted": (PROTOCOL_ERROR, "expected REGISTER or CLAIM"),
            "waiting": (PROTOCOL_ERROR, "unexpected frame in state waiting"),
        },
    ),
    "short-hello": (
        frame(HELLO, b"\x01"),
        {
            "new": (PROTOCOL_ERROR, "version frame too short"),
            "greeted": (PROTOCOL_ERROR, "expected REGISTER or CLAIM"),
            "waiting": (PROTOCOL_ERROR, "unexpected frame in state waiting"),
        },
    ),
    "wrong-version": (
        frame(HELLO, b"\xff\xff"),
        {
            "new": (VERSION_MISMATCH, "this relay speaks protocol version 1, the client speaks 65535; upgrade the older side"),
            "greeted": (PROTOCOL_ERROR, "expected REGISTER or CLAIM"),
            "waiting": (PROTOCOL_ERROR, "unexpected frame in state waiting"),
        },
    ),
    "bad-claim": (
        frame(CLAIM, b"07"),
        {
            "new": (PROTOCOL_ERROR, "expected HELLO first"),
            "greeted": (PROTOCOL_ERROR, "bad channel"),
            "waiting": (PROTOCOL_ERROR, "unexpected frame in state waiting"),
        },
    ),
}

#: A legal length (MAX_FRAME) followed by less than it announces: the relay
#: must buffer it, so a relay that kept closed connections would keep 60 KiB
#: for each of these.
PARTIAL = struct.pack("!IB", MAX_FRAME, HELLO) + bytes(60 * 1024)

#: State name -> (what puts a fresh connection there, the frame types the
#: relay answers that with).
STATES = {
    "new": (b"", []),
    "greeted": (HELLO_V1, [WELCOME]),
    "waiting": (HELLO_V1 + frame(REGISTER), [WELCOME, CHANNEL]),
}


# -- talking to the relay -------------------------------------------------------------


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split what the relay sent into (type, value) frames; every byte must
    belong to a complete frame."""
    frames = []
    offset = 0
    while offset < len(data):
        assert len(data) - offset >= 5, f"truncated frame at byte {offset}: {data[offset:]!r}"
        (length,) = struct.unpack_from("!I", data, offset)
        assert 1 <= length <= MAX_FRAME, f"relay sent a bad length {length}: {data!r}"
        end = offset + 4 + length
        assert end <= len(data), f"truncated frame at byte {offset}: {data[offset:]!r}"
        frames.append((data[offset + 4], data[offset + 5 : end]))
        offset = end
    return frames


def decode_error(value: bytes) -> tuple[int, str]:
    assert len(value) >= 2, f"ERROR value too short: {value!r}"
    return struct.unpack_from("!H", value)[0], value[2:].decode("utf-8")


def exchange(port: int, data: bytes) -> tuple[list[tuple[int, bytes]], float]:
    """Connect, send C{data}, read until the relay closes; return the frames
    it sent and how long the whole exchange took. Fails if the relay keeps
    the connection open for more than L{EXCHANGE} seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=EXCHANGE) as s:
        s.sendall(data)
        received = b""
        while True:
            left = started + EXCHANGE - time.monotonic()
            if left <= 0:
                pytest.fail(f"the relay kept the connection open {EXCHANGE}s after {data[:16]!r}...; got {received!r}")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                # Closing with our surplus bytes unread makes the kernel send
                # RST instead of FIN; what came before it is still ours.
                break
            except socket.timeout:
                continue
            if not chunk:
                break
            received += chunk
    return parse_frames(received), time.monotonic() - started


def assert_serving(relay: Relay) -> None:
    """The process is up and a fresh HELLO still gets WELCOME (version 1)."""
    relay.assert_alive()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=EXCHANGE) as s:
        s.sendall(HELLO_V1)
        got = b""
        while len(got) < 7:
            chunk = s.recv(7 - len(got))
            assert chunk, f"the relay closed instead of answering HELLO: {got!r}\n{relay.proc.describe()}"
            got += chunk
    assert parse_frames(got) == [(WELCOME, b"\x00\x01")], got


def relay_status(relay: Relay, key: str) -> int:
    """A number from /proc/PID/status, e.g. VmRSS in KiB."""
    with open(f"/proc/{relay.proc.pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    raise AssertionError(f"no {key} in /proc/{relay.proc.pid}/status")


def open_fds(relay: Relay) -> int:
    return len(os.listdir(f"/proc/{relay.proc.pid}/fd"))


def settled_rss(relay: Relay) -> int:
    """Median of a few VmRSS readings, in KiB."""
    samples = []
    for _ in range(7):
        samples.append(relay_status(relay, "VmRSS"))
        time.sleep(0.03)
    return int(statistics.median(samples))


def hostile_connections(relay: Relay, payloads: list[bytes]) -> None:
    """One connection per payload: connect, send it (if any), close without
    reading; every other connection ends with RST instead of FIN.

    Paced in batches that the relay must have logged as accepted before the
    next batch: the listen backlog is Twisted's default of 50, and a SYN
    that finds it full is retried by the kernel only after a second."""
    for start in range(0, len(payloads), BATCH):
        seen = log_count(relay, OPENED)
        batch = payloads[start : start + BATCH]
        for i, data in enumerate(batch, start):
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=EXCHANGE)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the relay refused a prefix and closed before the rest went out
            s.close()
        poll_until(lambda: log_count(relay, OPENED) >= seen + len(batch), "the relay to accept a batch")


def garbage_payloads(count: int, seed: int) -> list[bytes]:
    """C{count} pieces of garbage: every fourth a frame cut short (L{PARTIAL});
    the rest every kind of L{GARBAGE} and random bytes of random length, some
    after a valid HELLO, some after HELLO and REGISTER."""
    kinds = [data for data, _ in GARBAGE.values()]
    prefixes = [prefix for prefix, _ in STATES.values()]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % 4 == 0:
            out.append(PARTIAL)
            continue
        data = kinds[i % len(kinds)] if i % 3 else rng.randbytes(rng.randrange(1, 2048))
        out.append(prefixes[i % len(prefixes)] + data)
    return out


def log_count(relay: Relay, pattern: str) -> int:
    return len(re.findall(pattern, relay.log(), re.MULTILINE))


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory, forwarding: str) -> Iterator[Relay]:
    """One relay for the whole garbage matrix (each case is one connection;
    a relay per case would cost a second each). Stopped with SIGTERM and
    required to exit 0 with no traceback at the end."""
    launcher = Launcher(tmp_path_factory.mktemp("garbage-relay"))
    try:
        running = start_relay(launcher, forwarding=forwarding)
        yield running
        stop_relay(running)
    finally:
        launcher.kill_all()


# -- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_gets_one_error_frame_then_close(shared_relay: Relay, state: str, garbage: str) -> None:
    """Garbage in any pre-pairing state is answered with exactly one ERROR frame saying why, then a close."""
    prefix, answers = STATES[state]
    data, expected = GARBAGE[garbage]
    if isinstance(expected, dict):
        expected = expected[state]
    frames, _ = exchange(shared_relay.port, prefix + data)
    types = [ftype for ftype, _ in frames]
    assert types == [*answers, ERROR], f"relay answered {frames!r}"
    assert decode_error(frames[-1][1]) == expected
    if WELCOME in answers:
        assert frames[0][1] == b"\x00\x01", "WELCOME should carry version 1"
    if CHANNEL in answers:
        assert re.fullmatch(rb"[1-9][0-9]{0,8}", frames[1][1]), f"bad channel {frames[1][1]!r}"
    assert_serving(shared_relay)


def test_huge_length_is_refused_without_waiting_for_the_payload(shared_relay: Relay) -> None:
    """A 0x7FFFFFFF length prefix alone gets FRAME_TOO_LARGE at once; the relay neither waits for nor buffers 2 GiB."""
    rss_before = relay_status(shared_relay, "VmRSS")
    frames, took = exchange(shared_relay.port, struct.pack("!I", 0x7FFFFFFF))
    assert [decode_error(v) for t, v in frames if t == ERROR] == [too_large(0x7FFFFFFF)], frames
    assert len(frames) == 1, frames
    # Nothing but the four bytes was sent: a relay waiting for the payload
    # would hold the connection until exchange() gives up at 5 s.
    assert took < 2.0, f"the refusal took {took:.2f}s"
    assert relay_status(shared_relay, "VmRSS") - rss_before < RSS_SLACK_KIB
    assert_serving(shared_relay)


def test_largest_legal_frame_is_not_garbage(shared_relay: Relay) -> None:
    """A HELLO exactly MAX_FRAME long is accepted (WELCOME), so the oversize refusal is at the documented boundary."""
    value = b"\x00\x01" + bytes(MAX_FRAME - 3)
    assert len(value) + 1 == MAX_FRAME
    with socket.create_connection(("127.0.0.1", shared_relay.port), timeout=EXCHANGE) as s:
        s.sendall(frame(HELLO, value))
        got = b""
        while len(got) < 7:
            chunk = s.recv(7 - len(got))
            assert chunk, f"closed after a legal frame: {got!r}"
            got += chunk
    assert parse_frames(got) == [(WELCOME, b"\x00\x01")], got


def test_hundreds_of_hostile_connections_leave_no_trace(relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """200 connect-and-close and 200 garbage-and-close connections leave the relay alive, flat in memory, and able to transfer a file."""
    # Warm-up round: first-use allocations (logging, lazy imports, free
    # lists) are not a leak.
    hostile_connections(relay, [b""] * ROUND + garbage_payloads(ROUND, seed=100))
    fds = poll_until(lambda: open_fds(relay) if log_count(relay, CLOSED) >= 2 * ROUND else None,
                     "the relay to close the warm-up connections")
    rss_before = settled_rss(relay)
    opened_before = log_count(relay, OPENED)

    hostile_connections(relay, [b""] * ROUND)
    hostile_connections(relay, garbage_payloads(ROUND, seed=200))

    # Every measured connection was opened and closed by the relay, and it
    # holds no more file descriptors than before.
    assert log_count(relay, OPENED) - opened_before == 2 * ROUND
    poll_until(lambda: log_count(relay, CLOSED) >= log_count(relay, OPENED),
               "the relay to log every connection closed")
    poll_until(lambda: open_fds(relay) <= fds, f"the relay's open fds to return to {fds}")
    rss_after = settled_rss(relay)
    growth = rss_after - rss_before
    assert growth < RSS_SLACK_KIB, (
        f"relay VmRSS grew {growth} KiB ({rss_before} -> {rss_after}) over {2 * ROUND} connections"
    )
    assert_serving(relay)

    source = tmp_path / "src" / "after-garbage.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(1024 * 1024))
    outdir = tmp_path / "out"
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    assert receiver.wait() == 0, f"{receiver.describe()}\n{sender.describe()}\n{relay.proc.describe()}"
    assert sender.wait() == 0, sender.describe()
    assert (outdir / source.name).read_bytes() == source.read_bytes()
    assert "Traceback" not in relay.log(), relay.proc.describe()
