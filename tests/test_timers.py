"""Deadlines: a timer wheel whose due() looks only at what is due."""

from __future__ import annotations

import math
import random

import pytest

from socketlab.timers import BUCKET, Deadlines


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


def test_moved_deadlines_leave_nothing_behind() -> None:
    """Members that keep moving their deadline on (an active member's keepalive) cost no work when the old
    deadlines come, and the buckets kept stay bounded by the span of the deadlines, not by the moves."""
    timers: Deadlines[int] = Deadlines()
    now = 0.0
    for step in range(20_000):
        now = step / 1000
        timers.schedule(step % 100, now + 5.0)
        if step % 50 == 0:
            assert timers.due(now) == []
    assert len(timers) == 100
    assert len(timers._buckets) <= (5.0 + 0.05) / BUCKET + 2 and len(timers._order) == len(timers._buckets)
    assert timers.next_time() == 5.0 + 19_900 / 1000


def test_due_with_a_limit_takes_the_earliest_and_leaves_the_rest_due() -> None:
    timers: Deadlines[str] = Deadlines()
    for name, when in (("c", 0.5), ("a", 0.1), ("b", 0.1 + BUCKET / 2), ("d", 2.0)):
        timers.schedule(name, when)
    assert timers.due(1.0, limit=2) == ["a", "b"]
    assert timers.due(1.0, limit=2) == ["c"]
    assert timers.due(1.0, limit=2) == [] and timers.next_time() == 2.0


def test_items_need_not_be_comparable() -> None:
    """Two deadlines at the same time never compare their items (connections are not orderable)."""
    timers: Deadlines[object] = Deadlines()
    first, second = object(), object()
    timers.schedule(first, 1.0)
    timers.schedule(second, 1.0)
    assert set(timers.due(1.0)) == {first, second}


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
            got = timers.due(now, limit=rng.choice([None, 3, 1_000]))
            expected = expected[: len(got)]
            assert [when for when, _ in expected] == sorted(plain[item] for item in got)
            assert sorted(got) == sorted(item for _, item in expected)
            for item in got:
                del plain[item]


def test_a_deadline_that_never_comes_and_one_that_cannot_be() -> None:
    """math.inf is a deadline that never comes (an idle timeout of inf, say); NaN is refused, changing nothing."""
    timers: Deadlines[str] = Deadlines()
    timers.schedule("never", math.inf)
    timers.schedule("far", 1e308)
    timers.schedule("soon", 1.0)
    assert timers.due(1e300) == ["soon"] and timers.next_time() is None
    timers.schedule("soon", -math.inf)
    assert timers.due(0.0) == ["soon"]
    with pytest.raises(ValueError):
        timers.schedule("never", math.nan)
    assert "never" in timers and len(timers) == 2
    timers.cancel("never")
    timers.cancel("far")
    assert len(timers) == 0 and timers.next_time() is None
