"""
Sender and receiver against a real relay factory, all in memory on a fake
clock: the peer conversation, every refusal, and every way a side can fail.
"""

from __future__ import annotations

import errno
import io
import os

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_relay.codes import Code, wordlist
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed
from twisted_relay.incoming import IncomingFile
from twisted_relay.receiver import ReceiverProtocol
from twisted_relay.sender import SenderProtocol
from twisted_relay.sources import BURST, FileSource, FileStreamer, SourceChanged
from twisted_relay.wire import FrameType, encode_frame, encode_version

from tests.helpers import MemoryNetwork, assert_no_result, failure_result_of, parse_frames, success_result_of


class Transfer:
    """One sender and one receiver wired through an in-memory relay."""

    def __init__(self, tmp_path, data: bytes = b"hello corgis", name: str = "corgis.mp4", **relay_args) -> None:
        self.net = MemoryNetwork(**relay_args)
        self.data = data
        self.folder = str(tmp_path / "out")
        os.makedirs(self.folder, exist_ok=True)
        self.codes: list[Code] = []
        self.sender = SenderProtocol(self.net.clock, FileSource(name, len(data), io.BytesIO(data)), self.codes.append)
        self.sender_pump = self.net.connect(self.sender)
        self.net.flush()

    def receive(self, code: Code | None = None, overwrite: bool = False) -> ReceiverProtocol:
        self.receiver = ReceiverProtocol(self.net.clock, code or self.codes[0], self.folder, overwrite=overwrite)
        self.receiver_pump = self.net.connect(self.receiver)
        self.net.flush()
        return self.receiver

    def files(self) -> list[str]:
        return sorted(os.listdir(self.folder))


def wrong_words(code: Code) -> Code:
    other = tuple(w for w in wordlist() if w not in code.words)[:2]
    return Code(code.channel, other)


def exit_of(d) -> ExitCode:
    return failure_result_of(d, TransferFailed).value.exit_code


def test_transfer_in_memory(tmp_path) -> None:
    """A file crosses the relay intact; both sides succeed; the code was announced once."""
    data = os.urandom(3 * 1024 * 1024 + 7)
    t = Transfer(tmp_path, data)
    assert len(t.codes) == 1 and len(t.codes[0].words) == 2
    t.receive()
    success_result_of(t.sender.done)
    success_result_of(t.receiver.done)
    assert t.files() == ["corgis.mp4"]
    with open(os.path.join(t.folder, "corgis.mp4"), "rb") as f:
        assert f.read() == data
    assert t.net.clock.getDelayedCalls() == []


def test_empty_file(tmp_path) -> None:
    """A 0-byte file is stored and acknowledged."""
    t = Transfer(tmp_path, b"")
    t.receive()
    success_result_of(t.sender.done)
    success_result_of(t.receiver.done)
    assert os.path.getsize(os.path.join(t.folder, "corgis.mp4")) == 0


def test_sender_waits_for_receiver(tmp_path) -> None:
    """Before a receiver comes, the sender has its code and no result."""
    t = Transfer(tmp_path)
    t.net.clock.advance(1000)
    assert_no_result(t.sender.done)


def test_wrong_code_fails_both_and_sends_nothing(tmp_path) -> None:
    """Wrong words: both sides fail with 'wrong code'; no sealed record (header or data) is sent."""
    t = Transfer(tmp_path, b"SECRET-MARKER")
    sent: list[int] = []
    original = t.sender.send_record
    t.sender.send_record = lambda ftype, value: (sent.append(ftype), original(ftype, value))[1]  # type: ignore[method-assign]
    t.receive(wrong_words(t.codes[0]))
    assert exit_of(t.sender.done) is ExitCode.WRONG_CODE
    assert exit_of(t.receiver.done) is ExitCode.WRONG_CODE
    assert t.files() == []
    assert sent == []
    assert t.sender.outgoing._readable.closed


def test_wrong_code_never_sends_header(tmp_path) -> None:
    """The header (file name and size) goes out only after a valid proof."""
    t = Transfer(tmp_path, b"x", name="distinctive-name.txt")
    t.receiver = ReceiverProtocol(t.net.clock, wrong_words(t.codes[0]), t.folder)
    seen: list[bytes] = []
    original = t.receiver.dataReceived
    t.receiver.dataReceived = lambda data: (seen.append(data), original(data))[1]  # type: ignore[method-assign]
    t.net.connect(t.receiver)
    t.net.flush()
    assert b"distinctive-name" not in b"".join(seen)


def test_unknown_code(tmp_path) -> None:
    """A channel nobody holds gives 'unknown code' without touching the sender."""
    t = Transfer(tmp_path)
    code = t.codes[0]
    r = t.receive(Code(code.channel + 1, code.words))
    assert exit_of(r.done) is ExitCode.UNKNOWN_CODE
    assert_no_result(t.sender.done)


def test_existing_file_not_overwritten(tmp_path) -> None:
    """An existing file is refused and untouched; the sender is told, without our path."""
    t = Transfer(tmp_path, b"new")
    existing = os.path.join(t.folder, "corgis.mp4")
    with open(existing, "wb") as f:
        f.write(b"old")
    t.receive()
    assert exit_of(t.receiver.done) is ExitCode.FILE_REFUSED
    failure = failure_result_of(t.sender.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.FILE_REFUSED
    assert t.folder not in failure.value.message
    with open(existing, "rb") as f:
        assert f.read() == b"old"
    assert t.files() == ["corgis.mp4"]


def test_overwrite_replaces(tmp_path) -> None:
    """With overwrite allowed, the existing file is replaced."""
    t = Transfer(tmp_path, b"new")
    with open(os.path.join(t.folder, "corgis.mp4"), "wb") as f:
        f.write(b"old")
    t.receive(overwrite=True)
    success_result_of(t.sender.done)
    with open(os.path.join(t.folder, "corgis.mp4"), "rb") as f:
        assert f.read() == b"new"


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "..", "", "a\x00b", "bell\x07"])
def test_hostile_name_refused(tmp_path, name: str) -> None:
    """A name that could escape the folder or fool a terminal is refused on both sides."""
    t = Transfer(tmp_path, b"x", name=name)
    t.receive()
    assert exit_of(t.receiver.done) is ExitCode.FILE_REFUSED
    assert exit_of(t.sender.done) is ExitCode.FILE_REFUSED
    assert t.files() == []
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_disk_full(tmp_path, monkeypatch) -> None:
    """A full disk fails the receiver, tells the sender, and leaves no temp file."""

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(IncomingFile, "write", full)
    t = Transfer(tmp_path, b"x" * 1000)
    t.receive()
    assert exit_of(t.receiver.done) is ExitCode.DISK_FULL
    failure = failure_result_of(t.sender.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.DISK_FULL
    assert "disk is full" in failure.value.message
    assert t.files() == []


def test_sender_vanishes_mid_body(tmp_path) -> None:
    """If the sender goes away mid-file, the receiver fails and keeps nothing."""
    size = 20 * 1024 * 1024  # several bursts of the streamer
    t = Transfer(tmp_path, b"x" * size)
    r = ReceiverProtocol(t.net.clock, t.codes[0], t.folder)
    pump = t.net.connect(r)
    # Let the handshake and part of the body through, then cut the sender.
    for _ in range(50):
        t.sender_pump.pump(advanceClock=False)
        pump.pump(advanceClock=False)
        if r.incoming is not None and r.incoming.written:
            break
    assert r.incoming is not None and 0 < r.incoming.written < size
    t.sender.transport.abortConnection()
    t.net.flush()
    assert exit_of(r.done) is ExitCode.PEER_GONE
    assert t.files() == []


def test_receiver_vanishes(tmp_path) -> None:
    """If the receiver drops before the ACK, the sender reports the peer gone."""
    t = Transfer(tmp_path, b"x" * 100)
    r = ReceiverProtocol(t.net.clock, t.codes[0], t.folder)
    pump = t.net.connect(r)
    for _ in range(3):
        t.sender_pump.pump()
        pump.pump()
    r.transport.abortConnection()
    t.net.flush()
    assert exit_of(t.sender.done) is ExitCode.PEER_GONE


class VersionOneSender(SenderProtocol):
    """A sender of protocol version 1: after PAIRED it sends its version
    and a clear-text challenge (frame type 0x11)."""

    def _on_paired(self, value: bytes) -> None:
        self.paired = True
        self.send_frame(FrameType.PEER_HELLO, encode_version(1))
        self.send_frame(0x11, b"c" * 32)
        self.expect({})  # what it says next does not matter: the receiver has quit


def test_peer_version_mismatch(tmp_path) -> None:
    """A receiver meeting a version-1 sender fails with a clear version message, and so does the sender."""
    net = MemoryNetwork()
    codes: list[Code] = []
    old = VersionOneSender(net.clock, FileSource("f", 1, io.BytesIO(b"x")), codes.append)
    net.connect(old)
    net.flush()
    receiver = ReceiverProtocol(net.clock, codes[0], str(tmp_path))
    net.connect(receiver)
    net.flush()
    failure = failure_result_of(receiver.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.PROTOCOL_ERROR
    assert "speaks protocol version 1, this side speaks 3" in failure.value.message
    failure_result_of(old.done, TransferFailed)
    assert os.listdir(tmp_path) == []


def test_relay_silent_times_out() -> None:
    """A relay that never answers HELLO makes the client give up after the handshake timeout."""
    clock = Clock()
    proto = SenderProtocol(clock, FileSource("f", 0, io.BytesIO(b"")), lambda code: None)
    proto.makeConnection(StringTransport())
    clock.advance(29)
    assert_no_result(proto.done)
    clock.advance(1)
    assert proto.transport.disconnecting
    proto.connectionLost(None)
    assert exit_of(proto.done) is ExitCode.TIMEOUT


def test_stalled_sender_times_out_receiver(tmp_path) -> None:
    """A receiver whose sender stops answering after pairing gives up, not hangs."""
    t = Transfer(tmp_path)
    r = ReceiverProtocol(t.net.clock, t.codes[0], t.folder)
    pump = t.net.connect(r)
    pump.flush()  # the relay pairs us, but the sender's pump is never run again
    assert_no_result(r.done)
    t.net.clock.advance(121)
    pump.flush()
    assert exit_of(r.done) is ExitCode.TIMEOUT


def test_relay_error_frame_reported() -> None:
    """An ERROR frame from the relay becomes a failure with its message."""
    clock = Clock()
    proto = SenderProtocol(clock, FileSource("f", 0, io.BytesIO(b"")), lambda code: None)
    proto.makeConnection(StringTransport())
    from twisted_relay.wire import encode_error

    proto.dataReceived(encode_frame(FrameType.ERROR, encode_error(ErrorCode.SHUTTING_DOWN, "bye\x1b[2J")))
    proto.connectionLost(None)
    failure = failure_result_of(proto.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.SHUTTING_DOWN
    assert failure.value.message == "bye?[2J"


def test_interrupt_tells_peer(tmp_path) -> None:
    """Ctrl-C on one side tells the other and exits with the interrupted code."""
    t = Transfer(tmp_path)
    t.sender.interrupt()
    t.net.flush()
    assert exit_of(t.sender.done) is ExitCode.INTERRUPTED


# FileStreamer: the sender's push producer


class Sink(StringTransport):
    """A consumer that copies what it is given, as the streamer's contract asks
    (chunks are views of a buffer the streamer reuses)."""

    def write(self, data) -> None:  # type: ignore[no-untyped-def]
        super().write(bytes(data))


def test_streamer_chunks_are_borrowed_views() -> None:
    """Each chunk is a view of one reused buffer, so reading never allocates per chunk."""
    clock = Clock()
    seen: list = []
    sink = Sink()
    original = sink.write
    sink.write = lambda data: (seen.append(data), original(data))[1]  # type: ignore[method-assign]
    FileStreamer(io.BytesIO(b"a" * 300 + b"b" * 300), 600, sink, clock, chunk_size=300).start()
    assert all(isinstance(chunk, memoryview) for chunk in seen)
    assert seen[0].obj is seen[1].obj
    assert sink.value() == b"a" * 300 + b"b" * 300


def test_streamer_writes_exact_size() -> None:
    """The streamer writes exactly the announced size, in large chunks, then unregisters."""
    clock = Clock()
    sink = Sink()
    d = FileStreamer(io.BytesIO(b"a" * 1000 + b"EXTRA"), 1000, sink, clock, chunk_size=300).start()
    clock.advance(0)
    assert sink.value() == b"a" * 1000
    assert sink.producer is None
    success_result_of(d)


def test_streamer_respects_pause() -> None:
    """A paused streamer reads and writes nothing until resumed."""
    clock = Clock()
    sink = Sink()
    streamer = FileStreamer(io.BytesIO(b"a" * 10_000), 10_000, sink, clock, chunk_size=100)
    original = sink.write

    def write_then_pause(data: bytes) -> None:
        original(data)
        streamer.pauseProducing()  # as a full TCP buffer would

    sink.write = write_then_pause  # type: ignore[method-assign]
    d = streamer.start()
    clock.advance(0)
    assert len(sink.value()) == 100
    clock.advance(10)
    assert len(sink.value()) == 100
    assert_no_result(d)
    streamer.resumeProducing()
    assert len(sink.value()) == 200


def test_streamer_yields_to_reactor() -> None:
    """A consumer that never pauses still lets the reactor run between bursts."""
    clock = Clock()
    sink = Sink()
    streamer = FileStreamer(io.BytesIO(b"a" * 100_000), 100_000, sink, clock, chunk_size=100)
    streamer.start()
    assert len(sink.value()) == 100 * BURST
    assert len(clock.getDelayedCalls()) == 1
    for _ in range(1000):
        clock.advance(0)
    assert len(sink.value()) == 100_000


def test_streamer_detects_shrunk_file() -> None:
    """A file shorter than announced fails the stream instead of hanging the receiver."""
    clock = Clock()
    d = FileStreamer(io.BytesIO(b"a" * 10), 20, Sink(), clock).start()
    failure_result_of(d, SourceChanged)


def test_streamer_stop() -> None:
    """stopProducing ends the stream for good and unregisters it."""
    clock = Clock()
    sink = Sink()
    streamer = FileStreamer(io.BytesIO(b"a" * 10_000), 10_000, sink, clock, chunk_size=100)
    sink.write = lambda data: streamer.pauseProducing()  # type: ignore[method-assign]
    streamer.start()
    streamer.stopProducing()
    streamer.resumeProducing()
    assert sink.producer is None


# Review fixes: what a side says, and to whom


def connected_sender(clock: Clock) -> SenderProtocol:
    proto = SenderProtocol(clock, FileSource("f", 0, io.BytesIO(b"")), lambda code: None)
    proto.makeConnection(StringTransport())
    proto.transport.clear()
    return proto


class FailingFile(io.BytesIO):
    """A file whose reads fail after the first chunk (a dying disk)."""

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.tell():
            raise OSError(errno.EIO, "Input/output error")
        return super().readinto(buffer)


def test_unreadable_file_mid_body_tells_receiver(tmp_path) -> None:
    """A read error mid-file fails the sender, tells the receiver in a sealed record, and stores nothing."""
    size = 4 * 1024 * 1024
    t = Transfer(tmp_path, b"")
    t.sender.outgoing = FileSource("f", size, FailingFile(b"x" * size))
    t.receive()
    assert exit_of(t.sender.done) is ExitCode.INPUT_UNREADABLE
    failure = failure_result_of(t.receiver.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.PEER_GONE
    assert "could not read its file" in failure.value.message
    assert t.files() == []


def test_no_error_frame_to_relay_before_pairing() -> None:
    """Before pairing nobody would read our ERROR frame (the relay would call it a protocol error)."""
    clock = Clock()
    proto = connected_sender(clock)
    clock.advance(30)
    assert proto.transport.value() == b""
    assert proto.transport.disconnecting


def test_peer_hears_its_own_perspective(tmp_path) -> None:
    """The peer is told the generic reason, not our local wording about 'the receiver'."""
    proto = connected_sender(Clock())
    proto.paired = True
    proto.finish(TransferFailed(ExitCode.TIMEOUT, "the receiver stopped answering"), tell_peer=ErrorCode.TIMEOUT)
    [(ftype, value)] = parse_frames(proto.transport.value())
    from twisted_relay.wire import decode_error

    assert decode_error(value) == (ErrorCode.TIMEOUT, "timed out")


def test_welcome_version_checked() -> None:
    """A relay answering with another version is a protocol error, not ignored."""
    from twisted_relay.wire import encode_version

    proto = SenderProtocol(Clock(), FileSource("f", 0, io.BytesIO(b"")), lambda code: None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(encode_frame(FrameType.WELCOME, encode_version(7)))
    proto.connectionLost(None)
    failure = failure_result_of(proto.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.PROTOCOL_ERROR
    assert "version 7" in failure.value.message


def test_interrupt_waits_for_close() -> None:
    """Interrupting returns a Deferred that fires only once the connection has closed (so the ERROR gets out)."""
    proto = connected_sender(Clock())
    proto.paired = True
    d = proto.interrupt()
    assert proto.transport.disconnecting
    assert parse_frames(proto.transport.value())[0][0] == FrameType.ERROR
    assert_no_result(d)
    proto.connectionLost(None)
    success_result_of(d)
    assert exit_of(proto.done) is ExitCode.INTERRUPTED


def test_interrupt_before_connecting_is_immediate() -> None:
    """Interrupting a client that never connected does not hold up shutdown."""
    proto = SenderProtocol(Clock(), FileSource("f", 0, io.BytesIO(b"")), lambda code: None)
    success_result_of(proto.interrupt())


def test_lost_ack_is_reported_as_uncertain(tmp_path) -> None:
    """If the connection drops after the whole body but before the ACK, the sender says the outcome is unknown."""
    t = Transfer(tmp_path, b"abc")
    r = ReceiverProtocol(t.net.clock, t.codes[0], t.folder)
    r.send_record = lambda ftype, value: None if ftype == FrameType.SEALED_ACK else ReceiverProtocol.send_record(r, ftype, value)  # type: ignore[method-assign]
    t.net.connect(r)
    t.net.flush()
    failure = failure_result_of(t.sender.done, TransferFailed)
    assert failure.value.exit_code is ExitCode.PEER_GONE
    assert "may or may not" in failure.value.message


def test_waiting_sender_has_a_backstop(tmp_path) -> None:
    """A sender whose relay goes silent while it waits gives up after its own wait limit."""
    from twisted_relay.client import Timeouts

    net = MemoryNetwork(wait_timeout=None)  # a relay that never ends the wait
    sender = SenderProtocol(net.clock, FileSource("f", 0, io.BytesIO(b"")), lambda code: None, timeouts=Timeouts(wait=50.0))
    net.connect(sender)
    net.flush()
    net.clock.advance(49)
    assert_no_result(sender.done)
    net.clock.advance(1)
    net.flush()
    assert exit_of(sender.done) is ExitCode.TIMEOUT
