"""
Tests for L{twisted_relay.registry.ChannelRegistry}: channel allocation,
claiming, releasing and the wait timeout, on a fake L{Clock}.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from twisted_relay.registry import ChannelInUse, ChannelRegistry, UnknownChannel


class ScriptedRandom:
    """A randbelow that returns scripted values first, then counts upwards
    (so a rejection loop always terminates), recording every call's bound."""

    def __init__(self, *script: int) -> None:
        self.script = list(script)
        self.calls: list[int] = []
        self._counter = 0

    def __call__(self, n: int) -> int:
        self.calls.append(n)
        if self.script:
            value = self.script.pop(0)
            assert 0 <= value < n, f"scripted {value} outside 0..{n - 1}"
            return value
        value = self._counter % n
        self._counter += 1
        return value


class Timeouts:
    """Records on_timeout calls."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def __call__(self, sender: object) -> None:
        self.calls.append(sender)


def seeded(seed: int = 1234):
    return random.Random(seed).randrange


def make(wait_timeout=3600.0, randbelow=None):
    clock = Clock()
    registry = ChannelRegistry(clock, wait_timeout=wait_timeout, randbelow=randbelow or seeded())
    return registry, clock


def digits(n: int) -> int:
    return len(str(n))


# ---------------------------------------------------------------------------
# allocation


def test_channels_are_distinct():
    """Every waiting sender gets its own channel number."""
    registry, _ = make()
    channels = [registry.add_sender(f"s{i}", Timeouts()) for i in range(300)]
    assert len(set(channels)) == 300
    assert all(c >= 1 for c in channels)
    assert len(registry) == 300


def test_channels_distinct_with_real_randomness():
    """With the default secure random source, channels are still distinct and positive."""
    registry = ChannelRegistry(Clock())
    channels = [registry.add_sender(i, Timeouts()) for i in range(60)]
    assert len(set(channels)) == 60
    assert all(c >= 1 for c in channels)
    registry.stop()


def test_short_channels_preferred():
    """Codes stay short: 1-digit channels while fewer than half of 1..9 are taken, then 2-digit, then 3-digit."""
    registry, _ = make()
    channels = [registry.add_sender(i, Timeouts()) for i in range(60)]
    # 1..9 is "less than half full" while at most 4 are taken: 5 one-digit channels.
    assert [digits(c) for c in channels[:5]] == [1] * 5
    # 10..99 (90 numbers) takes 45 channels before moving on.
    assert [digits(c) for c in channels[5:50]] == [2] * 45
    assert [digits(c) for c in channels[50:]] == [3] * 10
    assert all(1 <= c <= 9 for c in channels[:5])
    assert all(10 <= c <= 99 for c in channels[5:50])
    assert all(100 <= c <= 999 for c in channels[50:])


def test_short_channels_return_after_release():
    """When a 1-digit channel is freed, the next sender gets a 1-digit channel again."""
    registry, clock = make()
    channels = [registry.add_sender(i, Timeouts()) for i in range(6)]
    assert digits(channels[5]) == 2
    registry.release(channels[0])
    clock.advance(registry.cooldown)
    assert digits(registry.add_sender("new", Timeouts())) == 1


def test_allocation_uses_injected_randbelow():
    """The channel is drawn from the injected random source, over the free numbers of the current length."""
    rnd = ScriptedRandom(3)
    registry, _ = make(randbelow=rnd)
    assert registry.add_sender("a", Timeouts()) == 4  # 1 + 3
    assert rnd.calls == [9]


def test_allocation_retries_taken_numbers():
    """If the random source picks a taken number, another draw is made."""
    rnd = ScriptedRandom(3, 3, 3, 0)
    registry, _ = make(randbelow=rnd)
    assert registry.add_sender("a", Timeouts()) == 4
    assert registry.add_sender("b", Timeouts()) == 1
    assert rnd.calls == [9, 9, 9, 9]


def test_allocation_two_digit_range():
    """Once 1-digit channels are half taken, draws cover 10..99."""
    rnd = ScriptedRandom(0, 1, 2, 3, 4, 0, 89)
    registry, _ = make(randbelow=rnd)
    firsts = [registry.add_sender(i, Timeouts()) for i in range(5)]
    assert firsts == [1, 2, 3, 4, 5]
    assert registry.add_sender("x", Timeouts()) == 10
    assert registry.add_sender("y", Timeouts()) == 99
    assert rnd.calls == [9] * 5 + [90, 90]


# ---------------------------------------------------------------------------
# claim and release


def test_claim_returns_sender():
    """A receiver claiming a channel gets the sender waiting on it."""
    registry, _ = make()
    sender = object()
    channel = registry.add_sender(sender, Timeouts())
    assert registry.claim(channel) is sender


def test_claim_cancels_wait_timer():
    """Once claimed, a sender's wait timer is cancelled and never fires."""
    registry, clock = make(wait_timeout=60)
    timeouts = Timeouts()
    channel = registry.add_sender("s", timeouts)
    assert len(clock.getDelayedCalls()) == 1
    registry.claim(channel)
    assert clock.getDelayedCalls() == []
    clock.advance(10_000)
    assert timeouts.calls == []


def test_claim_unknown_channel():
    """Claiming a channel nobody holds raises UnknownChannel."""
    registry, _ = make()
    with pytest.raises(UnknownChannel):
        registry.claim(7)
    registry.add_sender("s", Timeouts())
    with pytest.raises(UnknownChannel):
        registry.claim(123456)


def test_claim_twice_is_in_use():
    """A second receiver with the same code hears "in use", not "unknown", and does not get the sender."""
    registry, _ = make()
    channel = registry.add_sender("s", Timeouts())
    registry.claim(channel)
    with pytest.raises(ChannelInUse):
        registry.claim(channel)
    with pytest.raises(ChannelInUse):
        registry.claim(channel)


def test_unknown_and_in_use_are_distinct():
    """UnknownChannel and ChannelInUse are different errors (both LookupErrors)."""
    assert not issubclass(UnknownChannel, ChannelInUse)
    assert not issubclass(ChannelInUse, UnknownChannel)
    assert issubclass(UnknownChannel, LookupError)
    assert issubclass(ChannelInUse, LookupError)


def test_claimed_channel_stays_taken_until_release():
    """A paired sender's channel is not handed to a new sender until the first sender leaves."""
    rnd = ScriptedRandom(0, 0, 1, 0)
    registry, clock = make(randbelow=rnd)
    channel = registry.add_sender("first", Timeouts())
    assert channel == 1
    registry.claim(channel)
    assert len(registry) == 1
    second = registry.add_sender("second", Timeouts())
    assert second == 2  # 1 was drawn but is still taken
    registry.release(channel)
    with pytest.raises(UnknownChannel):
        registry.claim(channel)
    clock.advance(registry.cooldown)
    assert registry.add_sender("third", Timeouts()) == 1


def test_release_waiting_sender():
    """A sender leaving before pairing frees its channel and its timer never fires."""
    registry, clock = make(wait_timeout=60)
    timeouts = Timeouts()
    channel = registry.add_sender("s", timeouts)
    registry.release(channel)
    assert len(registry) == 0
    assert registry.waiting_count == 0
    assert clock.getDelayedCalls() == []
    with pytest.raises(UnknownChannel):
        registry.claim(channel)
    clock.advance(10_000)
    assert timeouts.calls == []


def test_release_is_idempotent():
    """Releasing a channel twice, or one never allocated, is harmless."""
    registry, _ = make()
    channel = registry.add_sender("s", Timeouts())
    other = registry.add_sender("t", Timeouts())
    registry.claim(channel)
    registry.release(channel)
    registry.release(channel)
    registry.release(999_999)
    assert len(registry) == 1
    assert registry.claim(other) == "t"


def test_release_frees_the_number():
    """A released channel number can be allocated again."""
    rnd = ScriptedRandom(4, 4)
    registry, clock = make(randbelow=rnd)
    channel = registry.add_sender("a", Timeouts())
    assert channel == 5
    registry.release(channel)
    clock.advance(registry.cooldown)
    assert registry.add_sender("b", Timeouts()) == 5
    assert registry.claim(5) == "b"


def test_released_number_rests_before_reuse():
    """A freed number is not handed out again during the cooldown, so a late receiver cannot spend a newcomer's code."""
    rnd = ScriptedRandom(4, 4, 0, 4)
    registry, clock = make(randbelow=rnd)
    assert registry.add_sender("a", Timeouts()) == 5
    registry.release(5)
    clock.advance(registry.cooldown - 1)
    assert registry.add_sender("b", Timeouts()) == 1  # 5 was drawn, but rests
    with pytest.raises(UnknownChannel):
        registry.claim(5)
    clock.advance(1)
    assert registry.add_sender("c", Timeouts()) == 5


# ---------------------------------------------------------------------------
# wait timeout


def test_wait_timeout_fires_on_time():
    """An unclaimed sender's on_timeout is called with it after wait_timeout seconds, and not before."""
    registry, clock = make(wait_timeout=30)
    timeouts = Timeouts()
    sender = object()
    registry.add_sender(sender, timeouts)
    clock.advance(29.999)
    assert timeouts.calls == []
    clock.advance(0.001)
    assert timeouts.calls == [sender]
    clock.advance(10_000)
    assert timeouts.calls == [sender]


def test_default_wait_timeout_is_one_hour():
    """By default a sender may wait an hour."""
    registry, clock = make(wait_timeout=3600.0)
    timeouts = Timeouts()
    registry.add_sender("s", timeouts)
    clock.advance(3599)
    assert timeouts.calls == []
    clock.advance(1)
    assert timeouts.calls == ["s"]
    assert ChannelRegistry(Clock()).wait_timeout == 3600.0


def test_wait_timeout_per_sender():
    """Each sender's timer runs from when it arrived and calls its own on_timeout."""
    registry, clock = make(wait_timeout=10)
    t1, t2 = Timeouts(), Timeouts()
    registry.add_sender("one", t1)
    clock.advance(4)
    registry.add_sender("two", t2)
    clock.advance(6)
    assert (t1.calls, t2.calls) == (["one"], [])
    clock.advance(4)
    assert (t1.calls, t2.calls) == (["one"], ["two"])


def test_timed_out_sender_no_longer_waiting():
    """A timed-out sender cannot be claimed and is no longer listed as waiting."""
    registry, clock = make(wait_timeout=5)
    channel = registry.add_sender("s", Timeouts())
    registry.add_sender("other", Timeouts())
    clock.advance(4)
    registry.add_sender("late", Timeouts())
    clock.advance(1)
    assert sorted(registry.waiting()) == ["late"]
    assert registry.waiting_count == 1
    # Still taken (the sender's connection has not ended yet): "in use".
    with pytest.raises(ChannelInUse):
        registry.claim(channel)
    # The channel stays taken until the caller releases it.
    registry.release(channel)
    with pytest.raises(UnknownChannel):
        registry.claim(channel)


def test_timed_out_channel_not_reused_before_release():
    """A timed-out sender's number is not handed out again until its connection is released."""
    rnd = ScriptedRandom(0, 0, 1, 0)
    registry, clock = make(wait_timeout=5, randbelow=rnd)
    assert registry.add_sender("a", Timeouts()) == 1
    clock.advance(5)
    assert registry.add_sender("b", Timeouts()) == 2
    registry.release(1)
    clock.advance(registry.cooldown)
    assert registry.add_sender("c", Timeouts()) == 1


def test_no_timeout_after_claim_or_release():
    """Senders that were claimed or left never time out."""
    registry, clock = make(wait_timeout=5)
    claimed, released, waiting = Timeouts(), Timeouts(), Timeouts()
    c1 = registry.add_sender("claimed", claimed)
    c2 = registry.add_sender("released", released)
    registry.add_sender("waiting", waiting)
    registry.claim(c1)
    registry.release(c2)
    clock.advance(100)
    assert claimed.calls == []
    assert released.calls == []
    assert waiting.calls == ["waiting"]


def test_release_after_timeout_and_after_claim():
    """Releasing after a timeout or after a claim does not raise (timers already spent)."""
    registry, clock = make(wait_timeout=5)
    a = registry.add_sender("a", Timeouts())
    b = registry.add_sender("b", Timeouts())
    registry.claim(b)
    clock.advance(5)
    registry.release(a)
    registry.release(b)
    assert len(registry) == 0
    assert clock.getDelayedCalls() == []


def test_wait_timeout_none_never_expires():
    """With wait_timeout=None a sender waits forever and no timer is scheduled."""
    registry, clock = make(wait_timeout=None)
    timeouts = Timeouts()
    channel = registry.add_sender("s", timeouts)
    assert clock.getDelayedCalls() == []
    clock.advance(10**9)
    assert timeouts.calls == []
    assert registry.claim(channel) == "s"
    registry.release(channel)


def test_stop_cancels_all_timers():
    """Stopping the registry cancels every wait timer, so none fires afterwards."""
    registry, clock = make(wait_timeout=5)
    timeouts = Timeouts()
    channels = [registry.add_sender(i, timeouts) for i in range(4)]
    registry.claim(channels[0])
    registry.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert timeouts.calls == []
    # Claiming and releasing after stop still work without errors.
    assert registry.claim(channels[1]) == 1
    for c in channels:
        registry.release(c)
    assert len(registry) == 0


def test_stop_with_nothing_waiting():
    """Stopping an empty registry (or one with no timers) is harmless."""
    registry, clock = make()
    registry.stop()
    registry2, _ = make(wait_timeout=None)
    registry2.add_sender("s", Timeouts())
    registry2.stop()
    assert clock.getDelayedCalls() == []


# ---------------------------------------------------------------------------
# waiting / waiting_count


def test_waiting_lists_unpaired_senders():
    """waiting() and waiting_count list exactly the senders not yet paired, for a shutdown to notify."""
    registry, _ = make()
    assert registry.waiting() == []
    assert registry.waiting_count == 0
    a = registry.add_sender("a", Timeouts())
    registry.add_sender("b", Timeouts())
    c = registry.add_sender("c", Timeouts())
    assert sorted(registry.waiting()) == ["a", "b", "c"]
    assert registry.waiting_count == 3
    registry.claim(a)
    assert sorted(registry.waiting()) == ["b", "c"]
    assert registry.waiting_count == 2
    assert len(registry) == 3
    registry.release(c)
    assert registry.waiting() == ["b"]
    assert registry.waiting_count == 1
    assert len(registry) == 2


def test_lengths_follow_many_releases_and_rests():
    """Thousands of senders come and go within one cooldown: codes grow a
    digit as resting channels fill a length, and shrink back once those
    channels have rested, released a few at a time."""
    clock = Clock()
    registry = ChannelRegistry(clock, randbelow=random.Random(7).randrange)
    lengths = []
    for _ in range(3000):
        channel = registry.add_sender(object(), Timeouts())
        lengths.append(len(str(channel)))
        registry.release(channel)
        clock.advance(0.01)
    # 5 one-digit, 45 two-digit, 450 three-digit, then four digits
    assert lengths[:5] == [1] * 5 and lengths[5:50] == [2] * 45 and lengths[50:500] == [3] * 450
    assert set(lengths[500:]) == {4}
    clock.advance(registry.cooldown - 15)  # the first 1,500 have rested
    again = [len(str(registry.add_sender(object(), Timeouts()))) for _ in range(6)]
    assert again == [1, 1, 1, 1, 1, 2]
