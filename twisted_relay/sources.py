"""
What a sender can send, and how each is streamed: one file, a tree of
files and folders (as a tar stream made on the fly), or standard input.

Each source is opened before the relay is contacted, so a typo or an
unreadable file fails at once, and each streams itself to a consumer with
backpressure, firing a Deferred with the number of bytes sent.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_relay.filenames import BadName, check_name
from twisted_relay.tarstream import SourceChanged, TarReader

__all__ = ["Outgoing", "FileSource", "TreeSource", "PipeSource", "SourceChanged", "CHUNK_SIZE"]

#: Bytes read per record: large, to keep per-record overhead (a frame
#: header, a GCM tag, a few Python calls, a turn of the reactor) negligible.
#: Raising it from 256 KiB to MAX_RECORD (1 MiB) took 1 GiB CLI to CLI from
#: about 550 to 640 MB/s on a 2-core machine, with less CPU on both sides.
CHUNK_SIZE = 1024 * 1024

#: Chunks written per turn of the reactor if the consumer never pauses us.
BURST = 16

OnChunk = Callable[[int], None]


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class Outgoing:
    """
    What the receiver is told (name, size if known, kind, top-level
    entries) and how to stream it. Subclasses implement L{start}.

    @ivar kind: C{"file"} (one file, or standard input) or C{"tar"}.
    @ivar size: exact byte count, or C{None} for a pipe.
    """

    kind = "file"
    entries: list[str] = []

    def __init__(self, name: str, size: int | None) -> None:
        self.name = name
        self.size = size

    def start(self, consumer: IConsumer, clock: IReactorTime, on_chunk: OnChunk) -> Deferred[int]:
        """Stream everything to C{consumer}; fires with the bytes sent."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop streaming (the transfer failed); safe at any time."""

    def close(self) -> None:
        """Release the underlying files."""


def checked_name(name: str) -> str:
    """Refuse here a name every receiver refuses, before a code is spent."""
    try:
        return check_name(name)
    except BadName as e:
        raise BadName(f"receivers refuse this name: {e}; rename it or use --name") from None


class _Streamed(Outgoing):
    """A source read with C{readinto} through a L{FileStreamer}."""

    def __init__(self, name: str, size: int, readable: Readable) -> None:
        super().__init__(name, size)
        self._readable = readable
        self._streamer: FileStreamer | None = None

    def start(self, consumer: IConsumer, clock: IReactorTime, on_chunk: OnChunk) -> Deferred[int]:
        assert self.size is not None
        self._streamer = FileStreamer(self._readable, self.size, consumer, clock, on_chunk=on_chunk)
        return self._streamer.start()

    def stop(self) -> None:
        if self._streamer is not None:
            self._streamer.stopProducing()

    def close(self) -> None:
        self.stop()
        self._readable.close()


class FileSource(_Streamed):
    """One regular file."""

    @classmethod
    def open(cls, path: str, name: str | None = None) -> "FileSource":
        """@raise BadName, OSError: the file cannot be sent."""
        name = checked_name(name or os.path.basename(os.path.abspath(path)))
        f = open(path, "rb", buffering=0)  # large readinto calls go straight to the kernel
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # the opened file, not what the path names now
            f.close()
            raise OSError(errno.EINVAL, "not a regular file")
        return cls(name, st.st_size, f)


class TreeSource(_Streamed):
    """Folders and several files, as one tar stream."""

    kind = "tar"

    @classmethod
    def open(cls, paths: list[str], on_skip: Callable[[str], None] = lambda path: None) -> "TreeSource":
        """@raise BadName, OSError, ValueError: the paths cannot be sent."""
        reader = TarReader(paths, on_skip)
        if not reader.entries:
            raise ValueError("nothing to send: only links or special files were given")
        for entry in reader.entries:
            checked_name(entry)
        name = reader.entries[0] if len(reader.entries) == 1 else f"{len(reader.entries)} items"
        source = cls(name, reader.size, reader)
        source.entries = reader.entries
        return source


class PipeSource(Outgoing):
    """Standard input or another pipe: size unknown, read as it comes."""

    def __init__(self, name: str, fd: int, reactor: IReactorFDSet) -> None:
        super().__init__(checked_name(name), None)
        self._fd = fd
        self._reactor = reactor
        self._streamer: PipeStreamer | None = None

    def start(self, consumer: IConsumer, clock: IReactorTime, on_chunk: OnChunk) -> Deferred[int]:
        self._streamer = PipeStreamer(self._fd, consumer, self._reactor, on_chunk=on_chunk)
        return self._streamer.start()

    def stop(self) -> None:
        if self._streamer is not None:
            self._streamer.stopProducing()

    def close(self) -> None:
        self.stop()


@implementer(IPushProducer)
class FileStreamer:
    """
    Writes exactly C{size} bytes of a readable to a consumer, as fast as the
    consumer allows and no faster: a TCP transport pauses us as soon as its
    buffer holds more than C{bufferSize}, so at most one chunk beyond that
    is ever in memory.

    Chunks are read into one reused buffer and handed to the consumer as
    memoryviews valid only during C{write}: the consumer must use or copy
    them at once (the sender seals them straight away).

    C{start()} returns a Deferred that fires with C{size} once every byte
    has been written, or fails with L{SourceChanged} or the read's
    C{OSError}.
    """

    def __init__(
        self,
        readable: Readable,
        size: int,
        consumer: IConsumer,
        clock: IReactorTime,
        chunk_size: int = CHUNK_SIZE,
        on_chunk: OnChunk = lambda n: None,
    ) -> None:
        self._readable = readable
        self._size = size
        self._remaining = size
        self._consumer = consumer
        self._clock = clock
        self._chunk_size = chunk_size
        self._on_chunk = on_chunk
        self._paused = True
        self._finished = False
        self._scheduled = None
        self._done: Deferred[int] = Deferred()
        self._buffer = memoryview(bytearray(min(chunk_size, size) or 1))

    def start(self) -> Deferred[int]:
        self._consumer.registerProducer(self, True)
        self.resumeProducing()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        """The consumer has gone; the connection's own end reports why."""
        self._finish()

    def _produce(self) -> None:
        self._scheduled = None
        for _ in range(BURST):
            if self._paused or self._finished:
                return
            if self._remaining == 0:
                self._finish()
                self._done.callback(self._size)
                return
            try:
                n = self._readable.readinto(self._buffer[: min(self._chunk_size, self._remaining)])
            except (OSError, SourceChanged) as e:
                self._finish()
                self._done.errback(e)
                return
            if not n:
                self._finish()
                self._done.errback(SourceChanged())
                return
            self._remaining -= n
            self._consumer.write(self._buffer[:n])
            self._on_chunk(n)
        if not self._paused and not self._finished and self._scheduled is None:
            # The consumer keeps taking bytes without pausing us; yield to
            # the reactor between bursts instead of starving it.
            self._scheduled = self._clock.callLater(0, self._produce)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._consumer.unregisterProducer()


def _grow_pipe(fd: int, size: int = 1024 * 1024) -> None:
    """Ask for a larger pipe buffer (Linux), so the writer upstream is
    paused less often; harmless where it cannot be done."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (OSError, ImportError):
        pass


@implementer(IPushProducer, IReadDescriptor)
class PipeStreamer:
    """
    Streams a pipe (standard input) to a consumer as data arrives, reading
    only when the reactor says it is readable, so a slow writer upstream
    never blocks the reactor, and stopping reading while the consumer is
    paused. C{start()} fires with the byte count at end of input.
    """

    def __init__(
        self,
        fd: int,
        consumer: IConsumer,
        reactor: IReactorFDSet,
        chunk_size: int = CHUNK_SIZE,
        on_chunk: OnChunk = lambda n: None,
    ) -> None:
        self._fd = fd
        self._consumer = consumer
        self._reactor = reactor
        self._chunk_size = chunk_size
        self._on_chunk = on_chunk
        self._count = 0
        self._reading = False
        self._finished = False
        self._done: Deferred[int] = Deferred()

    def start(self) -> Deferred[int]:
        os.set_blocking(self._fd, False)
        _grow_pipe(self._fd)
        self._consumer.registerProducer(self, True)
        self.resumeProducing()
        return self._done

    # IReadDescriptor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "pipe"

    def doRead(self) -> None:
        # A pipe yields at most its buffer (64 KiB) per read; gather what is
        # there, up to a whole record, so records stay large.
        chunks: list[bytes] = []
        gathered = 0
        at_end = False
        while gathered < self._chunk_size:
            try:
                data = os.read(self._fd, self._chunk_size - gathered)
            except BlockingIOError:
                break
            except OSError as e:
                self._finish()
                self._done.errback(e)
                return
            if not data:
                at_end = True
                break
            chunks.append(data)
            gathered += len(data)
        if chunks:
            self._count += gathered
            self._consumer.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._on_chunk(gathered)
        if at_end and not self._finished:
            self._finish()
            self._done.callback(self._count)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor reports a pipe's hang-up here rather than as an empty
        # read: the writer closed its end, which is our end of input.
        if self._finished:
            return
        self._finish()
        if reason.check(ConnectionDone):
            self._done.callback(self._count)
        else:
            self._done.errback(reason)

    # IPushProducer

    def pauseProducing(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def resumeProducing(self) -> None:
        if not self._reading and not self._finished:
            self._reading = True
            self._reactor.addReader(self)

    def stopProducing(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self.pauseProducing()
        self._finished = True
        self._consumer.unregisterProducer()
        try:
            os.set_blocking(self._fd, True)  # as we found it: a shell may share it
        except OSError:
            pass
