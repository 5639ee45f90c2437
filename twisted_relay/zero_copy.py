"""
Forwarding a paired transfer inside the kernel, with C{os.splice}.

The portable path (L{twisted_relay.splice}) reads every chunk into Python and
writes it out again: two copies, a few allocations and several Python calls
per 64 KiB. On Linux the bytes need never leave the kernel: C{splice(2)}
moves them from one socket into a pipe and from the pipe into the other
socket, page references only. Python then runs once per readiness event,
not once per chunk of data.

How it fits Twisted: once a transfer is paired and both Twisted transports
have flushed what they were given, L{KernelForwarder} takes both sockets
over. It stops the transports reading and registers an L{_SocketEnd} of its
own for each file descriptor with the reactor (L{IReactorFDSet}); the
reactor's readiness events then drive the pipes. When a leg ends, its end is
removed from the reactor first and the Twisted transport is given its socket
back, idle and with an empty buffer, so closing it (C{connectionLost},
C{loseConnection}, C{abortConnection}) runs Twisted's own code.

Backpressure: each direction has one pipe of L{PIPE_SIZE} bytes. When the
destination socket will not take more (C{EAGAIN}), the forwarder stops
reading the source and waits for the destination to become writable; the
pipe never holds more than its size. Memory per transfer is thus two pipes
and the sockets' kernel buffers, none of it in the relay's heap.

The peer's behaviour is the portable path's: when one leg ends, bytes that
were on their way to it are dropped, the other is no longer read, and what
was on its way to the other is flushed before that one is closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorFDSet, IReadWriteDescriptor, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

#: C{os.splice} is Linux only (Python 3.10+).
AVAILABLE = hasattr(os, "splice") and hasattr(os, "pipe2")

#: Bytes each direction's pipe is asked to hold: the most an unprivileged
#: process may ask for (/proc/sys/fs/pipe-max-size). Larger pipes mean fewer
#: events and larger segments: measured with bench/run.py speed, relay CPU
#: per GiB was 0.6 s with 64 KiB pipes, 0.5 s with 256 KiB, 0.25 s with
#: 1 MiB. The kernel may grant less (see L{_Direction}).
PIPE_SIZE = 1024 * 1024

#: Rounds of read-then-write per readiness event, so one busy transfer
#: cannot keep the reactor from the others.
MAX_ROUNDS = 8

_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0


class Leg(TypingProtocol):
    transport: ITCPTransport


def can_take_over(transport: object) -> bool:
    """
    Whether L{KernelForwarder} may take this transport's socket now: a
    plain (not TLS) TCP or UNIX connection of a reactor with file descriptor
    sets, still open, that has sent everything it was given.

    Reading Twisted's write buffer is the one place this module looks under
    L{twisted.internet.abstract.FileDescriptor}'s public surface; bytes left
    there would otherwise be overtaken by the spliced ones.
    """
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
        and IReactorFDSet.providedBy(transport.reactor)
    )


@implementer(IReadWriteDescriptor)
class _SocketEnd:
    """What the reactor sees of one leg's socket while the kernel forwards."""

    def __init__(self, forwarder: "KernelForwarder", leg: Leg) -> None:
        self.forwarder = forwarder
        self.leg = leg
        self.fd: int = leg.transport.fileno()  # type: ignore[attr-defined]
        self.reading = False
        self.writing = False
        self.released = False

    def fileno(self) -> int:
        return -1 if self.released else self.fd

    def doRead(self) -> None:
        self.forwarder._readable(self)

    def doWrite(self) -> None:
        self.forwarder._writable(self)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor dropped us: the socket hung up, or the reactor is
        # shutting down (disconnectAll).
        self.forwarder._end_lost(self, reason)

    def logPrefix(self) -> str:
        return "KernelForwarder"


class _Direction:
    """
    One way through a pipe: C{src}'s socket -> pipe -> C{dst}'s socket.

    @ivar pending: bytes in the pipe, not yet written to C{dst}.
    @ivar preface: bytes to write to C{dst} before the pipe's (the chunk
        Python had already read when the kernel took over).
    @ivar blocked: C{dst} refused bytes; wait for it to become writable.
    @ivar done_reading: C{src} is not read any more (it ended, or so did
        C{dst}).
    @ivar dead: C{dst} is gone: nothing more is written to it.
    @ivar close_when_flushed: close C{dst} once the pipe is empty.
    """

    def __init__(self, src: _SocketEnd, dst: _SocketEnd, size: int) -> None:
        self.src = src
        self.dst = dst
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            pass  # over the per-user pipe quota: keep the kernel's default
        self.capacity: int = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)
        self.pending = 0
        self.preface = memoryview(b"")
        self.blocked = False
        self.done_reading = False
        self.dead = False
        self.close_when_flushed = False

    def close_pipe(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)
        self.pending = 0


class _Closed(Exception):
    """A socket failed: which end, and why."""

    def __init__(self, end: _SocketEnd, reason: Failure) -> None:
        self.end = end
        self.reason = reason


class KernelForwarder:
    """
    Moves a paired transfer's bytes both ways with C{splice(2)}.

    The owner (L{twisted_relay.splice.Splice}) learns of every byte read
    through C{on_moved}, and of a leg's end through that leg's own
    C{connectionLost}, called by its transport as usual. It then asks for
    the other leg to be closed after a flush (L{close_after_flush}) or cut
    (L{abort}).
    """

    def __init__(
        self,
        sender: Leg,
        receiver: Leg,
        on_moved: Callable[[Leg, int], object],
        pipe_size: int = PIPE_SIZE,
    ) -> None:
        self._on_moved = on_moved
        self._ends = {id(leg): _SocketEnd(self, leg) for leg in (sender, receiver)}
        s, r = self._ends[id(sender)], self._ends[id(receiver)]
        self._up = _Direction(s, r, pipe_size)
        try:
            self._down = _Direction(r, s, pipe_size)
        except OSError:
            self._up.close_pipe()
            raise
        self._pipes_closed = False

    def start(self, preface_for: Leg | None = None, preface: bytes = b"") -> None:
        """
        Take both sockets from their transports and start forwarding.

        @param preface: bytes already read from the other leg, to be written
            to C{preface_for} before anything spliced.
        """
        for end in self._ends.values():
            end.leg.transport.stopReading()  # type: ignore[attr-defined]
        if preface_for is not None and preface:
            self._into(self._ends[id(preface_for)]).preface = memoryview(preface)
        for d in (self._up, self._down):
            self._run(d)

    # the reactor's events

    def _readable(self, end: _SocketEnd) -> None:
        self._run(self._out_of(end))

    def _writable(self, end: _SocketEnd) -> None:
        self._run(self._into(end))

    def _end_lost(self, end: _SocketEnd, reason: Failure) -> None:
        if not end.released:
            self._leg_ended(end, reason)

    # the owner's requests

    def close_after_flush(self, leg: Leg) -> None:
        """Stop reading C{leg}; write what is on its way to it, then close it."""
        end = self._ends[id(leg)]
        if end.released:
            leg.transport.loseConnection()
            return
        self._stop_reading_out_of(end)
        d = self._into(end)
        d.close_when_flushed = True
        self._run(d)

    def abort(self, leg: Leg) -> None:
        """Cut C{leg} now; whatever is on its way to it is dropped."""
        end = self._ends[id(leg)]
        if not end.released:
            self._stop_reading_out_of(end)
            self._into(end).dead = True
            self._release(end)
        leg.transport.abortConnection()

    # moving bytes

    def _run(self, d: _Direction) -> None:
        """Move what can be moved now, then wait for the right event."""
        if d.dead:
            return
        try:
            ended = self._move(d)
        except _Closed as e:
            self._leg_ended(e.end, e.reason)
            return
        if ended:
            # The source closed. Its transport's connectionLost tells the
            # relay, which asks for the other leg to be closed once what is
            # left in this pipe has been written (close_after_flush).
            self._leg_ended(d.src, Failure(ConnectionDone()))
            return
        if d.close_when_flushed and not d.blocked:
            d.dead = True
            self._release(d.dst)
            d.dst.leg.transport.loseConnection()
            return
        self._want_read(d.src, not (d.blocked or d.done_reading))
        self._want_write(d.dst, d.blocked)

    def _move(self, d: _Direction) -> bool:
        """Splice until the source is drained or the destination is full.
        The pipe is empty before every read, so C{EAGAIN} on a read means
        the socket has nothing more. C{True} if the source reached its end."""
        if self._flush(d) or d.done_reading:
            return False
        for _ in range(MAX_ROUNDS):
            try:
                n = os.splice(d.src.fd, d.write_fd, d.capacity, flags=_FLAGS)
            except BlockingIOError:
                return False
            except OSError as e:
                raise _Closed(d.src, _failure(e))
            if n == 0:
                d.done_reading = True
                return True
            d.pending += n
            self._on_moved(d.src.leg, n)
            if self._flush(d):
                return False
        return False

    def _flush(self, d: _Direction) -> bool:
        """Write the preface and the pipe to C{dst}; C{True} if it is full."""
        d.blocked = False
        try:
            while d.preface:
                n = os.write(d.dst.fd, d.preface)
                d.preface = d.preface[n:]
            while d.pending:
                n = os.splice(d.read_fd, d.dst.fd, d.pending, flags=_FLAGS)
                if n == 0:  # the pipe is empty: our count is wrong
                    raise OSError(errno.EIO, "pipe emptied early")
                d.pending -= n
        except BlockingIOError:
            d.blocked = True
        except OSError as e:
            raise _Closed(d.dst, _failure(e))
        return d.blocked

    # ends and legs

    def _leg_ended(self, end: _SocketEnd, reason: Failure) -> None:
        """
        C{end}'s socket ended or failed: drop what was on its way to it,
        stop reading its partner, and give the socket back to its transport,
        whose C{connectionLost} tells the relay.
        """
        self._into(end).dead = True
        out = self._out_of(end)
        out.done_reading = True
        self._stop_reading_out_of(self._other(end))
        self._release(end)
        # What the reactor would have done had the transport read the end.
        end.leg.transport.connectionLost(reason)  # type: ignore[attr-defined]

    def _stop_reading_out_of(self, end: _SocketEnd) -> None:
        self._out_of(end).done_reading = True
        self._want_read(end, False)

    def _release(self, end: _SocketEnd) -> None:
        self._want_read(end, False)
        self._want_write(end, False)
        end.released = True
        if all(e.released for e in self._ends.values()) and not self._pipes_closed:
            self._pipes_closed = True
            self._up.close_pipe()
            self._down.close_pipe()

    def _want_read(self, end: _SocketEnd, wanted: bool) -> None:
        if end.released or end.reading == wanted:
            return
        end.reading = wanted
        reactor = end.leg.transport.reactor  # type: ignore[attr-defined]
        (reactor.addReader if wanted else reactor.removeReader)(end)

    def _want_write(self, end: _SocketEnd, wanted: bool) -> None:
        if end.released or end.writing == wanted:
            return
        end.writing = wanted
        reactor = end.leg.transport.reactor  # type: ignore[attr-defined]
        (reactor.addWriter if wanted else reactor.removeWriter)(end)

    def _other(self, end: _SocketEnd) -> _SocketEnd:
        return self._up.dst if end is self._up.src else self._up.src

    def _out_of(self, end: _SocketEnd) -> _Direction:
        return self._up if end is self._up.src else self._down

    def _into(self, end: _SocketEnd) -> _Direction:
        return self._up if end is self._up.dst else self._down


def _failure(e: OSError) -> Failure:
    return Failure(ConnectionLost(os.strerror(e.errno) if e.errno else str(e)))
