"""
Frames on the wire, and the framing base protocol shared by relay and clients.

Every control message is a frame: a 4-byte big-endian length, a 1-byte type,
then the value; the length covers type and value. docs/protocol.rst is the
normative description; this module is its only implementation. Nothing here
knows about relays, codes or files.

The base protocol is modelled on L{twisted.protocols.basic.IntNStringReceiver}
(one buffer and an offset, the length checked before any payload is waited
for, a C{paused} flag honoured by the parse loop) and borrows
L{twisted.protocols.basic.LineReceiver}'s raw mode, because after pairing the
relay forwards raw bytes and the receiver reads a raw file body.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from twisted_relay.errors import ErrorCode

#: Version of the client <-> relay conversation, sent in HELLO.
RELAY_PROTOCOL_VERSION = 1

#: Version of the sender <-> receiver conversation, sent in PEER_HELLO.
#: 1: words proved by HMAC, file in clear. 2: SPAKE2 and sealed records.
#: 3: the header says what kind of thing comes (a file, or a tar stream of
#: folders and files) and may leave the size unknown (a pipe).
PEER_PROTOCOL_VERSION = 3

#: What a header may announce.
KINDS = ("file", "tar")

#: Largest length prefix accepted (type byte plus value). Anything larger is
#: refused as soon as the 4 prefix bytes are in, before any payload is read.
MAX_FRAME = 64 * 1024

#: Longest message text we put in an ERROR frame; peers' texts are cut too.
MAX_ERROR_TEXT = 1000

_LENGTH = struct.Struct("!I")
_HEADER = struct.Struct("!IB")
_U16 = struct.Struct("!H")


class FrameType(IntEnum):
    """One byte saying what a frame's value means (see docs/protocol.rst)."""

    # client <-> relay
    HELLO = 0x01
    WELCOME = 0x02
    REGISTER = 0x03
    CHANNEL = 0x04
    CLAIM = 0x05
    PAIRED = 0x06
    ERROR = 0x07
    # sender <-> receiver, carried opaquely by the relay after PAIRED.
    # 0x11-0x15 were version 1's clear-text conversation; never reuse them.
    PEER_HELLO = 0x10
    PAKE = 0x16
    CONFIRM = 0x17
    # sealed records (twisted_relay.records), once keys are confirmed
    SEALED_HEADER = 0x20
    SEALED_ACCEPT = 0x21
    SEALED_DATA = 0x22
    SEALED_END = 0x23
    SEALED_ACK = 0x24
    SEALED_ERROR = 0x25


#: Frame types whose value is a sealed record.
SEALED_TYPES = frozenset(t for t in FrameType if t >= FrameType.SEALED_HEADER)


class FrameTooLong(ValueError):
    """Raised when asked to send a frame the peer would refuse."""


class MalformedFrame(ValueError):
    """A frame whose value does not decode; the peer broke the protocol."""


def encode_frame(ftype: int, value: bytes = b"") -> bytes:
    """Frame one message; refuse anything the peer would reject."""
    if len(value) + 1 > MAX_FRAME:
        raise FrameTooLong(len(value) + 1)
    return _HEADER.pack(len(value) + 1, ftype) + value


def encode_version(version: int) -> bytes:
    return _U16.pack(version)


def decode_version(value: bytes) -> int:
    """The version in a HELLO, WELCOME or PEER_HELLO; extra bytes are allowed
    so a later version may append fields an older peer ignores."""
    if len(value) < _U16.size:
        raise MalformedFrame("version frame too short")
    return _U16.unpack_from(value)[0]


def encode_error(code: ErrorCode, message: str) -> bytes:
    text = message.encode("utf-8")[:MAX_ERROR_TEXT]
    return _U16.pack(code) + text


def decode_error(value: bytes) -> tuple[int, str]:
    """An ERROR frame's code and text. The text came from a possibly hostile
    peer: it is cut short and stripped of control characters before anyone
    prints it."""
    if len(value) < _U16.size:
        raise MalformedFrame("error frame too short")
    (code,) = _U16.unpack_from(value)
    text = value[_U16.size : _U16.size + MAX_ERROR_TEXT].decode("utf-8", "replace")
    return code, "".join(ch if ch.isprintable() else "?" for ch in text)


def encode_channel(channel: int) -> bytes:
    return str(channel).encode("ascii")


def decode_channel(value: bytes) -> int:
    """A channel number: 1 to 9 ASCII digits, no sign, no leading zero."""
    if not (1 <= len(value) <= 9) or not value.isdigit() or value[:1] == b"0":
        raise MalformedFrame("bad channel")
    return int(value)


def encode_header(name: str, size: int | None, kind: str = "file", entries: list[str] | None = None) -> bytes:
    header: dict[str, object] = {"kind": kind, "name": name, "size": size}
    if kind == "tar":
        header["entries"] = list(entries or [])
    return json.dumps(header).encode("utf-8")


@dataclass(frozen=True)
class Header:
    """What a sender announces. Names are not yet safe to use as paths:
    see L{twisted_relay.filenames.check_name}."""

    name: str
    size: int | None
    kind: str = "file"
    entries: tuple[str, ...] = ()


def decode_header(value: bytes) -> Header:
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedFrame(f"header is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedFrame("header is not an object")
    name, size, kind = obj.get("name"), obj.get("size"), obj.get("kind")
    if kind not in KINDS:
        raise MalformedFrame(f"header kind must be one of {KINDS}")
    if not isinstance(name, str) or "size" not in obj or not (size is None or (type(size) is int and size >= 0)):
        raise MalformedFrame("header needs a string name and a size >= 0 or null")
    entries = obj.get("entries", [])
    if kind == "tar":
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            raise MalformedFrame("a tar header needs a non-empty list of entry names")
    elif "entries" in obj:
        raise MalformedFrame("only a tar header lists entries")
    return Header(name, size, kind, tuple(entries))


@implementer(IPushProducer)
class FrameReceiver(Protocol):
    """
    Parses frames and hands each to L{frame_received}; can switch to raw mode
    for a number of bytes (or for good), delivering them to
    L{raw_data_received}. A mode switch made inside a hook applies to the
    rest of the bytes already read.

    Being an L{IPushProducer} itself lets a consumer pause the protocol: the
    parse loop stops delivering frames already buffered, not only the socket.

    @ivar paused: no hook is called while set.
    """

    max_frame_length = MAX_FRAME
    #: Hand frame values to L{frame_received} as memoryviews of the read
    #: buffer instead of copies: for large frames that are consumed at once.
    frame_values_as_views = False
    paused = False
    _busy_receiving = False
    _discarding = False
    _raw_remaining = 0
    _raw_forever = False
    #: Bytes that must be buffered before parsing can make progress; below
    #: it, a read is only appended, so a large frame arriving in many reads
    #: is joined once, not re-copied on every read.
    _need = 0
    _buffered = 0

    _chunks: list[bytes] = []  # replaced per connection in makeConnection

    def makeConnection(self, transport) -> None:  # type: ignore[no-untyped-def]
        # Per instance without asking subclasses to call our __init__.
        self._chunks = []
        super().makeConnection(transport)

    @property
    def _unprocessed(self) -> bytes:
        """Everything received and not yet delivered (for tests and limits)."""
        return b"".join(self._chunks)

    def frame_received(self, ftype: int, value: bytes) -> None:
        """Called with each complete frame, type not yet validated."""
        raise NotImplementedError

    def raw_data_received(self, data: bytes) -> None:
        """Called with bytes that arrive while in raw mode."""
        raise NotImplementedError

    def bad_length(self, length: int) -> None:
        """Called, once, with a length prefix of 0 or above
        L{max_frame_length}; input is discarded from then on."""
        raise NotImplementedError

    def raw_finished(self) -> None:
        """Called when a counted raw run (L{set_raw_mode} with a count) is
        complete and framing resumes; the default does nothing."""

    def set_raw_mode(self, count: int | None = None) -> None:
        """Deliver the next C{count} bytes (all bytes, if C{None}) raw,
        starting with any already buffered: at once if called from outside
        a hook, or as the running parse loop goes on if from inside one."""
        if count is None:
            self._raw_forever = True
        else:
            self._raw_remaining = count
        self._need = 0
        if self._chunks and not self._busy_receiving:
            self.dataReceived(b"")

    def discard_input(self) -> None:
        """Ignore everything from now on: the connection is being closed."""
        self._discarding = True
        self._chunks = []
        self._buffered = 0

    def send_frame(self, ftype: int, value: bytes = b"") -> None:
        self.transport.write(encode_frame(ftype, value))

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if self._busy_receiving or self.paused or self._buffered < self._need:
            # Re-entrant calls leave their bytes to the loop running below us.
            return
        self._busy_receiving = True
        try:
            while self._chunks and not (self.paused or self._discarding):
                chunks, self._chunks = self._chunks, []
                buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._buffered -= len(buf)
                offset = self._parse(buf)
                if offset < len(buf) and not self._discarding:
                    self._chunks.insert(0, buf[offset:] if offset else buf)
                    self._buffered += len(buf) - offset
                if self._buffered < self._need:
                    break
        finally:
            self._busy_receiving = False

    def _parse(self, buf: bytes) -> int:
        """Deliver what C{buf} holds; return how far it got, having set
        L{_need} to what must be buffered before the rest can go on."""
        offset = 0
        end = len(buf)
        self._need = 0
        while offset < end and not (self.paused or self._discarding):
            if self._raw_forever or self._raw_remaining:
                if self._raw_forever:
                    take = end - offset
                else:
                    take = min(end - offset, self._raw_remaining)
                    self._raw_remaining -= take
                chunk = buf if (offset == 0 and take == end) else buf[offset : offset + take]
                offset += take
                self.raw_data_received(chunk)
                if not (self._raw_forever or self._raw_remaining or self._discarding):
                    self.raw_finished()
                continue
            if end - offset < _LENGTH.size:
                self._need = _LENGTH.size
                break
            (length,) = _LENGTH.unpack_from(buf, offset)
            if length == 0 or length > self.max_frame_length:
                self.discard_input()
                self.bad_length(length)
                return end
            if end - offset < _LENGTH.size + length:
                self._need = _LENGTH.size + length
                break
            ftype = buf[offset + _LENGTH.size]
            if self.frame_values_as_views:
                value = memoryview(buf)[offset + _HEADER.size : offset + _LENGTH.size + length]
            else:
                value = buf[offset + _HEADER.size : offset + _LENGTH.size + length]
            offset += _LENGTH.size + length
            self.frame_received(ftype, value)
        return offset

    # IPushProducer: pausing holds back frames already buffered, too.

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        self.paused = True
        self.transport.stopProducing()
