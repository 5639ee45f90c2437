"""
Joins a paired sender and receiver: bytes from one leg go out on the other.

Each transport is registered as the streaming producer of the other, as in
L{twisted.protocols.portforward}: when a receiver reads slowly, its outgoing
buffer fills past the transport's C{bufferSize}, the transport pauses the
sender's transport, and the relay stops reading from the sender. Memory per
transfer is thus bounded by two transport buffers and one read, whatever the
file size. When either leg is lost, the other is closed after its pending
bytes are flushed.

On Linux, once both transports have flushed what the relay wrote to them,
the bytes stop passing through Python: a L{KernelForwarder} takes the two
sockets and moves bytes with C{splice(2)}, with the same backpressure and
the same way of ending. The portable path above stays in use until then, and
for good where the kernel path is unavailable or turned off.

A transfer during which no byte moves either way for C{idle_timeout} seconds
is cut. Reading the clock in L{Splice.carry} is all the hot path pays for
it: one timer per splice checks L{Splice.last_activity} when it fires and
sleeps again for the time left, instead of a timer reset per chunk.
"""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport

from twisted_relay import zero_copy
from twisted_relay.logs import IDLE_TIMEOUT


#: Seconds a leg may take to flush after its partner has gone.
CLOSE_GRACE = 30.0


class Leg(TypingProtocol):
    """What a splice needs of each connection it joins."""

    transport: ITCPTransport

    def start_forwarding(self, splice: "Splice") -> None:
        """Tell the client it is paired; bytes will go to C{splice.carry}."""

    def set_raw_mode(self) -> None:
        """Hand every byte, starting with any already buffered, to the
        splice: at once, unless called from inside the leg's own read."""


class Splice:
    """
    One paired transfer. Owns the byte counters and the teardown, and reports
    the outcome once, when both legs are gone.

    @ivar bytes_up: bytes forwarded sender -> receiver.
    @ivar bytes_down: bytes forwarded receiver -> sender.
    @ivar last_activity: when a byte last arrived on either leg.
    @ivar idle_timeout: seconds without a byte either way before both legs
        are cut; C{None}: never.
    @ivar outcome: why the transfer ended (see L{twisted_relay.logs}), set
        by the first leg to go or by L{abort}; C{None} while it runs.
    @ivar kernel: the forwarder moving bytes inside the kernel, once it has
        taken over; C{None} while bytes pass through Python.
    """

    def __init__(
        self,
        sender: Leg,
        receiver: Leg,
        clock: IReactorTime,
        channel: int,
        on_end: Callable[["Splice"], object] = lambda splice: None,
        idle_timeout: float | None = None,
        kernel_forwarding: bool = True,
        pipe_size: int = zero_copy.PIPE_SIZE,
    ) -> None:
        self.sender = sender
        self._on_end = on_end
        self.receiver = receiver
        self.channel = channel
        self._clock = clock
        self.started = clock.seconds()
        self.bytes_up = 0
        self.bytes_down = 0
        self.last_activity = self.started
        self._lost: set[int] = set()
        self._cut_timer: IDelayedCall | None = None
        self.idle_timeout = idle_timeout
        self._idle_timer: IDelayedCall | None = None
        self.outcome: str | None = None
        self.kernel: zero_copy.KernelForwarder | None = None
        self._may_take_over = kernel_forwarding and zero_copy.AVAILABLE
        self._pipe_size = pipe_size

    @property
    def forwarding(self) -> str:
        """How bytes are moving now: C{"splice"} or C{"copy"}."""
        return "splice" if self.kernel is not None else "copy"

    def start(self) -> None:
        """Wire the legs to each other. Both must already be connected."""
        self.sender.transport.registerProducer(self.receiver.transport, True)
        self.receiver.transport.registerProducer(self.sender.transport, True)
        self.sender.start_forwarding(self)
        self.receiver.start_forwarding(self)
        # Only now switch to raw: switching releases what a leg has buffered
        # (a waiting sender may have sent part of a frame), and those bytes
        # must follow the other leg's PAIRED frame, not precede it.
        self.sender.set_raw_mode()
        self.receiver.set_raw_mode()
        if self.idle_timeout is not None:
            self._idle_timer = self._clock.callLater(self.idle_timeout, self._check_idle)

    def other(self, leg: Leg) -> Leg:
        return self.receiver if leg is self.sender else self.sender

    def carry(self, leg: Leg, data: bytes) -> None:
        """Forward C{data} that arrived on C{leg} to the other leg."""
        if self._lost:
            return  # the other leg is gone: nothing is forwarded or counted
        self._moved(leg, len(data))
        other = self.other(leg)
        if self._may_take_over and zero_copy.can_take_over(leg.transport) and zero_copy.can_take_over(other.transport):
            self._hand_to_kernel(other, data)
        else:
            other.transport.write(data)

    def _moved(self, leg: Leg, count: int) -> None:
        if leg is self.sender:
            self.bytes_up += count
        else:
            self.bytes_down += count
        self.last_activity = self._clock.seconds()

    def _hand_to_kernel(self, preface_for: Leg, preface: bytes) -> None:
        """Both transports are flushed: let the kernel forward from now on,
        starting with the chunk in hand."""
        self._may_take_over = False
        try:
            kernel = zero_copy.KernelForwarder(
                self.sender, self.receiver, on_moved=self._moved, pipe_size=self._pipe_size
            )
        except OSError:
            # Out of descriptors for the pipes: this transfer stays on the
            # portable path, which needs none.
            preface_for.transport.write(preface)
            return
        self.sender.transport.unregisterProducer()
        self.receiver.transport.unregisterProducer()
        self.kernel = kernel
        kernel.start(preface_for, preface)

    def leg_lost(self, leg: Leg, outcome: str = "closed") -> None:
        """C{leg}'s connection is gone: close the other once it has flushed."""
        if id(leg) in self._lost:
            return
        self._lost.add(id(leg))
        if self.outcome is None:
            self.outcome = outcome
        self._cancel_idle_timer()
        other = self.other(leg)
        if id(other) not in self._lost:
            if self.kernel is not None:
                self.kernel.close_after_flush(other)
            else:
                other.transport.unregisterProducer()
                other.transport.loseConnection()
            # A peer that stops reading would keep a flushing close open for
            # ever; cut it after a grace period.
            self._cut_timer = self._clock.callLater(CLOSE_GRACE, self._cut, other)
            return
        if self._cut_timer is not None and self._cut_timer.active():
            self._cut_timer.cancel()
        # Each leg logs its own close, with this splice's counters.
        self._on_end(self)

    def abort(self, outcome: str) -> None:
        """Cut both legs now, pending bytes and all (idle timeout, shutdown)."""
        self.outcome = self.outcome or outcome
        for leg in (self.sender, self.receiver):
            if id(leg) not in self._lost:
                self._cut(leg)

    def _cut(self, leg: Leg) -> None:
        if self.kernel is not None:
            self.kernel.abort(leg)
        else:
            leg.transport.abortConnection()

    def _check_idle(self) -> None:
        assert self.idle_timeout is not None
        idle_for = self._clock.seconds() - self.last_activity
        if idle_for >= self.idle_timeout:
            self._idle_timer = None
            # Nothing moved: whatever is still queued is not going anywhere,
            # so abort rather than wait for a flush. The relay sends no frame
            # after PAIRED; the clients see the connection end.
            self.abort(IDLE_TIMEOUT)
        else:
            self._idle_timer = self._clock.callLater(self.idle_timeout - idle_for, self._check_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
