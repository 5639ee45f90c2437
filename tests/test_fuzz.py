"""
Fuzzing, with hypothesis, of the frame decoder (L{FrameReceiver}) and of the
relay's state machine (L{RelayProtocol} connections of one L{RelayFactory}),
all in memory: StringTransports from L{tests.helpers.make_transport} and a
fake L{Clock}, as in tests/test_relay.py.

Byte streams are random bytes, or are built from valid and invalid frames
(every known frame type and unknown ones, random values, bad lengths 0,
MAX_FRAME + 1, 0x7FFFFFFF and 0xFFFFFFFF, truncated and maximum-size frames),
and are cut into reads at arbitrary points. Several relay connections are
driven at once with interleaved reads, clock advances and lost connections;
streams that start with HELLO then REGISTER, or HELLO then a CLAIM of a
channel that a sender really holds, make real pairs that forward bytes.

The properties, checked after every read, clock advance and connection loss
(docs/protocol.rst sections 2 and 5 are the oracle):

* decoder: any split of a byte stream gives the events of a one-shot parse
  of the bytes read so far (frames, a held partial frame, or one bad length
  after which everything is discarded); it never holds more than one partial
  frame (MAX_FRAME + 3 bytes); mode switches apply from the next byte.
* relay: nothing raises out of dataReceived, connectionLost or the clock,
  no timer loops, and nothing is logged as a failure. Every read does what
  the transition table says: a valid frame gets its answer (WELCOME,
  CHANNEL, PAIRED), an invalid frame or bad length gets an ERROR frame with
  the table's code and a close, a closed connection ignores input, a paired
  one forwards the read unchanged to its partner and writes nothing itself.
  A connection buffers at most one partial control frame, a paired one
  nothing; the handshake, wait, close-grace, splice-cut and idle timers all
  fire when due; the connection limits admit or refuse exactly as counted,
  and a failed-claims refusal only follows that many failures; the registry
  agrees with the connections. Once every connection is lost, the factory
  holds no connection, splice or channel, the clock no DelayedCall (beyond
  the registry's own bookkeeping), and every limit has room again.

Factory options (idle timeout, limits) are fuzzed when RelayFactory takes
them. test_bytes_a_waiting_sender_sent_follow_the_receivers_paired keeps the
smallest case of a bug this fuzz found.

Runs are deterministic (derandomize=True, database=None). The number of fuzz
examples is printed by the last test, even without -s:

    /work/venv/bin/python -m pytest tests/test_fuzz.py -q

prints "fuzz examples run: <total> (<per test>)". Add
--hypothesis-show-statistics for hypothesis's own per-test counts, timings
and the outcomes reached (pairing, each ERROR code, ...). FUZZ_SCALE=10 in
the environment multiplies every test's max_examples for a deeper run.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
import re
import struct
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from twisted_relay import splice as splice_module
from twisted_relay.errors import ErrorCode
from twisted_relay.relay import CLOSE_GRACE, RelayFactory, RelayProtocol, State
from twisted_relay.wire import (
    MAX_ERROR_TEXT,
    MAX_FRAME,
    RELAY_PROTOCOL_VERSION,
    FrameReceiver,
    FrameType,
    decode_error,
    encode_channel,
    encode_frame,
    encode_version,
)

from tests.helpers import make_transport

# ---------------------------------------------------------------------------
# settings and counters

#: Examples each fuzz test ran (all phases, explicit ones included).
EXAMPLES: Counter[str] = Counter()
#: max_examples of each fuzz test.
BUDGET: dict[str, int] = {}
#: What the relay fuzz reached (pairs, each kind of close, ...), to prove it
#: is not vacuous.
OUTCOMES: Counter[str] = Counter()

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """
    Fixed settings for CI (deterministic, no example database, C{n}
    examples) and a count of the examples run. Goes right above the C{def},
    under C{@given} and C{@example}.
    """

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        BUDGET[test.__name__] = max(1, int(n * SCALE))

        @functools.wraps(test)
        def counted(*args: Any, **kwargs: Any) -> None:
            EXAMPLES[test.__name__] += 1
            test(*args, **kwargs)

        return settings(
            max_examples=BUDGET[test.__name__],
            derandomize=True,
            database=None,
            deadline=None,
            print_blob=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(counted)

    return decorate


def outcome(name: str) -> None:
    OUTCOMES[name] += 1
    event(name)


# ---------------------------------------------------------------------------
# a reference parser: docs/protocol.rst section 2, written independently

_LENGTH = struct.Struct("!I")

#: A partial frame: a 4-byte prefix and at most MAX_FRAME - 1 of its bytes.
MAX_BUFFERED = MAX_FRAME + 3

# Hook rules of the Decoder below, when asked for: a frame of this type
# switches to raw mode for value[0] bytes / for good / pauses the decoder.
RAW_COUNT, RAW_FOREVER, PAUSE = 0xEE, 0xEF, 0xED


def reference_parse(data: bytes, hooks: bool = False) -> tuple[list[tuple], list[int], bytes, bool]:
    """
    Parse C{data} in one go: (events, end offset of each event, bytes left
    waiting, discarding). Events are ("frame", type, value), ("bad_length",
    n), and with C{hooks} also ("raw", bytes) and ("raw_finished",).
    """
    events: list[tuple] = []
    ends: list[int] = []
    offset, raw_left, forever = 0, 0, False
    while offset < len(data):
        if forever or raw_left:
            take = len(data) - offset if forever else min(raw_left, len(data) - offset)
            events.append(("raw", data[offset : offset + take]))
            offset += take
            ends.append(offset)
            if not forever:
                raw_left -= take
                if not raw_left:
                    events.append(("raw_finished",))
                    ends.append(offset)
            continue
        if len(data) - offset < 4:
            break
        (length,) = _LENGTH.unpack_from(data, offset)
        if length == 0 or length > MAX_FRAME:
            events.append(("bad_length", length))
            ends.append(len(data))
            return events, ends, b"", True
        if len(data) - offset < 4 + length:
            break
        ftype, value = data[offset + 4], data[offset + 5 : offset + 4 + length]
        offset += 4 + length
        events.append(("frame", ftype, value))
        ends.append(offset)
        if hooks and ftype == RAW_COUNT and value:
            raw_left = value[0]
        elif hooks and ftype == RAW_FOREVER:
            forever = True
    return events, ends, data[offset:], False


def merged(events: list[tuple]) -> list[tuple]:
    """Join consecutive raw events: how raw bytes are chunked depends on the
    reads, their order and content must not."""
    out: list[tuple] = []
    for ev in events:
        if ev[0] == "raw" and out and out[-1][0] == "raw":
            out[-1] = ("raw", out[-1][1] + ev[1])
        elif ev != ("raw", b""):
            out.append(ev)
    return out


class Decoder(FrameReceiver):
    """A FrameReceiver that records its hook calls; with C{hooks}, frames of
    types RAW_COUNT, RAW_FOREVER and PAUSE switch modes as a real protocol
    does from inside a hook."""

    def __init__(self, hooks: bool = False) -> None:
        self.events: list[tuple] = []
        self.hooks = hooks

    def frame_received(self, ftype: int, value: bytes) -> None:
        self.events.append(("frame", ftype, value))
        if not self.hooks:
            return
        if ftype == RAW_COUNT and value:
            self.set_raw_mode(value[0])
        elif ftype == RAW_FOREVER:
            self.set_raw_mode()
        elif ftype == PAUSE:
            self.pauseProducing()

    def raw_data_received(self, data: bytes) -> None:
        self.events.append(("raw", data))

    def bad_length(self, length: int) -> None:
        self.events.append(("bad_length", length))

    def raw_finished(self) -> None:
        self.events.append(("raw_finished",))


def decoder(hooks: bool = False) -> Decoder:
    d = Decoder(hooks)
    d.makeConnection(StringTransport())
    return d


# ---------------------------------------------------------------------------
# byte streams and splits

KNOWN_TYPES = sorted(int(t) for t in FrameType)
frame_types = st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 255))
small_values = st.binary(max_size=40)
BAD_LENGTHS = [0, MAX_FRAME + 1, 0x7FFFFFFF, 0xFFFFFFFF]
bad_lengths = st.one_of(st.sampled_from(BAD_LENGTHS), st.integers(MAX_FRAME + 1, 2**32 - 1))


class Blob(bytes):
    """Bytes that print short: hypothesis shows failing examples, and a
    64 KiB frame would drown them."""

    def __repr__(self) -> str:
        return short(bytes(self))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def short(data: bytes, keep: int = 48) -> str:
    """C{repr} of C{data}, cut in the middle when long."""
    if len(data) <= 2 * keep:
        return repr(data)
    return f"{data[:keep]!r} + <{len(data) - 2 * keep} bytes> + {data[-keep:]!r}"


def _big(n: int) -> bytes:
    return Blob(b"\xa5" * n)


#: Mostly small values, now and then one of the largest (or a long one).
values = st.tuples(st.integers(0, 15), small_values, st.sampled_from([MAX_FRAME - 1, MAX_FRAME - 2, 4000])).map(
    lambda t: _big(t[2]) if t[0] == 0 else t[1]
)
valid_frames = st.tuples(frame_types, values)


def _truncated(args: tuple[int, bytes, int]) -> bytes:
    whole = encode_frame(args[0], args[1])
    return Blob(whole[: args[2] % len(whole)])


def _big_partial(args: tuple[int, int]) -> bytes:
    length, missing = args
    return Blob(_LENGTH.pack(length) + _big(length - missing))


#: Pieces of structured streams: valid frames, bad length prefixes (with a
#: tail), truncated frames, junk, and largest frames missing a few bytes.
pieces = st.one_of(
    valid_frames.map(lambda f: Blob(encode_frame(*f))),
    st.tuples(bad_lengths, st.binary(max_size=8)).map(lambda t: _LENGTH.pack(t[0]) + t[1]),
    st.tuples(frame_types, small_values, st.integers(0, 100)).map(_truncated),
    st.binary(max_size=12),
    st.tuples(st.sampled_from([MAX_FRAME, MAX_FRAME - 1]), st.sampled_from([1, 2, 100])).map(_big_partial),
)
structured_streams = st.lists(pieces, max_size=8).map(lambda p: Blob(b"".join(p)))
any_streams = st.one_of(st.binary(max_size=300), structured_streams)

#: How the network cuts a stream: one read, byte by byte, or at up to 12
#: arbitrary offsets (taken modulo the stream's length).
splits = st.one_of(
    st.lists(st.integers(0, 2**20), max_size=12),
    st.just("bytes"),
    st.just("whole"),
)


def cut(data: bytes, split: Any) -> list[bytes]:
    if split == "whole" or not data:
        return [data]
    if split == "bytes":
        size = 1 if len(data) <= 600 else 4099
        return [data[i : i + size] for i in range(0, len(data), size)]
    bounds = [0, *sorted({c % (len(data) + 1) for c in split}), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------
# the frame decoder


@given(frames=st.lists(valid_frames, max_size=8), split=splits)
@example(frames=[(FrameType.HELLO, b"\0\1"), (0xFF, b"")], split="bytes")
@example(frames=[(0, _big(MAX_FRAME - 1)), (7, b"x")], split=[4, 5, MAX_FRAME + 3])
@fuzz(500)
def test_any_split_of_valid_frames_gives_the_same_frames(frames: list[tuple[int, bytes]], split: Any) -> None:
    """However the network cuts valid frames into reads, the same frames come out, in order."""
    stream = b"".join(encode_frame(t, v) for t, v in frames)
    expected = [("frame", t, v) for t, v in frames]
    one_shot = decoder()
    one_shot.dataReceived(stream)
    assert one_shot.events == expected
    d = decoder()
    for chunk in cut(stream, split):
        d.dataReceived(chunk)
        assert len(d._unprocessed) <= MAX_BUFFERED
    assert d.events == one_shot.events
    assert d._unprocessed == b""


@given(stream=any_streams, split=splits, more=st.binary(max_size=20))
@example(stream=_LENGTH.pack(0x7FFFFFFF) + b"\0" * 10, split="bytes", more=b"")
@example(stream=encode_frame(1, b"ab") + b"\0\0\0\0" + encode_frame(2), split="whole", more=b"")
@fuzz(600)
def test_decoder_delivers_waits_or_refuses_once(stream: bytes, split: Any, more: bytes) -> None:
    """Any bytes in any reads give complete frames, a wait for the rest, or one bad length then silence."""
    d = decoder()
    fed = b""
    for chunk in cut(stream, split):
        d.dataReceived(chunk)
        fed += chunk
        events, _, rest, discarding = reference_parse(fed)
        assert d.events == events
        assert d._unprocessed == rest
        assert len(d._unprocessed) <= MAX_BUFFERED
    bad = [ev for ev in d.events if ev[0] == "bad_length"]
    assert len(bad) <= 1
    if bad:
        assert d.events[-1] == bad[0]
        event("decoder: bad length")
        d.dataReceived(more + encode_frame(FrameType.HELLO, b"\0\1"))
        assert d.events[-1] == bad[0] and d._unprocessed == b""
    else:
        event("decoder: frames and/or waiting" if d.events else "decoder: waiting")


hook_pieces = st.one_of(
    pieces,
    st.tuples(st.integers(0, 40), st.binary(max_size=30)).map(lambda t: encode_frame(RAW_COUNT, bytes([t[0]])) + t[1]),
    st.binary(max_size=20).map(lambda tail: encode_frame(RAW_FOREVER) + tail),
    st.just(encode_frame(PAUSE)),
)


@given(stream=st.lists(hook_pieces, max_size=8).map(lambda p: Blob(b"".join(p))), split=splits)
@example(
    stream=encode_frame(RAW_COUNT, b"\x06") + b"\0\0\0\0\xff\x07" + encode_frame(PAUSE) + encode_frame(1),
    split="bytes",
)
@fuzz(400)
def test_mode_switches_in_hooks_do_not_depend_on_reads(stream: bytes, split: Any) -> None:
    """Raw mode and pauses set while handling a frame apply from the next byte, however bytes were read."""
    d = decoder(hooks=True)
    fed = b""
    for chunk in cut(stream, split):
        d.dataReceived(chunk)
        while d.paused:  # a consumer that drains at once
            d.resumeProducing()
        fed += chunk
        events, _, rest, discarding = reference_parse(fed, hooks=True)
        assert merged(d.events) == merged(events)
        assert d._unprocessed == rest
        assert len(d._unprocessed) <= MAX_BUFFERED


partial_frames = st.one_of(
    st.binary(max_size=3),
    st.tuples(st.integers(1, MAX_FRAME), st.binary(max_size=40)).map(
        lambda t: _LENGTH.pack(max(t[0], len(t[1]) + 1)) + t[1]
    ),
)


@given(before=partial_frames, split=splits, after=st.binary(min_size=1, max_size=50))
@example(before=b"\0\0", split="whole", after=b"x")
@fuzz(200)
def test_switch_to_raw_between_reads_releases_buffered_bytes(before: bytes, split: Any, after: bytes) -> None:
    """Raw mode switched on between reads (as pairing does) delivers held bytes at once, then the rest."""
    d = decoder()
    for chunk in cut(before, split):
        d.dataReceived(chunk)
    assert d.events == [] and d._unprocessed == before
    d.set_raw_mode()
    assert b"".join(ev[1] for ev in d.events) == before
    d.dataReceived(after)
    assert b"".join(ev[1] for ev in d.events) == before + after
    assert d._unprocessed == b""


# ---------------------------------------------------------------------------
# the relay: a harness checking every step against docs/protocol.rst 5.3

SPLICE_GRACE = splice_module.CLOSE_GRACE
FRAMING = (State.NEW, State.GREETED, State.WAITING, State.RECEIVER)
_CHANNEL = re.compile(rb"[1-9][0-9]{0,8}")
ALL = 1 << 30  # a read size meaning "the rest of the stream"


def written_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The frames in bytes the relay wrote itself; all must be complete."""
    events, _, rest, discarding = reference_parse(data)
    assert not discarding and rest == b"", f"relay wrote a malformed or incomplete frame: {short(data)}"
    return [(ev[1], ev[2]) for ev in events]


def error_code(frame: tuple[int, bytes]) -> int | None:
    return decode_error(frame[1])[0] if frame[0] == FrameType.ERROR else None


@dataclass
class Conn:
    """One client connection and what the harness knows of it."""

    index: int
    tokens: list[tuple]
    head: int = 0  # tokens a warm-up sends in one read
    host: str = "10.0.0.1"
    proto: RelayProtocol | None = None
    data: bytes | None = None  # rendered at its first read
    head_bytes: int = 0
    pos: int = 0
    lost: bool = False
    admitted: bool = True
    opened_at: float = 0.0
    waiting_since: float | None = None
    active_at: float | None = None  # last byte through its splice
    closed_at: float | None = None  # close(CODE): the close-grace clock
    partner_lost_at: float | None = None  # the splice's cut clock
    channel: int | None = None
    sender: bool = False

    def written(self, start: int = 0) -> bytes:
        """What the relay wrote on this connection, from offset C{start}."""
        with self.proto.transport.io.getbuffer() as view:
            return bytes(view[start:])

    def size(self) -> int:
        return self.proto.transport.io.tell()


@dataclass
class Prediction:
    writes: list[tuple[int, bytes | None]]  # frames that mean progress; None: checked apart
    end: State
    error: ErrorCode | None = None
    rest: bytes = b""
    partner: Conn | None = None
    forwarded: bytes = b""
    held: bytes = b""  # what the partner had buffered while waiting
    claim_step: int | None = None  # index in the writes of a valid CLAIM's answer


class BoundedClock(Clock):
    """A Clock whose advance fails, rather than hangs, when timers keep
    rescheduling themselves for a time already reached."""

    max_calls_per_advance = 10_000

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        for _ in range(self.max_calls_per_advance):
            if not (self.calls and self.calls[0].getTime() <= self.seconds()):
                return
            call = self.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)
            self._sortCalls()
        raise AssertionError(f"timers keep firing at {self.seconds()}: {self.calls[:3]}")


@contextmanager
def watched_logs() -> Iterator[list[str]]:
    """Collect logged failures, and relay log events that cannot be formatted."""
    problems: list[str] = []

    def observe(ev: dict) -> None:
        if "log_failure" in ev:
            problems.append(f"{formatEvent(ev)}\n{ev['log_failure'].getTraceback()}")
        elif str(ev.get("log_namespace", "")).startswith("twisted_relay"):
            text = formatEvent(ev)
            if text.startswith("Unable to format event"):
                problems.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        yield problems
    finally:
        globalLogPublisher.removeObserver(observe)


class World:
    """A RelayFactory on a Clock, its connections, and the checks of every step."""

    def __init__(self, problems: list[str], seed: int = 0, **options: Any) -> None:
        self.problems = problems
        self.clock = BoundedClock()
        known = inspect.signature(RelayFactory).parameters
        options = {k: v for k, v in options.items() if k in known}
        self.factory = RelayFactory(self.clock, **options)
        self.handshake_timeout = options.get("handshake_timeout", 30.0)
        self.wait_timeout = options.get("wait_timeout", 3600.0)
        self.idle_timeout = options.get("idle_timeout")
        self.max_connections = options.get("max_connections")
        self.max_per_ip = options.get("max_per_ip")
        self.max_failed_codes = options.get("max_failed_codes")
        # Channels must not depend on the OS's randomness, or examples would
        # not replay; the policy (shortest free length) is unchanged.
        self.factory.registry._randbelow = random.Random(seed).randrange
        self.conns: list[Conn] = []
        self.released: dict[int, float] = {}  # channel -> end of its cooldown
        self.failed_claims: Counter[str] = Counter()
        self._taken_before: set[int] = set()

    # the harness's view

    def add(self, tokens: list[tuple], head: int = 0, host: int = 0) -> Conn:
        conn = Conn(len(self.conns), tokens, head, f"10.0.0.{host + 1}")
        self.conns.append(conn)
        return conn

    def live(self) -> list[Conn]:
        return [c for c in self.conns if c.proto is not None and not c.lost]

    def conn_of(self, proto: Any) -> Conn:
        return next(c for c in self.conns if c.proto is proto)

    def partner(self, conn: Conn) -> Conn | None:
        splice = conn.proto.splice
        return None if splice is None else self.conn_of(splice.other(conn.proto))

    def taken(self) -> dict[int, Conn]:
        """Channels held: senders still connected, waiting or paired (5.4)."""
        return {
            c.channel: c
            for c in self.live()
            if c.sender and c.channel is not None and c.proto.state in (State.WAITING, State.PAIRED)
        }

    def waiting(self) -> dict[int, Conn]:
        return {ch: c for ch, c in self.taken().items() if c.proto.state is State.WAITING}

    def sizes(self) -> dict[int, int]:
        return {c.index: c.size() for c in self.conns if c.proto is not None}

    def render(self, token: tuple) -> bytes:
        kind = token[0]
        if kind == "frame":
            return encode_frame(token[1], token[2])
        if kind == "bytes":
            return token[1]
        assert kind == "claim_ref"
        # A channel a sender really holds (waiting ones first), if any.
        waiting, taken = self.waiting(), self.taken()
        chans = sorted(waiting) + sorted(set(taken) - set(waiting))
        channel = chans[token[1] % len(chans)] if chans else token[1] % 9 + 1
        return encode_frame(FrameType.CLAIM, encode_channel(channel))

    # steps

    def open(self, conn: Conn) -> None:
        admitted = [c for c in self.live() if c.admitted]
        busy = (self.max_connections is not None and len(admitted) >= self.max_connections) or (
            self.max_per_ip is not None and sum(c.host == conn.host for c in admitted) >= self.max_per_ip
        )
        conn.proto = self.factory.buildProtocol(None)
        conn.opened_at = self.clock.seconds()
        conn.proto.makeConnection(make_transport(conn.host, 4000 + conn.index))
        frames = written_frames(conn.written())
        conn.admitted = not busy
        if busy:
            assert [error_code(f) for f in frames] == [ErrorCode.RELAY_BUSY], f"over a limit, got {frames}"
            assert conn.proto.state is State.CLOSED and conn.proto.transport.disconnecting
            conn.closed_at = self.clock.seconds()
            outcome("relay: refused RELAY_BUSY")
        else:
            assert frames == [] and conn.proto.state is State.NEW, f"under every limit, got {frames}"
        self.check()

    def render_all(self, conn: Conn) -> None:
        if conn.data is None:
            conn.head_bytes = len(b"".join(self.render(t) for t in conn.tokens[: conn.head]))
            conn.data = b"".join(self.render(t) for t in conn.tokens)

    def feed(self, conn: Conn, size: int) -> None:
        if conn.proto is None:
            self.open(conn)
        if conn.lost:
            return
        self.render_all(conn)
        chunk = conn.data[conn.pos : conn.pos + size]
        conn.pos += len(chunk)
        if chunk:
            self.read(conn, chunk)

    def feed_head(self, conn: Conn) -> None:
        """Send the connection's head tokens (say HELLO and REGISTER) in one read."""
        if conn.proto is None:
            self.open(conn)
        self.render_all(conn)
        self.feed(conn, max(0, conn.head_bytes - conn.pos))

    def read(self, conn: Conn, chunk: bytes) -> None:
        p = conn.proto
        state, buffered = p.state, p._unprocessed
        before = self.sizes()
        states = {c.index: c.proto.state for c in self.live()}
        pred = self.predict(state, buffered + chunk) if state in FRAMING else None
        p.dataReceived(chunk)
        touched = {conn.index}
        new = conn.written(before[conn.index])
        if state is State.CLOSED:
            assert new == b"" and p.state is State.CLOSED, "a closed connection must ignore input"
            assert p._unprocessed == b""
            outcome("relay: input ignored after close")
        elif state is State.PAIRED:
            assert new == b"", "after PAIRED the relay sends nothing of its own"
            assert p.state is State.PAIRED and p._unprocessed == b""
            other = self.partner(conn)
            if other is not None and not other.lost:
                touched.add(other.index)
                got = other.written(before[other.index])
                assert got == chunk, f"forwarded {short(got)}, read {short(chunk)}"
                conn.active_at = other.active_at = self.clock.seconds()
            outcome("relay: forwarded")
        else:
            assert pred is not None
            touched |= self.check_framing_read(conn, pred, new, before)
        for c in self.live():
            if c.index not in touched:
                assert c.size() == before[c.index], f"a read on {conn.index} wrote to {c.index}"
                assert c.proto.state is states[c.index]
        self.check()

    def predict(self, state: State, buf: bytes) -> Prediction:
        """What the transition table (5.3) says these bytes do, from C{state}."""
        events, ends, rest, _ = reference_parse(buf)
        waiting, taken = self.waiting(), self.taken()
        writes: list[tuple[int, bytes | None]] = []

        def close(code: ErrorCode, claim: bool = False) -> Prediction:
            return Prediction(writes, State.CLOSED, code, claim_step=len(writes) if claim else None)

        for ev, end in zip(events, ends):
            if ev[0] == "bad_length":
                return close(ErrorCode.PROTOCOL_ERROR if ev[1] == 0 else ErrorCode.FRAME_TOO_LARGE)
            _, ftype, value = ev
            if state is State.NEW:
                if ftype != FrameType.HELLO or len(value) < 2:
                    return close(ErrorCode.PROTOCOL_ERROR)
                if struct.unpack_from("!H", value)[0] != RELAY_PROTOCOL_VERSION:
                    return close(ErrorCode.VERSION_MISMATCH)
                writes.append((FrameType.WELCOME, encode_version(RELAY_PROTOCOL_VERSION)))
                state = State.GREETED
            elif state is State.GREETED and ftype == FrameType.REGISTER:
                writes.append((FrameType.CHANNEL, None))
                state = State.WAITING
            elif state is State.GREETED and ftype == FrameType.CLAIM:
                if not _CHANNEL.fullmatch(value):
                    return close(ErrorCode.PROTOCOL_ERROR)
                channel = int(value)
                if channel in waiting:
                    step = len(writes)
                    writes.append((FrameType.PAIRED, b""))
                    sender = waiting[channel]
                    return Prediction(
                        writes,
                        State.PAIRED,
                        partner=sender,
                        forwarded=buf[end:],
                        held=sender.proto._unprocessed,
                        claim_step=step,
                    )
                return close(ErrorCode.CODE_IN_USE if channel in taken else ErrorCode.UNKNOWN_CODE, claim=True)
            else:  # GREETED with another frame; WAITING (and RECEIVER) with any
                return close(ErrorCode.PROTOCOL_ERROR)
        return Prediction(writes, state, rest=rest)

    def check_framing_read(self, conn: Conn, pred: Prediction, new: bytes, before: dict[int, int]) -> set[int]:
        p = conn.proto
        now = self.clock.seconds()
        if pred.held:
            # A waiting sender's partial frame is forwarded once paired (5.5:
            # every byte read is forwarded, in order), after PAIRED.
            assert new.endswith(encode_frame(FrameType.PAIRED) + pred.held), (
                f"the receiver must get PAIRED, then the {len(pred.held)} bytes the sender sent "
                f"while waiting; it got {short(new)}"
            )
            new = new[: -len(pred.held)]
            outcome("relay: paired a sender holding a partial frame")
        frames = written_frames(new)
        expected = pred.writes + ([(FrameType.ERROR, None)] if pred.error is not None else [])

        def same(actual: tuple[int, bytes], wanted: tuple[int, bytes | None]) -> bool:
            return actual[0] == wanted[0] and (wanted[1] is None or actual[1] == wanted[1])

        for frame in frames:
            if frame[0] == FrameType.CHANNEL:
                assert _CHANNEL.fullmatch(frame[1]), f"bad CHANNEL value {frame[1]!r}"
                channel = int(frame[1])
                assert channel not in self._taken_before, f"channel {channel} handed out twice"
                assert now >= self.released.get(channel, now), f"channel {channel} reused during its cooldown"
                conn.sender, conn.channel, conn.waiting_since = True, channel, now
            if frame[0] == FrameType.ERROR:
                assert 2 <= len(frame[1]) <= 2 + MAX_ERROR_TEXT
        refused = (
            pred.claim_step is not None
            and self.max_failed_codes is not None
            and len(frames) == pred.claim_step + 1
            and error_code(frames[-1]) == ErrorCode.TOO_MANY_ATTEMPTS
        )
        if refused:
            # A syntactically valid CLAIM from a host that failed too often.
            assert all(map(same, frames[:-1], expected)), f"expected {expected}, got {frames}"
            assert self.failed_claims[conn.host] >= self.max_failed_codes, "refused before the limit"
            assert p.state is State.CLOSED and p.transport.disconnecting and p._unprocessed == b""
            conn.closed_at = now
            outcome("relay: refused TOO_MANY_ATTEMPTS")
            return {conn.index}
        assert len(frames) == len(expected) and all(map(same, frames, expected)), (
            f"from {pred.end.name} expected {expected}, got {[(t, short(v)) for t, v in frames]}"
        )
        touched = {conn.index}
        if pred.end is State.CLOSED:
            assert error_code(frames[-1]) == pred.error, f"expected {pred.error!r}, got {frames[-1]}"
            assert p.state is State.CLOSED, f"after {frames} the state is {p.state}"
            assert p.transport.disconnecting and p._unprocessed == b""
            conn.closed_at = now
            if pred.claim_step is not None:
                self.failed_claims[conn.host] += 1
            outcome(f"relay: closed {pred.error.name}")
        elif pred.end is State.PAIRED:
            other = pred.partner
            assert other is not None
            touched.add(other.index)
            assert p.state is State.PAIRED and other.proto.state is State.PAIRED
            assert p.splice is other.proto.splice and p.splice in self.factory.splices
            assert p._unprocessed == b"" and not p.transport.disconnecting
            got = other.written(before[other.index])
            assert got == encode_frame(FrameType.PAIRED) + pred.forwarded, (
                f"sender got {got!r}, expected PAIRED then {pred.forwarded!r}"
            )
            conn.channel = other.channel
            conn.active_at = other.active_at = now
            outcome("relay: paired")
        else:
            assert p.state is pred.end, f"expected state {pred.end}, got {p.state}"
            assert not p.transport.disconnecting
            assert p._unprocessed == pred.rest, "the relay must hold exactly the partial frame"
            outcome(f"relay: progressed to {pred.end.name}" if frames else "relay: waiting for more")
        return touched

    def advance(self, seconds: float) -> None:
        before = self.sizes()
        states = {c.index: c.proto.state for c in self.live()}
        self.clock.advance(seconds)
        for c in self.live():
            old, new = states[c.index], c.proto.state
            frames = written_frames(c.written(before[c.index]))
            if old is new:
                assert frames == [], f"{c.index} in {old} wrote {frames} on a timer"
                continue
            # Only a timer's close(TIMEOUT): one ERROR frame, then closing.
            assert old in (State.NEW, State.GREETED, State.WAITING) and new is State.CLOSED, (old, new)
            assert [error_code(f) for f in frames] == [ErrorCode.TIMEOUT], frames
            assert c.proto.transport.disconnecting
            # Clock runs a timer's own callLater relative to the end of the
            # advance, so the close-grace clock starts now.
            c.closed_at = self.clock.seconds()
            outcome(f"relay: timed out in {old.name}")
        self.check()

    def lose(self, conn: Conn) -> None:
        if conn.proto is None:
            self.open(conn)
        if conn.lost:
            return
        before = self.sizes()
        state = conn.proto.state
        other = self.partner(conn) if state is State.PAIRED else None
        conn.proto.connectionLost(Failure(ConnectionDone()))
        conn.lost = True
        assert conn.proto.state is State.CLOSED
        assert self.sizes() == before, "losing a connection sends nothing"
        if other is not None and not other.lost:
            t = other.proto.transport
            assert t.disconnecting and t.producer is None, "the partner must be closed once flushed"
            if other.partner_lost_at is None:
                other.partner_lost_at = self.clock.seconds()
            outcome("relay: partner lost while paired")
        outcome(f"relay: lost in {state.name}")
        self.check()

    def check(self) -> None:
        """Invariants that hold between any two events."""
        assert not self.problems, "\n".join(self.problems)
        live = self.live()
        now = self.clock.seconds()
        assert self.factory.connections == {c.proto for c in live}
        taken, waiting = self.taken(), self.waiting()
        registry = self.factory.registry
        assert len(registry) == len(taken), (len(registry), sorted(taken))
        assert sorted(id(s) for s in registry.waiting()) == sorted(id(c.proto) for c in waiting.values())
        for channel in self._taken_before - set(taken):
            self.released[channel] = now + registry.cooldown
        self._taken_before = set(taken)
        for c in live:
            p, t = c.proto, c.proto.transport
            assert len(p._unprocessed) <= MAX_BUFFERED, f"{len(p._unprocessed)} bytes buffered in {p.state}"
            assert p.state is not State.RECEIVER, "left in the transient RECEIVER state"
            if p.state is State.PAIRED:
                assert p._unprocessed == b"", f"proxy mode holds {short(p._unprocessed)} back from the partner"
                assert p.splice in self.factory.splices
            if p.state is State.CLOSED:
                assert t.disconnecting
            # Liveness: every timer that should have fired has.
            if self.handshake_timeout is not None and p.state in (State.NEW, State.GREETED):
                assert now < c.opened_at + self.handshake_timeout, "handshake timer did not fire"
            if self.wait_timeout is not None and p.state is State.WAITING:
                assert now < c.waiting_since + self.wait_timeout, "wait timer did not fire"
            if c.closed_at is not None and now >= c.closed_at + CLOSE_GRACE:
                assert t.aborted, "a client that does not read its ERROR must be cut"
            if c.partner_lost_at is not None and now >= c.partner_lost_at + SPLICE_GRACE:
                assert t.aborted, "a leg that does not flush must be cut"
            if self.idle_timeout is not None and p.state is State.PAIRED and c.partner_lost_at is None:
                if now >= c.active_at + self.idle_timeout:
                    assert t.aborted, "an idle transfer must be cut"
        for splice in self.factory.splices:
            legs = [self.conn_of(splice.sender), self.conn_of(splice.receiver)]
            assert not all(leg.lost for leg in legs), "a splice outlived both legs"

    def teardown(self, first: list[int]) -> None:
        """Lose every connection (C{first} ones first); nothing may remain,
        and every limit has room again."""
        order = [i % len(self.conns) for i in first] + list(range(len(self.conns)))
        for i in order:
            conn = self.conns[i]
            if conn.proto is not None and not conn.lost:
                self.lose(conn)
        registry = self.factory.registry
        assert self.factory.connections == set()
        assert self.factory.splices == set()
        assert len(registry) == 0 and registry.waiting() == []

        def leftovers() -> list[Any]:
            # The registry may keep bookkeeping timers of its own (cooldown).
            return [d for d in self.clock.getDelayedCalls() if getattr(d.func, "__self__", None) is not registry]

        assert leftovers() == [], f"timers outlive their connections: {leftovers()}"
        before = self.sizes()
        self.clock.advance(max(CLOSE_GRACE, SPLICE_GRACE) + 1)
        assert leftovers() == []
        assert self.sizes() == before, "a timer wrote to a lost connection"
        for host in sorted({c.host for c in self.conns}):
            probe = self.add([], host=int(host.rsplit(".", 1)[1]) - 1)
            self.open(probe)  # checks it is admitted: no limit leaked a count
            self.lose(probe)
        assert leftovers() == [] and self.factory.connections == set()
        assert not self.problems, "\n".join(self.problems)


# ---------------------------------------------------------------------------
# relay streams: tokens rendered at a connection's first read, so that a
# CLAIM can name a channel a sender holds by then

HELLO_OK = ("frame", FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION))
REGISTER = ("frame", FrameType.REGISTER, b"")

hello_tokens = st.one_of(
    st.just(HELLO_OK),
    st.binary(max_size=4).map(lambda v: ("frame", FrameType.HELLO, v)),
    st.binary(max_size=6).map(lambda v: ("frame", FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION) + v)),
)
claim_values = st.one_of(
    st.integers(1, 120).map(encode_channel),
    st.sampled_from([b"", b"0", b"07", b"-1", b"1a", b"1234567890", b" 1", b"\xd9\xa1"]),
    st.binary(max_size=10),
)
tokens = st.one_of(
    hello_tokens,
    st.binary(max_size=4).map(lambda v: ("frame", FrameType.REGISTER, v)),
    st.integers(0, 7).map(lambda k: ("claim_ref", k)),
    claim_values.map(lambda v: ("frame", FrameType.CLAIM, v)),
    st.tuples(frame_types, small_values).map(lambda f: ("frame", *f)),
    pieces.map(lambda b: ("bytes", b)),
)
prefixes = st.sampled_from(
    [
        (),
        (HELLO_OK,),
        (HELLO_OK, REGISTER),
        (HELLO_OK, ("claim_ref", 0)),
        (HELLO_OK, ("claim_ref", 1)),
        (("frame", FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION + 1)),),
    ]
)
#: Anything a client may send, as (tokens, how many of them are its head).
chaos_streams = st.one_of(
    st.tuples(prefixes, st.lists(tokens, max_size=5)).map(lambda t: ([*t[0], *t[1]], 0)),
    st.binary(max_size=200).map(lambda b: ([("bytes", b)], 0)),
    st.just(([HELLO_OK], 0)),  # then silence: the handshake timer's job
)
#: A sender: HELLO and REGISTER, then whatever (a breach while waiting, or
#: bytes for the receiver once paired).
tails = st.one_of(st.just([]), st.lists(tokens, min_size=1, max_size=3))
sender_streams = tails.map(lambda tail: ([HELLO_OK, REGISTER, *tail], 2))
#: A receiver: HELLO and a CLAIM of a channel a sender holds (if any does
#: by its first read), then whatever (forwarded once paired).
receiver_streams = st.tuples(st.integers(0, 3), tails).map(lambda t: ([HELLO_OK, ("claim_ref", t[0]), *t[1]], 2))
client_streams = st.one_of(sender_streams, receiver_streams, chaos_streams)


def _clients(parts: tuple[list, list, list]) -> list[tuple[tuple[list[tuple], int], int]]:
    couples, lone, others = parts
    return [client for couple in couples for client in couple] + lone + others or [(([], 0), 0)]


def _from_either_address(streams: Any) -> Any:
    return st.tuples(streams, st.integers(0, 1))


#: Up to two sender and receiver couples, a lone sender or receiver, and two
#: other clients, each from one of two addresses; at least one client.
client_lists = st.tuples(
    st.lists(st.tuples(_from_either_address(sender_streams), _from_either_address(receiver_streams)), max_size=2),
    st.lists(_from_either_address(st.one_of(sender_streams, receiver_streams)), max_size=1),
    st.lists(_from_either_address(chaos_streams), max_size=2),
).map(_clients)

read_sizes = st.one_of(st.integers(1, 8), st.integers(1, 100), st.just(ALL))
feed_ops = st.tuples(st.just("feed"), st.integers(0, 5), read_sizes)
ops = st.one_of(
    feed_ops,
    feed_ops,
    feed_ops,
    st.tuples(st.just("advance"), st.sampled_from([0.001, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 3600.0])),
    st.tuples(st.just("lose"), st.integers(0, 5)),
)
configs = st.fixed_dictionaries(
    {
        "handshake_timeout": st.sampled_from([30.0, None, 1.0]),
        "wait_timeout": st.sampled_from([3600.0, None, 5.0]),
        "idle_timeout": st.sampled_from([None, 20.0, 2.0]),
        "max_connections": st.sampled_from([None, None, None, None, 3, 1]),
        "max_per_ip": st.sampled_from([None, None, None, None, 2, 1]),
        "max_failed_codes": st.sampled_from([None, None, 3, 1]),
        "seed": st.integers(0, 2**16),
    }
)
DEFAULTS = {
    "handshake_timeout": 30.0,
    "wait_timeout": 3600.0,
    "idle_timeout": None,
    "max_connections": None,
    "max_per_ip": None,
    "max_failed_codes": None,
    "seed": 0,
}


@given(
    config=configs,
    stream=client_streams,
    split=splits,
    advances=st.lists(st.sampled_from([0.5, 1.0, 30.0]), max_size=2),
)
@example(config=DEFAULTS, stream=([HELLO_OK, ("bytes", _LENGTH.pack(0xFFFFFFFF))], 0), split="bytes", advances=[])
@fuzz(400)
def test_relay_answers_or_closes_any_single_stream(
    config: dict, stream: tuple[list[tuple], int], split: Any, advances: list[float]
) -> None:
    """Whatever one client sends, the relay answers each frame as the protocol says or closes with ERROR."""
    with watched_logs() as problems:
        world = World(problems, **config)
        conn = world.add(*stream)
        world.open(conn)
        world.render_all(conn)
        for i, chunk in enumerate(cut(conn.data, split)):
            if chunk and not conn.lost:
                world.read(conn, chunk)
            if i < len(advances):
                world.advance(advances[i])
        world.teardown([])


def run(world: World, steps: list[tuple], warm_up: str, finish: bool, first: list[int]) -> None:
    conns = world.conns
    if warm_up != "none":  # senders register before anything else happens
        for conn in conns:
            if conn.head and conn.tokens[1] == REGISTER:
                world.feed_head(conn)
    if warm_up == "pairs":  # then receivers claim
        for conn in conns:
            if conn.head and conn.tokens[1][0] == "claim_ref":
                world.feed_head(conn)
    for step in steps:
        if step[0] == "feed":
            world.feed(conns[step[1] % len(conns)], step[2])
        elif step[0] == "advance":
            world.advance(step[1])
        else:
            world.lose(conns[step[1] % len(conns)])
    if finish:
        for conn in conns:
            world.feed(conn, ALL)
    world.teardown(first)


@given(
    config=configs,
    clients=client_lists,
    steps=st.lists(ops, max_size=24),
    warm_up=st.sampled_from(["none", "senders", "pairs"]),
    finish=st.booleans(),
    first=st.lists(st.integers(0, 5), max_size=4),
)
@example(  # a plain pairing, pipelined bytes both ways, then the sender leaves
    config=DEFAULTS,
    clients=[
        (([HELLO_OK, REGISTER, ("bytes", b"up")], 2), 0),
        (([HELLO_OK, ("claim_ref", 0), ("bytes", b"down")], 2), 1),
    ],
    steps=[("feed", 1, 3), ("feed", 1, ALL), ("feed", 0, ALL), ("lose", 0)],
    warm_up="senders",
    finish=True,
    first=[1],
)
@example(  # found by this fuzz: see test_bytes_a_waiting_sender_sent_follow_the_receivers_paired
    config=DEFAULTS,
    clients=[(([HELLO_OK, REGISTER, ("bytes", b"\0\0")], 2), 0), (([HELLO_OK, ("claim_ref", 0)], 2), 1)],
    steps=[("feed", 0, ALL), ("feed", 1, ALL)],
    warm_up="none",
    finish=False,
    first=[],
)
@fuzz(800)
def test_relay_survives_interleaved_connections(
    config: dict,
    clients: list[tuple[tuple[list[tuple], int], int]],
    steps: list[tuple],
    warm_up: str,
    finish: bool,
    first: list[int],
) -> None:
    """Many clients, time passing, drops: the relay keeps to the protocol and its limits, and cleans up."""
    with watched_logs() as problems:
        world = World(problems, **config)
        for (tokens_, head), host in clients:
            world.add(tokens_, head, host)
        run(world, steps, warm_up, finish, first)


@given(
    seed=st.integers(0, 2**16),
    claim_split=splits,
    pipelined=st.binary(max_size=30),
    traffic=st.lists(st.tuples(st.booleans(), any_streams, splits), max_size=6),
    first=st.lists(st.integers(0, 1), max_size=2),
)
@fuzz(250)
def test_paired_legs_forward_every_byte(
    seed: int, claim_split: Any, pipelined: bytes, traffic: list[tuple[bool, bytes, Any]], first: list[int]
) -> None:
    """Once paired, every byte either side sends reaches the other side unchanged and in order."""
    with watched_logs() as problems:
        world = World(problems, seed=seed)
        sender = world.add([HELLO_OK, REGISTER])
        world.feed(sender, ALL)
        receiver = world.add([HELLO_OK, ("claim_ref", 0), ("bytes", pipelined)], host=1)
        world.open(receiver)
        world.render_all(receiver)
        for chunk in cut(receiver.data, claim_split):
            if chunk:
                world.read(receiver, chunk)
        assert sender.proto.state is receiver.proto.state is State.PAIRED
        up, down = b"", pipelined
        for upward, data, split in traffic:
            for chunk in cut(data, split):
                if chunk:
                    world.read(sender if upward else receiver, chunk)
            if upward:
                up += data
            else:
                down += data
        paired = encode_frame(FrameType.PAIRED)
        assert receiver.written().split(paired, 1)[1] == up
        assert sender.written().split(paired, 1)[1] == down
        world.teardown(first)


def test_bytes_a_waiting_sender_sent_follow_the_receivers_paired() -> None:
    """Bytes a sender sent while waiting reach the receiver after its PAIRED frame, never before."""
    # Minimal case found by test_relay_survives_interleaved_connections.
    clock = Clock()
    factory = RelayFactory(clock)
    sender = factory.buildProtocol(None)
    sender.makeConnection(make_transport("10.0.0.1"))
    hello = encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION))
    sender.dataReceived(hello + encode_frame(FrameType.REGISTER))
    channel = int(written_frames(sender.transport.value())[-1][1])
    sender.dataReceived(b"\0\0")  # the start of a length prefix
    receiver = factory.buildProtocol(None)
    receiver.makeConnection(make_transport("10.0.0.2"))
    receiver.dataReceived(hello + encode_frame(FrameType.CLAIM, encode_channel(channel)))
    welcome = encode_frame(FrameType.WELCOME, encode_version(RELAY_PROTOCOL_VERSION))
    assert receiver.transport.value() == welcome + encode_frame(FrameType.PAIRED) + b"\0\0"
    assert sender._unprocessed == b""


# ---------------------------------------------------------------------------


def test_fuzz_example_count(capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzz tests ran all their examples and reached every kind of outcome (prints the count)."""
    if not EXAMPLES:
        pytest.skip("run together with the fuzz tests above")
    total = sum(EXAMPLES.values())
    detail = ", ".join(f"{name}={n}" for name, n in EXAMPLES.items())
    with capsys.disabled():
        print(f"\nfuzz examples run: {total} ({detail})")
    for name, n in EXAMPLES.items():
        assert n >= BUDGET[name], f"{name} ran {n} examples, fewer than its {BUDGET[name]}"
    if "test_relay_survives_interleaved_connections" in EXAMPLES and SCALE >= 1:
        for reached in [
            "relay: paired",
            "relay: forwarded",
            "relay: partner lost while paired",
            "relay: lost in PAIRED",
            "relay: closed PROTOCOL_ERROR",
            "relay: closed FRAME_TOO_LARGE",
            "relay: closed VERSION_MISMATCH",
            "relay: closed UNKNOWN_CODE",
            "relay: closed CODE_IN_USE",
            "relay: timed out in NEW",
            "relay: timed out in GREETED",
            "relay: timed out in WAITING",
            "relay: input ignored after close",
            "relay: progressed to WAITING",
        ]:
            assert OUTCOMES[reached] >= 3, f"the fuzz reached {reached!r} too rarely: {dict(OUTCOMES)}"
