"""
Tests for L{twisted_relay.wire}: the frame codecs and the L{FrameReceiver}
parse loop, in the style of Twisted's C{IntNTestCaseMixin}: the same byte
stream must give the same events however the network chops it up.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from twisted_relay.errors import ErrorCode
from twisted_relay.wire import (
    MAX_ERROR_TEXT,
    MAX_FRAME,
    FrameReceiver,
    FrameTooLong,
    FrameType,
    MalformedFrame,
    decode_channel,
    decode_error,
    Header,
    decode_header,
    decode_version,
    encode_channel,
    encode_error,
    encode_frame,
    encode_header,
    encode_version,
)

# ---------------------------------------------------------------------------
# helpers


class Recorder(FrameReceiver):
    """A FrameReceiver that records every hook call as an event tuple.

    C{on_frame}, if set, is called as C{on_frame(self, ftype, value)} after
    each frame is recorded, so a test can switch modes, pause or re-enter
    from inside the hook as a real protocol would.
    """

    def __init__(self, on_frame=None) -> None:
        self.events: list[tuple] = []
        self.on_frame = on_frame

    def frame_received(self, ftype: int, value: bytes) -> None:
        self.events.append(("frame", ftype, value))
        if self.on_frame is not None:
            self.on_frame(self, ftype, value)

    def raw_data_received(self, data: bytes) -> None:
        self.events.append(("raw", data))

    def bad_length(self, length: int) -> None:
        self.events.append(("bad_length", length))

    def raw_finished(self) -> None:
        self.events.append(("raw_finished",))


def connected(on_frame=None) -> tuple[Recorder, StringTransport]:
    proto = Recorder(on_frame)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def merged(events: list[tuple]) -> list[tuple]:
    """Join consecutive raw events: how raw bytes are chunked depends on the
    reads, but their order and content must not."""
    out: list[tuple] = []
    for ev in events:
        if ev[0] == "raw" and out and out[-1][0] == "raw":
            out[-1] = ("raw", out[-1][1] + ev[1])
        else:
            out.append(ev)
    return [ev for ev in out if ev != ("raw", b"")]


def feed_chunks(proto: FrameReceiver, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        proto.dataReceived(data[i : i + size])


def length_prefix(n: int) -> bytes:
    return struct.pack("!I", n)


# A few frames of different shapes: empty value, small, binary with every
# byte value, and type bytes the parser must not validate.
FRAMES: list[tuple[int, bytes]] = [
    (FrameType.HELLO, encode_version(1)),
    (FrameType.SEALED_ACCEPT, b""),
    (FrameType.CHANNEL, b"123456789"),
    (0x00, bytes(range(256))),
    (FrameType.ERROR, encode_error(ErrorCode.TIMEOUT, "timed out")),
    (0xFF, b"\x00\x00\x00\x00"),
]
STREAM = b"".join(encode_frame(t, v) for t, v in FRAMES)
EXPECTED = [("frame", int(t), v) for t, v in FRAMES]


def raw_after_header(proto: Recorder, ftype: int, value: bytes) -> None:
    """Hook: a HEADER frame's value is the count of raw bytes that follow."""
    if ftype == FrameType.SEALED_HEADER:
        proto.set_raw_mode(int(value))


# Frame, 6 raw bytes that look like a bad length prefix, then more frames.
RAW_BODY = b"\x00\x00\x00\x00\xff\x07"
RAW_STREAM = (
    encode_frame(FrameType.SEALED_ACCEPT, b"a")
    + encode_frame(FrameType.SEALED_HEADER, str(len(RAW_BODY)).encode())
    + RAW_BODY
    + encode_frame(FrameType.SEALED_ACK, b"after")
    + encode_frame(FrameType.SEALED_ACK, b"again")
)
RAW_EXPECTED = [
    ("frame", FrameType.SEALED_ACCEPT, b"a"),
    ("frame", FrameType.SEALED_HEADER, b"6"),
    ("raw", RAW_BODY),
    ("raw_finished",),
    ("frame", FrameType.SEALED_ACK, b"after"),
    ("frame", FrameType.SEALED_ACK, b"again"),
]


# ---------------------------------------------------------------------------
# encode_frame


def test_encode_frame_layout():
    """A frame is a 4-byte big-endian length covering type and value, the type byte, then the value."""
    assert encode_frame(0x05, b"abc") == b"\x00\x00\x00\x04\x05abc"


def test_hello_example_from_spec():
    """HELLO for version 1 is the 7 bytes 00 00 00 03 01 00 01 (docs/protocol.rst section 2)."""
    assert encode_frame(FrameType.HELLO, encode_version(1)) == bytes.fromhex("00000003010001")


def test_encode_frame_empty_value():
    """A frame with no value still carries its type, so its length is 1."""
    assert encode_frame(FrameType.SEALED_ACCEPT) == b"\x00\x00\x00\x01\x21"


def test_encode_frame_largest_allowed():
    """The largest value a peer accepts (MAX_FRAME minus the type byte) can be sent."""
    frame = encode_frame(FrameType.SEALED_HEADER, b"x" * (MAX_FRAME - 1))
    assert frame[:4] == length_prefix(MAX_FRAME)
    assert len(frame) == 4 + MAX_FRAME


def test_encode_frame_too_long():
    """Asking to send a frame the peer would refuse raises FrameTooLong, a ValueError."""
    with pytest.raises(FrameTooLong):
        encode_frame(FrameType.SEALED_HEADER, b"x" * MAX_FRAME)
    with pytest.raises(ValueError):
        encode_frame(FrameType.SEALED_HEADER, b"x" * (10 * MAX_FRAME))


def test_largest_frame_is_received():
    """The largest frame we can send is accepted by a receiver, not refused as too long."""
    proto, _ = connected()
    value = bytes(range(256)) * ((MAX_FRAME - 1) // 256) + b"z" * ((MAX_FRAME - 1) % 256)
    proto.dataReceived(encode_frame(FrameType.SEALED_HEADER, value))
    assert proto.events == [("frame", FrameType.SEALED_HEADER, value)]


def test_send_frame_writes_encoded_frame():
    """send_frame writes exactly the encoded frame to the transport."""
    proto, transport = connected()
    proto.send_frame(FrameType.CLAIM, b"42")
    proto.send_frame(FrameType.SEALED_ACK)
    assert transport.value() == encode_frame(FrameType.CLAIM, b"42") + encode_frame(FrameType.SEALED_ACK)


# ---------------------------------------------------------------------------
# version


@pytest.mark.parametrize("version", [0, 1, 2, 0x1234, 0xFFFF])
def test_version_round_trip(version):
    """A version sent in HELLO reads back as the same number."""
    assert decode_version(encode_version(version)) == version


def test_version_encoding_is_two_bytes_big_endian():
    """A version is a 16-bit big-endian number on the wire."""
    assert encode_version(0x0102) == b"\x01\x02"


def test_version_ignores_extra_bytes():
    """A later version may append fields; an older peer reads the version and ignores the rest."""
    assert decode_version(b"\x00\x03extra fields") == 3


@pytest.mark.parametrize("value", [b"", b"\x01"])
def test_version_too_short(value):
    """A version frame shorter than two bytes is a protocol error."""
    with pytest.raises(MalformedFrame):
        decode_version(value)


# ---------------------------------------------------------------------------
# error


def test_error_round_trip():
    """An ERROR frame carries its code and message text unchanged."""
    code, text = decode_error(encode_error(ErrorCode.UNKNOWN_CODE, "no such code"))
    assert code == ErrorCode.UNKNOWN_CODE
    assert text == "no such code"


def test_error_round_trip_non_ascii():
    """Non-ASCII message text survives the round trip."""
    assert decode_error(encode_error(ErrorCode.BAD_NAME, "fichier « été » refusé")) == (
        ErrorCode.BAD_NAME,
        "fichier « été » refusé",
    )


def test_error_empty_message():
    """An ERROR frame may carry a code with no text."""
    assert encode_error(ErrorCode.TIMEOUT, "") == b"\x00\x09"
    assert decode_error(b"\x00\x09") == (ErrorCode.TIMEOUT, "")


def test_error_unknown_code_passes_through():
    """A code this version does not know is still reported as a number, not refused."""
    assert decode_error(b"\xff\xffhello") == (0xFFFF, "hello")


@pytest.mark.parametrize("value", [b"", b"\x00"])
def test_error_too_short(value):
    """An ERROR frame without a full 2-byte code is a protocol error."""
    with pytest.raises(MalformedFrame):
        decode_error(value)


def test_error_encode_truncates_long_message():
    """A message longer than MAX_ERROR_TEXT is cut so the frame stays small."""
    value = encode_error(ErrorCode.PROTOCOL_ERROR, "x" * (MAX_ERROR_TEXT * 5))
    assert len(value) == 2 + MAX_ERROR_TEXT
    assert decode_error(value) == (ErrorCode.PROTOCOL_ERROR, "x" * MAX_ERROR_TEXT)


def test_error_message_at_limit_kept_whole():
    """A message of exactly MAX_ERROR_TEXT bytes is sent whole."""
    message = "y" * MAX_ERROR_TEXT
    assert decode_error(encode_error(ErrorCode.PEER_GONE, message))[1] == message


def test_error_decode_truncates_hostile_long_text():
    """A peer's over-long error text is cut to MAX_ERROR_TEXT before anyone prints it."""
    value = b"\x00\x01" + b"A" * (MAX_ERROR_TEXT + 5000)
    code, text = decode_error(value)
    assert code == 1
    assert text == "A" * MAX_ERROR_TEXT


def test_error_truncation_cuts_bytes_and_reader_copes():
    """A long non-ASCII message is cut at 1000 bytes, even mid-character (as docs/protocol.rst 4.2 allows), and the reader shows U+FFFD for the broken tail."""
    # 1 ASCII byte then 2-byte characters: the 1000-byte cut falls mid-character.
    message = "a" + "é" * MAX_ERROR_TEXT
    value = encode_error(ErrorCode.PROTOCOL_ERROR, message)
    assert value[2:] == message.encode("utf-8")[:MAX_ERROR_TEXT]
    code, text = decode_error(value)
    assert code == ErrorCode.PROTOCOL_ERROR
    assert text == "a" + "é" * ((MAX_ERROR_TEXT - 1) // 2) + "\ufffd"


def test_error_decode_strips_control_characters():
    """Control characters in a peer's text (escape sequences, newlines, NUL) are replaced so they cannot rewrite the terminal."""
    value = b"\x00\x01" + "\x1b[2Jred\nline\r\x00\x07tab\tend".encode()
    code, text = decode_error(value)
    assert code == 1
    assert text == "?[2Jred?line???tab?end"
    assert all(ch.isprintable() for ch in text)


def test_error_decode_strips_bidi_override():
    """A right-to-left override in a peer's text is replaced, so it cannot disguise what is printed."""
    text = decode_error(b"\x00\x01" + "file\u202etxt.exe".encode())[1]
    assert "\u202e" not in text
    assert text == "file?txt.exe"


def test_error_decode_invalid_utf8():
    """Bytes that are not UTF-8 decode to replacement characters instead of failing."""
    code, text = decode_error(b"\x00\x02ok\xff\xfe!")
    assert code == 2
    assert text.startswith("ok") and text.endswith("!")
    assert "\ufffd" in text


# ---------------------------------------------------------------------------
# channel


@pytest.mark.parametrize("channel", [1, 7, 10, 42, 999, 123456789, 999999999])
def test_channel_round_trip(channel):
    """A channel number sent as ASCII digits reads back as the same number."""
    assert encode_channel(channel) == str(channel).encode("ascii")
    assert decode_channel(encode_channel(channel)) == channel


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"0",
        b"00",
        b"01",
        b"007",
        b"1234567890",
        b"9999999999",
        b"-1",
        b"+1",
        b" 1",
        b"1 ",
        b"1a",
        b"1.0",
        b"0x1",
        b"1_000",
        "\uff11".encode("utf-8"),  # fullwidth digit one
        "\u0661".encode("utf-8"),  # Arabic-Indic digit one
        "\u00b2".encode("utf-8"),  # superscript two
    ],
)
def test_channel_rejects_bad_values(value):
    """A channel must be 1 to 9 ASCII digits with no sign, space or leading zero."""
    with pytest.raises(MalformedFrame):
        decode_channel(value)


# ---------------------------------------------------------------------------
# header


@pytest.mark.parametrize(
    "name,size",
    [("report.pdf", 0), ("résumé ☃.txt", 12345), ("a", 2**40), ("", 1), ("stdin", None)],
)
def test_header_round_trip(name, size):
    """The file name and size (or unknown size) a sender announces read back unchanged (name checks happen elsewhere)."""
    assert decode_header(encode_header(name, size)) == Header(name, size, "file", ())


def test_tar_header_round_trip():
    """A folder transfer announces kind tar and its top-level entries."""
    header = decode_header(encode_header("2 items", 10240, "tar", ["a.txt", "photos"]))
    assert header == Header("2 items", 10240, "tar", ("a.txt", "photos"))


def test_header_reference_encoding():
    """The reference sender writes ASCII-only JSON with non-ASCII names as \\u escapes."""
    assert encode_header("caf\u00e9.txt", 5) == b'{"kind": "file", "name": "caf\\u00e9.txt", "size": 5}'


def test_header_raw_utf8_accepted():
    """A header with the name as raw UTF-8 (not escaped) is accepted too."""
    value = '{"kind": "file", "name": "café.txt", "size": 5}'.encode("utf-8")
    assert decode_header(value) == Header("café.txt", 5)


def test_header_duplicate_member_last_wins():
    """For a duplicated member in a header, the last one counts."""
    assert decode_header(b'{"kind": "file", "name": "a", "size": 1, "name": "b", "size": 2}') == Header("b", 2)


def test_header_ignores_unknown_fields():
    """Extra fields in a header are ignored so a later version can add some."""
    value = json.dumps({"kind": "file", "name": "x", "size": 3, "mtime": 5}).encode()
    assert decode_header(value) == Header("x", 3)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"kind": "file", "name": "x", "size": 1',
        b"[]",
        b'"x"',
        b"5",
        b"null",
        b"{}",
        b'{"name": "x", "size": 1}',
        b'{"kind": "zip", "name": "x", "size": 1}',
        b'{"kind": "file", "size": 1}',
        b'{"kind": "file", "name": "x"}',
        b'{"kind": "file", "name": 5, "size": 1}',
        b'{"kind": "file", "name": null, "size": 1}',
        b'{"kind": "file", "name": ["x"], "size": 1}',
        b'{"kind": "file", "name": "x", "size": "1"}',
        b'{"kind": "file", "name": "x", "size": -1}',
        b'{"kind": "file", "name": "x", "size": 1.5}',
        b'{"kind": "file", "name": "x", "size": 1.0}',
        b'{"kind": "file", "name": "x", "size": 1e3}',
        b'{"kind": "file", "name": "x", "size": -0.0}',
        b'\xef\xbb\xbf{"kind": "file", "name": "x", "size": 1}',
        b'{"kind": "file", "name": "x", "size": NaN}',
        b'{"kind": "file", "name": "x", "size": Infinity}',
        b'{"kind": "file", "name": "x", "size": true}',
        b'{"kind": "file", "name": "x", "size": false}',
        b'{"kind": "file", "name": "x", "size": 1, "entries": ["x"]}',
        b'{"kind": "tar", "name": "x", "size": 1}',
        b'{"kind": "tar", "name": "x", "size": 1, "entries": []}',
        b'{"kind": "tar", "name": "x", "size": 1, "entries": [5]}',
        b'{"kind": "tar", "name": "x", "size": 1, "entries": "x"}',
    ],
)
def test_header_rejects_bad_values(value):
    """A header must be a JSON object with a known kind, a string name, a size >= 0 or null, and entries only for tar."""
    with pytest.raises(MalformedFrame):
        decode_header(value)


# ---------------------------------------------------------------------------
# FrameReceiver: splitting


def test_frames_all_at_once():
    """Several frames arriving in one read are delivered in order."""
    proto, _ = connected()
    proto.dataReceived(STREAM)
    assert proto.events == EXPECTED
    assert proto._unprocessed == b""


def test_frames_byte_at_a_time():
    """Frames arriving one byte at a time are delivered exactly as if they came at once."""
    proto, _ = connected()
    feed_chunks(proto, STREAM, 1)
    assert proto.events == EXPECTED
    assert proto._unprocessed == b""


def test_frames_split_at_every_boundary():
    """However a stream of frames is split in two reads, the same frames are delivered."""
    for split in range(len(STREAM) + 1):
        proto, _ = connected()
        proto.dataReceived(STREAM[:split])
        proto.dataReceived(STREAM[split:])
        assert proto.events == EXPECTED, f"split at {split}"


@pytest.mark.parametrize("size", [2, 3, 4, 5, 7, 13, 64])
def test_frames_fixed_chunk_sizes(size):
    """Frames arriving in reads of any fixed size are delivered the same."""
    proto, _ = connected()
    feed_chunks(proto, STREAM, size)
    assert proto.events == EXPECTED


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_frames_arbitrary_splits(cuts):
    """However a stream of frames is split into many reads, the same frames are delivered."""
    proto, _ = connected()
    points = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(points, points[1:]):
        proto.dataReceived(STREAM[a:b])
    assert proto.events == EXPECTED


def test_partial_frame_delivers_nothing():
    """Until a frame is complete nothing is delivered; the last byte delivers it."""
    frame = encode_frame(FrameType.SEALED_HEADER, b"hello world")
    for cut in range(len(frame)):
        proto, _ = connected()
        proto.dataReceived(frame[:cut])
        assert proto.events == [], f"cut at {cut}"
        proto.dataReceived(frame[cut:])
        assert proto.events == [("frame", FrameType.SEALED_HEADER, b"hello world")]


def test_empty_read_delivers_nothing():
    """An empty read changes nothing."""
    proto, _ = connected()
    proto.dataReceived(b"")
    proto.dataReceived(STREAM[:3])
    proto.dataReceived(b"")
    assert proto.events == []
    proto.dataReceived(STREAM[3:])
    assert proto.events == EXPECTED


def test_type_byte_not_validated():
    """Every type byte, even unknown ones, reaches frame_received as an int for the protocol to judge."""
    proto, _ = connected()
    proto.dataReceived(b"".join(encode_frame(t, b"") for t in range(256)))
    assert proto.events == [("frame", t, b"") for t in range(256)]
    assert all(isinstance(ev[1], int) for ev in proto.events)


# ---------------------------------------------------------------------------
# FrameReceiver: bad lengths


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_bad_length_fires_on_prefix_alone(length):
    """A length of 0 or above MAX_FRAME is refused as soon as its 4 bytes arrive, before any payload."""
    proto, _ = connected()
    prefix = length_prefix(length)
    for byte in prefix[:3]:
        proto.dataReceived(bytes([byte]))
    assert proto.events == []
    proto.dataReceived(prefix[3:])
    assert proto.events == [("bad_length", length)]


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0x7FFFFFFF])
def test_bad_length_discards_all_further_input(length):
    """After a bad length nothing more is delivered, in the same read or later ones, and nothing is buffered."""
    proto, _ = connected()
    good = encode_frame(FrameType.HELLO, b"\x00\x01")
    proto.dataReceived(good + length_prefix(length) + good + b"x" * 100)
    assert proto.events == [("frame", FrameType.HELLO, b"\x00\x01"), ("bad_length", length)]
    assert proto._unprocessed == b""
    proto.dataReceived(good * 3)
    proto.dataReceived(length_prefix(0))
    assert proto.events == [("frame", FrameType.HELLO, b"\x00\x01"), ("bad_length", length)]
    assert proto._unprocessed == b""


def test_huge_length_prefix_does_not_buffer():
    """A 2 GiB length prefix does not make the receiver hold the bytes that follow."""
    proto, _ = connected()
    proto.dataReceived(length_prefix(0x7FFFFFFF) + b"\x01")
    for _ in range(100):
        proto.dataReceived(b"z" * 10_000)
    assert proto.events == [("bad_length", 0x7FFFFFFF)]
    assert proto._unprocessed == b""


def test_max_frame_length_is_exact_limit():
    """A length prefix of exactly MAX_FRAME waits for its payload; one more is refused."""
    proto, _ = connected()
    proto.dataReceived(length_prefix(MAX_FRAME) + b"\x13")
    assert proto.events == []
    proto2, _ = connected()
    proto2.dataReceived(length_prefix(MAX_FRAME + 1))
    assert proto2.events == [("bad_length", MAX_FRAME + 1)]


def test_max_frame_length_per_instance():
    """A protocol with a smaller max_frame_length refuses frames above it."""
    proto, _ = connected()
    proto.max_frame_length = 10
    proto.dataReceived(encode_frame(0x01, b"x" * 9))
    assert proto.events == [("frame", 1, b"x" * 9)]
    proto.dataReceived(length_prefix(11))
    assert proto.events[-1] == ("bad_length", 11)


def test_discard_input_stops_delivery():
    """Once a protocol decides to close, input already read and input to come are ignored."""

    def hook(proto, ftype, value):
        proto.discard_input()

    proto, _ = connected(hook)
    proto.dataReceived(STREAM)
    assert proto.events == EXPECTED[:1]
    proto.dataReceived(STREAM)
    assert proto.events == EXPECTED[:1]
    assert proto._unprocessed == b""


def test_discard_input_drops_buffered_partial_frame():
    """Discarding from outside a hook also frees a partial frame already buffered."""
    proto, _ = connected()
    proto.dataReceived(STREAM[:-1])
    assert proto._unprocessed != b""
    events = list(proto.events)
    proto.discard_input()
    assert proto._unprocessed == b""
    proto.dataReceived(STREAM[-1:])
    assert proto.events == events


# ---------------------------------------------------------------------------
# FrameReceiver: raw mode


def test_raw_mode_in_one_read():
    """set_raw_mode(n) inside frame_received sends the next n bytes of the same read raw, then framing resumes."""
    proto, _ = connected(raw_after_header)
    proto.dataReceived(RAW_STREAM)
    assert proto.events == RAW_EXPECTED


def test_raw_mode_byte_at_a_time():
    """Counted raw mode gives the same bytes and the same single raw_finished when fed one byte at a time."""
    proto, _ = connected(raw_after_header)
    feed_chunks(proto, RAW_STREAM, 1)
    assert merged(proto.events) == RAW_EXPECTED
    assert proto.events.count(("raw_finished",)) == 1
    raw_chunks = [ev for ev in proto.events if ev[0] == "raw"]
    assert all(len(ev[1]) == 1 for ev in raw_chunks)


def test_raw_mode_split_at_every_boundary():
    """However the stream around a raw run is split in two reads, the same frames and raw bytes arrive."""
    for split in range(len(RAW_STREAM) + 1):
        proto, _ = connected(raw_after_header)
        proto.dataReceived(RAW_STREAM[:split])
        proto.dataReceived(RAW_STREAM[split:])
        assert merged(proto.events) == RAW_EXPECTED, f"split at {split}"


def test_raw_mode_bytes_not_parsed_as_frames():
    """Raw bytes that look like a bad length prefix are delivered raw, never refused."""
    proto, _ = connected(raw_after_header)
    proto.dataReceived(RAW_STREAM)
    assert not any(ev[0] == "bad_length" for ev in proto.events)


def test_raw_mode_set_before_data():
    """set_raw_mode(n) called outside a hook sends the next n bytes raw, then frames."""
    proto, _ = connected()
    proto.set_raw_mode(3)
    proto.dataReceived(b"abc" + encode_frame(0x01, b"x"))
    assert proto.events == [("raw", b"abc"), ("raw_finished",), ("frame", 1, b"x")]


def test_raw_mode_forever():
    """set_raw_mode() with no count sends everything after it raw, in this read and every later one."""

    def hook(proto, ftype, value):
        proto.set_raw_mode()

    proto, _ = connected(hook)
    tail = encode_frame(0x02, b"looks like a frame") + length_prefix(0)
    proto.dataReceived(encode_frame(0x01, b"go") + tail)
    proto.dataReceived(b"more")
    proto.dataReceived(length_prefix(0x7FFFFFFF))
    assert proto.events[0] == ("frame", 1, b"go")
    assert merged(proto.events[1:]) == [("raw", tail + b"more" + length_prefix(0x7FFFFFFF))]
    assert ("raw_finished",) not in proto.events
    assert proto._unprocessed == b""


def test_raw_mode_forever_byte_at_a_time():
    """Raw-forever mode delivers the same bytes when fed one byte at a time."""

    def hook(proto, ftype, value):
        proto.set_raw_mode()

    stream = encode_frame(0x01, b"go") + STREAM
    proto, _ = connected(hook)
    feed_chunks(proto, stream, 1)
    assert merged(proto.events) == [("frame", 1, b"go"), ("raw", STREAM)]


def test_raw_mode_zero_length():
    """set_raw_mode(0) delivers no raw bytes; framing goes straight on."""

    def hook(proto, ftype, value):
        if ftype == 0x01:
            proto.set_raw_mode(0)

    proto, _ = connected(hook)
    proto.dataReceived(encode_frame(0x01) + encode_frame(0x02))
    assert proto.events == [("frame", 1, b""), ("frame", 2, b"")]


def test_raw_finished_can_start_another_raw_run():
    """A raw_finished hook may start another counted raw run on the same read."""

    class Chained(Recorder):
        runs = 0

        def raw_finished(self):
            super().raw_finished()
            self.runs += 1
            if self.runs == 1:
                self.set_raw_mode(2)

    proto = Chained()
    proto.makeConnection(StringTransport())
    proto.set_raw_mode(3)
    proto.dataReceived(b"abcde" + encode_frame(0x01, b"z"))
    assert proto.events == [
        ("raw", b"abc"),
        ("raw_finished",),
        ("raw", b"de"),
        ("raw_finished",),
        ("frame", 1, b"z"),
    ]


def test_raw_finished_default_does_nothing():
    """A protocol that does not override raw_finished simply resumes framing."""

    class NoFinish(FrameReceiver):
        def __init__(self):
            self.events = []

        def frame_received(self, ftype, value):
            self.events.append(("frame", ftype, value))

        def raw_data_received(self, data):
            self.events.append(("raw", data))

    proto = NoFinish()
    proto.makeConnection(StringTransport())
    proto.set_raw_mode(2)
    proto.dataReceived(b"xy" + encode_frame(0x03, b"v"))
    assert proto.events == [("raw", b"xy"), ("frame", 3, b"v")]


# ---------------------------------------------------------------------------
# FrameReceiver: pausing


def test_pause_from_frame_hook_holds_buffered_frames():
    """Pausing inside frame_received stops delivery of frames already read until resumeProducing."""

    def hook(proto, ftype, value):
        if len(proto.events) == 2:
            proto.pauseProducing()

    proto, transport = connected(hook)
    proto.dataReceived(STREAM)
    assert proto.events == EXPECTED[:2]
    assert transport.producerState == "paused"
    assert proto.paused

    proto.dataReceived(STREAM)  # more arrives while paused: still held
    assert proto.events == EXPECTED[:2]

    proto.on_frame = None
    proto.resumeProducing()
    assert transport.producerState == "producing"
    assert not proto.paused
    assert proto.events == EXPECTED + EXPECTED
    assert proto._unprocessed == b""


def test_pause_before_data_holds_everything():
    """A paused protocol delivers nothing from new reads; resuming delivers it all in order."""
    proto, transport = connected()
    proto.pauseProducing()
    assert transport.producerState == "paused"
    feed_chunks(proto, STREAM, 5)
    assert proto.events == []
    proto.resumeProducing()
    assert proto.events == EXPECTED
    assert transport.producerState == "producing"


def test_pause_holds_raw_bytes():
    """Pausing also holds back raw bytes already read."""

    def hook(proto, ftype, value):
        if ftype == FrameType.SEALED_HEADER:
            proto.set_raw_mode(len(RAW_BODY))
            proto.pauseProducing()

    proto, _ = connected(hook)
    proto.dataReceived(RAW_STREAM)
    assert proto.events == RAW_EXPECTED[:2]
    proto.resumeProducing()
    assert proto.events == RAW_EXPECTED


def test_pause_resume_every_frame():
    """Pausing after every frame and resuming from outside delivers each frame exactly once, in order."""

    def hook(proto, ftype, value):
        proto.pauseProducing()

    proto, _ = connected(hook)
    proto.dataReceived(STREAM)
    for n in range(1, len(EXPECTED) + 1):
        assert proto.events == EXPECTED[:n]
        proto.resumeProducing()
    assert proto.events == EXPECTED
    proto.resumeProducing()
    assert proto.events == EXPECTED


def test_resume_inside_hook_does_not_duplicate():
    """resumeProducing called from inside a hook neither repeats nor loses frames."""

    def hook(proto, ftype, value):
        proto.resumeProducing()

    proto, _ = connected(hook)
    feed_chunks(proto, STREAM, 7)
    assert proto.events == EXPECTED


def test_stop_producing():
    """stopProducing stops delivery and stops the transport."""

    def hook(proto, ftype, value):
        proto.stopProducing()

    proto, transport = connected(hook)
    proto.dataReceived(STREAM)
    assert proto.events == EXPECTED[:1]
    assert transport.producerState == "stopped"


# ---------------------------------------------------------------------------
# FrameReceiver: re-entrancy


@pytest.mark.parametrize("first", range(0, len(STREAM) + 1, 7))
@pytest.mark.parametrize("chunk", [1, 5, 50, len(STREAM)])
def test_reentrant_data_received_keeps_order(first, chunk):
    """Bytes fed back in from inside frame_received are neither lost nor reordered."""
    pending = [STREAM[i : i + chunk] for i in range(first, len(STREAM), chunk)]

    def hook(proto, ftype, value):
        if pending:
            proto.dataReceived(pending.pop(0))

    proto, _ = connected(hook)
    proto.dataReceived(STREAM[:first])
    # If the first read held no complete frame, feed the rest from outside.
    while pending and not proto.events:
        proto.dataReceived(pending.pop(0))
    while pending:
        proto.dataReceived(pending.pop(0))
    assert proto.events == EXPECTED


def test_reentrant_data_received_with_raw_mode():
    """Bytes fed back in while switching to raw mode still go raw first, then frames, in order."""
    rest = RAW_STREAM[len(encode_frame(FrameType.SEALED_ACCEPT, b"a")) :]

    def hook(proto, ftype, value):
        if ftype == FrameType.SEALED_ACCEPT:
            proto.dataReceived(rest)
        raw_after_header(proto, ftype, value)

    proto, _ = connected(hook)
    proto.dataReceived(encode_frame(FrameType.SEALED_ACCEPT, b"a"))
    assert merged(proto.events) == RAW_EXPECTED


@pytest.mark.parametrize("cut", [len(encode_frame(*FRAMES[0])), 12, 20, 40])
def test_reentrant_data_while_paused_kept(cut):
    """Bytes fed back in by a hook that also pauses are kept behind the bytes already read, and delivered in order after resuming."""

    def hook(proto, ftype, value):
        if ftype == FrameType.HELLO:
            proto.pauseProducing()
            proto.dataReceived(STREAM[cut:])

    proto, _ = connected(hook)
    proto.dataReceived(STREAM[:cut])
    assert proto.events == EXPECTED[:1]
    proto.on_frame = None
    proto.resumeProducing()
    assert proto.events == EXPECTED


# ---------------------------------------------------------------------------
# FrameReceiver: memory bound


@pytest.mark.parametrize("read_size", [1000, 4096, 65536, 200_000])
def test_buffer_bounded_by_one_frame_and_one_read(read_size):
    """The receiver never holds more than one maximum frame plus one read of unparsed bytes."""
    big = b"B" * (MAX_FRAME - 1)
    frames = [(0x01, big), (0x02, b"s"), (0x03, big), (0x04, b""), (0x05, big[:1000]), (0x06, big)]
    stream = b"".join(encode_frame(t, v) for t, v in frames)
    limit = 4 + MAX_FRAME + read_size
    peak = 0

    def hook(proto, ftype, value):
        nonlocal peak
        peak = max(peak, len(proto._unprocessed))

    proto, _ = connected(hook)
    for i in range(0, len(stream), read_size):
        proto.dataReceived(stream[i : i + read_size])
        peak = max(peak, len(proto._unprocessed))
        # What is left over is at most one incomplete frame.
        assert len(proto._unprocessed) < 4 + MAX_FRAME
    assert peak <= limit
    assert proto.events == [("frame", t, v) for t, v in frames]
    assert proto._unprocessed == b""


def test_raw_mode_from_outside_delivers_buffered_partial_frame_at_once():
    """Switching to raw mode outside a hook (as pairing does to a waiting sender) delivers bytes already buffered at once, even a partial frame."""
    proto, _ = connected()
    proto.dataReceived(encode_frame(0x10, b"x" * 100)[:50])  # half a frame: parser waits
    assert proto.events == []
    proto.set_raw_mode()
    assert merged(proto.events) == [("raw", encode_frame(0x10, b"x" * 100)[:50])]
    proto.dataReceived(b"more")
    assert merged(proto.events)[-1][1].endswith(b"more")


def test_large_frame_in_many_reads_is_joined_once():
    """A frame arriving in many small reads is delivered whole, once its last byte is in, and not before."""
    proto, _ = connected()
    proto.max_frame_length = 300_000
    frame = struct.pack("!IB", 200_001, 0x22) + b"y" * 200_000
    body, last = frame[:-1], frame[-1:]
    for n, i in enumerate(range(0, len(body), 1000), start=1):
        proto.dataReceived(body[i : i + 1000])
        assert proto.events == []
        assert len(proto._chunks) == n  # appended, not re-joined
    proto.dataReceived(last)
    assert proto.events == [("frame", 0x22, b"y" * 200_000)]
