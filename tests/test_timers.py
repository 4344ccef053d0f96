"""Deadlines: a heap of timers whose due() looks only at what is due."""

from __future__ import annotations

import random

from socketlab.timers import Deadlines


def test_due_returns_what_has_come_earliest_first_and_forgets_it() -> None:
    timers: Deadlines[str] = Deadlines()
    timers.schedule("b", 2.0)
    timers.schedule("a", 1.0)
    timers.schedule("c", 3.0)
    assert timers.due(0.5) == []
    assert timers.due(2.0) == ["a", "b"]
    assert "a" not in timers and "c" in timers and len(timers) == 1
    assert timers.next_time() == 3.0
    assert timers.due(10.0) == ["c"]
    assert timers.next_time() is None


def test_scheduling_again_replaces_and_cancel_removes() -> None:
    timers: Deadlines[str] = Deadlines()
    timers.schedule("a", 1.0)
    timers.schedule("a", 5.0)  # moved later: the old entry is stale
    timers.schedule("b", 2.0)
    timers.cancel("b")
    assert timers.due(4.0) == []
    timers.earliest("a", 6.0)  # not earlier: kept at 5
    assert timers.next_time() == 5.0
    timers.earliest("a", 3.0)
    assert timers.due(3.0) == ["a"]


def test_stale_entries_do_not_pile_up() -> None:
    """Rescheduling one item many times keeps the heap small."""
    timers: Deadlines[int] = Deadlines()
    for step in range(10_000):
        timers.schedule(step % 10, float(step))
    assert len(timers) == 10
    assert len(timers._heap) <= 2 * 10 + 64 + 1


def test_against_a_sorted_list_of_random_schedules() -> None:
    """Differential: whatever the order of schedules and cancels, due() is what a plain dict says."""
    rng = random.Random(7)
    timers: Deadlines[int] = Deadlines()
    plain: dict[int, float] = {}
    now = 0.0
    for _ in range(5_000):
        item = rng.randrange(200)
        action = rng.random()
        if action < 0.6:
            when = now + rng.random() * 10
            timers.schedule(item, when)
            plain[item] = when
        elif action < 0.7:
            timers.cancel(item)
            plain.pop(item, None)
        else:
            now += rng.random()
            expected = sorted((when, item) for item, when in plain.items() if when <= now)
            got = timers.due(now)
            assert [when for when, _ in expected] == sorted(plain[item] for item in got)
            assert sorted(got) == sorted(item for _, item in expected)
            for item in got:
                del plain[item]
