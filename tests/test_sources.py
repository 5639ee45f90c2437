"""
The sender's sources: the pipe streamer (standard input) and what the
progress bar does with messages.
"""

from __future__ import annotations

import io
import os

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_relay.progress import ProgressBar
from twisted_relay.sources import PipeStreamer

from tests.helpers import assert_no_result, success_result_of


class FakeFDReactor:
    """Records which readers are registered."""

    def __init__(self) -> None:
        self.readers: set[object] = set()

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)


def test_pipe_reads_gather_a_whole_record() -> None:
    """Data waiting in a pipe is sent as one large chunk, not one per 64 KiB read."""
    read_end, write_end = os.pipe()
    reactor, sink = FakeFDReactor(), StringTransport()
    streamer = PipeStreamer(read_end, sink, reactor, chunk_size=256 * 1024)
    d = streamer.start()
    os.write(write_end, b"a" * 200_000)
    writes: list[int] = []
    original = sink.write
    sink.write = lambda data: (writes.append(len(data)), original(data))[1]  # type: ignore[method-assign]
    streamer.doRead()
    assert writes == [200_000]
    assert_no_result(d)
    os.close(write_end)
    streamer.doRead()
    assert success_result_of(d) == 200_000
    assert reactor.readers == set() and sink.producer is None
    os.close(read_end)


def test_pipe_hang_up_is_end_of_input() -> None:
    """The reactor reporting the writer's hang-up (connectionLost) ends the input normally."""
    read_end, write_end = os.pipe()
    reactor, sink = FakeFDReactor(), StringTransport()
    streamer = PipeStreamer(read_end, sink, reactor)
    d = streamer.start()
    os.write(write_end, b"xyz")
    streamer.doRead()
    streamer.connectionLost(Failure(ConnectionDone()))
    assert success_result_of(d) == 3
    os.close(read_end)
    os.close(write_end)


def test_paused_pipe_is_not_read() -> None:
    """While the consumer pauses it, the pipe is not watched for reading."""
    read_end, write_end = os.pipe()
    reactor, sink = FakeFDReactor(), StringTransport()
    streamer = PipeStreamer(read_end, sink, reactor)
    streamer.start()
    assert reactor.readers == {streamer}
    streamer.pauseProducing()
    assert reactor.readers == set()
    streamer.resumeProducing()
    assert reactor.readers == {streamer}
    streamer.stopProducing()
    assert reactor.readers == set()
    os.close(read_end)
    os.close(write_end)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_messages_do_not_break_the_bar() -> None:
    """A message while the bar is drawn appears on a line of its own."""
    screen = Terminal()
    bar = ProgressBar("sending", screen)
    bar(10, 100)
    bar.say("all bytes sent")
    bar(100, 100)
    bar.close()
    lines = screen.getvalue().replace("\r", "\n").split("\n")
    assert "all bytes sent" in lines
