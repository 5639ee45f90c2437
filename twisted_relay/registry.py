"""
The relay's table of channels: which senders are waiting, which channels are
taken, and how long a sender may wait.

A plain object with an injected clock and no transports, so it is tested
without any protocol. The registry only matches a receiver to a waiting
sender; joining their connections is L{twisted_relay.splice}'s job.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Callable, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")


class UnknownChannel(LookupError):
    """No sender holds this channel."""


class ChannelInUse(LookupError):
    """The channel's sender is already paired with another receiver."""


class ChannelRegistry(Generic[T]):
    """
    Channels are small numbers so codes stay short. Each is picked at random
    among the free ones of the shortest length that is less than half full,
    so a guesser cannot predict the next channel and codes grow a digit only
    under load. A channel stays taken until its sender leaves, even once
    paired, so a late receiver with an old code meets a clear "in use" and
    never a stranger's new transfer.

    A released channel also rests for L{cooldown} seconds before it is
    handed out again, so a receiver who types a code a little late meets
    "unknown code" rather than spending a newcomer's one guess.

    @ivar wait_timeout: seconds a sender may wait unpaired; C{None} forever.
    """

    def __init__(
        self,
        clock: IReactorTime,
        wait_timeout: float | None = 3600.0,
        randbelow: Callable[[int], int] = secrets.randbelow,
        cooldown: float = 600.0,
    ) -> None:
        self._clock = clock
        self.wait_timeout = wait_timeout
        self.cooldown = cooldown
        self._randbelow = randbelow
        self._waiting: dict[int, tuple[T, IDelayedCall | None]] = {}
        self._taken: set[int] = set()
        # channel -> when it may be reused. The cooldown is the same for all,
        # so insertion order is expiry order: the oldest are at the front.
        self._resting: dict[int, float] = {}
        # digits -> channels of that length taken or resting, so allocating
        # costs the same however many channels were used in the last cooldown.
        self._unavailable_by_length: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._taken)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def waiting(self) -> list[T]:
        """The senders not yet paired, for a shutdown to notify."""
        return [sender for sender, _ in self._waiting.values()]

    def add_sender(self, sender: T, on_timeout: Callable[[T], None]) -> int:
        """
        Allocate a channel for C{sender}, and call C{on_timeout(sender)} if
        no receiver claims it within L{wait_timeout}. The caller must call
        L{release} when the sender's connection ends, whatever happened.
        """
        channel = self._allocate()
        timer = None
        if self.wait_timeout is not None:
            timer = self._clock.callLater(self.wait_timeout, self._expire, channel, on_timeout)
        self._taken.add(channel)
        self._unavailable_by_length[len(str(channel))] += 1
        self._waiting[channel] = (sender, timer)
        return channel

    def claim(self, channel: int) -> T:
        """
        Take the sender waiting on C{channel}; it is no longer waiting.

        @raise UnknownChannel: nobody holds the channel.
        @raise ChannelInUse: its sender is already paired.
        """
        entry = self._waiting.pop(channel, None)
        if entry is None:
            if channel in self._taken:
                raise ChannelInUse(channel)
            raise UnknownChannel(channel)
        sender, timer = entry
        if timer is not None and timer.active():
            timer.cancel()
        return sender

    def release(self, channel: int) -> None:
        """Free C{channel}: its sender has gone. Safe to call twice."""
        entry = self._waiting.pop(channel, None)
        if entry is not None and entry[1] is not None and entry[1].active():
            entry[1].cancel()
        if channel in self._taken:
            self._taken.discard(channel)
            self._resting[channel] = self._clock.seconds() + self.cooldown

    def stop(self) -> None:
        """Cancel every wait timer (the factory is stopping)."""
        for _, timer in self._waiting.values():
            if timer is not None and timer.active():
                timer.cancel()

    def _expire(self, channel: int, on_timeout: Callable[[T], None]) -> None:
        entry = self._waiting.pop(channel, None)
        if entry is not None:
            on_timeout(entry[0])

    def _end_rest(self) -> None:
        now = self._clock.seconds()
        while self._resting:
            channel, until = next(iter(self._resting.items()))
            if until > now:
                return
            del self._resting[channel]
            self._unavailable_by_length[len(str(channel))] -= 1

    def _allocate(self) -> int:
        self._end_rest()
        digits, upper = 1, 10
        while True:
            span = upper - upper // 10  # numbers with this many digits
            if self._unavailable_by_length[digits] * 2 < span:
                while True:
                    candidate = upper // 10 + self._randbelow(span)
                    if candidate not in self._taken and candidate not in self._resting:
                        return candidate
            digits, upper = digits + 1, upper * 10
