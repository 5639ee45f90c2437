"""
End-to-end protection, in memory: what a relay (or anyone on the path)
sees, and what happens when it alters the stream.
"""

from __future__ import annotations

import io
import os

import pytest

from twisted_relay.codes import Code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed
from twisted_relay.receiver import ReceiverProtocol
from twisted_relay.relay import RelayProtocol
from twisted_relay.sender import SenderProtocol
from twisted_relay.sources import FileSource
from twisted_relay.splice import Splice
from twisted_relay.sources import CHUNK_SIZE
from twisted_relay.wire import FrameType, encode_error, encode_frame

from tests.helpers import MemoryNetwork, assert_no_result, failure_result_of, success_result_of

MARKER = b"MARKER-8d1f3c-"
NAME = "distinctive-corgi-name.bin"
#: Several records, so a test can drop or flip one in the middle.
SIZE = 5 * CHUNK_SIZE // 2


class Pair:
    """A sender and receiver of one file through an in-memory relay."""

    def __init__(self, tmp_path, data: bytes = MARKER * (SIZE // len(MARKER))) -> None:
        self.net = MemoryNetwork()
        self.data = data
        self.folder = tmp_path / "out"
        self.folder.mkdir()
        self.codes: list[Code] = []
        self.sender = SenderProtocol(self.net.clock, FileSource(NAME, len(data), io.BytesIO(data)), self.codes.append)
        self.net.connect(self.sender)
        self.net.flush()

    def run(self) -> None:
        self.receiver = ReceiverProtocol(self.net.clock, self.codes[0], str(self.folder))
        self.net.connect(self.receiver)
        self.net.flush()

    def receiver_exit(self) -> ExitCode:
        return failure_result_of(self.receiver.done, TransferFailed).value.exit_code

    def sender_failed(self) -> TransferFailed:
        return failure_result_of(self.sender.done, TransferFailed).value


def test_relay_sees_no_content_name_or_words(tmp_path, monkeypatch) -> None:
    """Everything the relay receives from both sides holds neither the file's content, its name, nor the code's words."""
    seen: list[bytes] = []
    original = RelayProtocol.dataReceived
    monkeypatch.setattr(RelayProtocol, "dataReceived", lambda self, data: (seen.append(data), original(self, data))[1])
    pair = Pair(tmp_path)
    pair.run()
    success_result_of(pair.sender.done)
    success_result_of(pair.receiver.done)
    assert (pair.folder / NAME).read_bytes() == pair.data  # the transfer really happened
    wire = b"".join(seen)
    assert len(wire) > SIZE
    assert MARKER not in wire
    assert NAME.encode() not in wire and b"distinctive" not in wire
    for word in pair.codes[0].words:
        assert word.encode() not in wire


def flip_in_transit(monkeypatch, at: int) -> None:
    """Make the relay flip one bit of the sender's stream at byte C{at}."""
    original = Splice.carry
    counted = {"n": 0}

    def carry(self, leg, data):
        if leg is self.sender and counted["n"] <= at < counted["n"] + len(data):
            i = at - counted["n"]
            data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        if leg is self.sender:
            counted["n"] += len(data)
        return original(self, leg, data)

    monkeypatch.setattr(Splice, "carry", carry)


def test_flipped_byte_in_data_is_detected(tmp_path, monkeypatch) -> None:
    """One bit flipped in the middle of the file fails the receiver as corrupted, stores nothing, and the sender does not succeed."""
    flip_in_transit(monkeypatch, at=SIZE // 2)
    pair = Pair(tmp_path)
    pair.run()
    failure = failure_result_of(pair.receiver.done, TransferFailed).value
    assert failure.exit_code is ExitCode.TRANSFER_CORRUPTED
    assert "transfer corrupted" in failure.message
    assert pair.sender_failed().exit_code is ExitCode.TRANSFER_CORRUPTED
    assert os.listdir(pair.folder) == []


@pytest.mark.parametrize("at", [0, 5, 30, 60, 100, 200])
def test_flipped_byte_in_handshake_never_succeeds(tmp_path, monkeypatch, at: int) -> None:
    """A bit flipped anywhere in the handshake makes the transfer fail on both sides, never deliver a file."""
    flip_in_transit(monkeypatch, at=at)
    pair = Pair(tmp_path)
    pair.run()
    failure_result_of(pair.receiver.done, TransferFailed)
    failure_result_of(pair.sender.done, TransferFailed)
    assert os.listdir(pair.folder) == []


def test_dropped_record_is_detected(tmp_path) -> None:
    """A data record that never arrives fails the receiver as corrupted; nothing is stored."""
    pair = Pair(tmp_path)
    sent = {"data": 0}
    original = pair.sender.send_record

    def drop_third(ftype, value):
        if ftype == FrameType.SEALED_DATA:
            sent["data"] += 1
            if sent["data"] == 3:
                return
        original(ftype, value)

    pair.sender.send_record = drop_third  # type: ignore[method-assign]
    pair.run()
    assert pair.receiver_exit() is ExitCode.TRANSFER_CORRUPTED
    assert os.listdir(pair.folder) == []
    assert pair.sender_failed().exit_code is ExitCode.TRANSFER_CORRUPTED


def test_stream_cut_before_end_record(tmp_path) -> None:
    """If the stream is cut just before the end-of-stream record, the receiver stores nothing and says why; the sender does not succeed."""
    pair = Pair(tmp_path)
    original = pair.sender.send_record

    def cut_at_end(ftype, value):
        if ftype == FrameType.SEALED_END:
            [splice] = pair.net.factory.splices
            splice.receiver.transport.abortConnection()  # the relay cuts the receiver's leg
            return
        original(ftype, value)

    pair.sender.send_record = cut_at_end  # type: ignore[method-assign]
    pair.run()
    failure = failure_result_of(pair.receiver.done, TransferFailed).value
    assert failure.exit_code is ExitCode.PEER_GONE
    assert "end-of-stream record" in failure.message and "nothing was saved" in failure.message
    assert os.listdir(pair.folder) == []
    assert pair.sender_failed().exit_code is ExitCode.PEER_GONE


def test_injected_clear_error_is_treated_as_tampering(tmp_path, monkeypatch) -> None:
    """After keys are confirmed, a clear-text ERROR frame (say, forged by the relay) is not believed: the transfer is corrupted."""
    pair = Pair(tmp_path)
    original = pair.sender.send_record

    def inject(ftype, value):
        original(ftype, value)
        if ftype == FrameType.SEALED_HEADER:
            [splice] = pair.net.factory.splices
            splice.receiver.transport.write(encode_frame(FrameType.ERROR, encode_error(ErrorCode.FILE_EXISTS, "forged")))

    pair.sender.send_record = inject  # type: ignore[method-assign]
    pair.run()
    assert pair.receiver_exit() is ExitCode.TRANSFER_CORRUPTED
    assert os.listdir(pair.folder) == []


def test_wrong_code_sends_no_sealed_record(tmp_path) -> None:
    """With a wrong code nothing sealed (no header, no data) ever leaves the sender, and both sides say 'wrong code'."""
    pair = Pair(tmp_path)
    sealed: list[int] = []
    original = pair.sender.send_record
    pair.sender.send_record = lambda ftype, value: (sealed.append(ftype), original(ftype, value))[1]  # type: ignore[method-assign]
    code = pair.codes[0]
    pair.receiver = ReceiverProtocol(pair.net.clock, Code(code.channel, ("tulip", "tulip")), str(pair.folder))
    pair.net.connect(pair.receiver)
    pair.net.flush()
    assert sealed == []
    assert pair.receiver_exit() is ExitCode.WRONG_CODE
    assert pair.sender_failed().exit_code is ExitCode.WRONG_CODE


def test_sender_waits_without_receiver(tmp_path) -> None:
    """Nothing happens to a waiting sender until a receiver claims its code."""
    pair = Pair(tmp_path)
    pair.net.clock.advance(600)
    assert_no_result(pair.sender.done)
