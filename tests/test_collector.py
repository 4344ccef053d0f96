"""ArrivalFreezer: members that arrived are frozen out of the collector's walks at once, and what departed
members might leave in reference cycles is reclaimed once as many have gone as were frozen."""

from __future__ import annotations

import gc
from typing import Iterator

import pytest

from socketlab.collector import ArrivalFreezer


class Cyclic:
    """A member's objects as they leave them: a reference cycle that only the collector frees."""

    instances = 0

    def __init__(self) -> None:
        self.me = self
        Cyclic.instances += 1

    def __del__(self) -> None:
        Cyclic.instances -= 1


@pytest.fixture
def clean_collector() -> Iterator[None]:
    """No automatic collection during a test: only the freezer's own (and the test's) collect."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()
    gc.unfreeze()
    gc.collect()


def test_each_arrival_and_each_join_is_frozen_at_once(clean_collector) -> None:
    """New connections, and what their handshakes and joins build, are frozen before any collection walks
    them, however few come at a time, and whether or not others have left meanwhile."""
    freezer = ArrivalFreezer()
    before = gc.get_freeze_count()
    accepted = [Cyclic() for _ in range(3)]
    assert walked(accepted) == len(accepted)  # in the collector's generations
    freezer.arrived(3)
    assert freezer.freezes == 1 and walked(accepted) == 0 and gc.get_freeze_count() >= before + len(accepted)
    freezer.departed()
    joined = [Cyclic()]
    freezer.built()
    assert freezer.freezes == 2 and walked(joined) == 0
    later = [Cyclic()]
    freezer.arrived(1)
    assert freezer.freezes == 3 and walked(later) == 0


class Plain:
    """A member's objects as they leave them now: freed by reference counting."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}


def test_the_young_generation_stays_small_under_churn(clean_collector) -> None:
    """Departed members freed by reference counting count as deallocations, which hold young collections
    off while the youngest generation grows: a freeze per arrival keeps it as small as one arrival."""
    gc.enable()
    freezer = ArrivalFreezer()
    crowd = [[Plain() for _ in range(50)] for _ in range(200)]
    freezer.arrived(len(crowd))
    sizes = []
    for _ in range(150):  # each one out (freed by reference counting), a new one in
        crowd.pop(0)
        freezer.departed()
        crowd.append([Plain() for _ in range(50)])
        freezer.arrived(1)
        sizes.append(len(gc.get_objects(0)))
    assert max(sizes) < 200, max(sizes)
    assert freezer.unfreezes == 0


def test_steady_churn_opens_the_valve_once_per_turnover(clean_collector) -> None:
    """With as many arriving as leaving, departures reach the crowd's size once per turnover."""
    freezer = ArrivalFreezer()
    freezer.arrived(100)
    for _ in range(99):
        freezer.departed()
        freezer.arrived(1)
    assert freezer.unfreezes == 0
    freezer.departed()  # the 100th departure: a crowd's worth
    assert freezer.unfreezes == 1
    gc.collect()  # the collector's full collection lets freezing resume
    freezer.arrived(1)
    for _ in range(99):
        freezer.departed()
        freezer.arrived(1)
    assert freezer.unfreezes == 1
    freezer.departed()
    assert freezer.unfreezes == 2


def test_a_crowd_that_leaves_at_once_opens_the_valve_only_as_its_last_member_goes(clean_collector) -> None:
    freezer = ArrivalFreezer()
    freezer.arrived(1000)
    freezer.departed(999)
    assert freezer.unfreezes == 0
    freezer.departed()
    assert freezer.unfreezes == 1


def walked(objects: list[object]) -> int:
    """How many of *objects* are in a generation the collector walks (not frozen)."""
    ids = {id(item) for item in objects}
    return sum(1 for item in gc.get_objects() if id(item) in ids)


def test_departed_members_cycles_are_reclaimed_once_the_frozen_crowd_has_turned_over(clean_collector) -> None:
    """Frozen, a departed member's cycle survives a full collection; once departures reach the frozen
    arrivals, everything is unfrozen and the next full collection frees it."""
    freezer = ArrivalFreezer()
    members = [Cyclic() for _ in range(8)]
    start = Cyclic.instances
    freezer.arrived(8)
    del members[:1]
    freezer.departed()
    gc.collect()
    assert Cyclic.instances == start  # frozen: not reclaimed yet
    freezer.departed(6)  # 7 of 8 gone (or replaced): not yet
    assert freezer.unfreezes == 0
    freezer.departed()  # 8 of 8
    assert freezer.unfreezes == 1
    gc.collect()
    assert Cyclic.instances == start - 1
    assert len(members) == 7


def test_the_share_that_unfreezes_is_a_setting(clean_collector) -> None:
    freezer = ArrivalFreezer(unfreeze_share=0.25)
    freezer.arrived(8)
    freezer.departed()
    assert freezer.unfreezes == 0
    freezer.departed()  # 2 of 8: a quarter
    assert freezer.unfreezes == 1


def test_departures_before_any_arrival_do_nothing(clean_collector) -> None:
    freezer = ArrivalFreezer()
    freezer.departed(5)
    assert (freezer.freezes, freezer.unfreezes) == (0, 0)


def test_nothing_is_frozen_again_before_a_full_collection_reclaims_what_was_unfrozen(clean_collector) -> None:
    """Else the departed members' cycles, unfrozen, would be frozen again by the next arrivals, and a server
    under churn would keep them for good."""
    freezer = ArrivalFreezer()
    members = [Cyclic() for _ in range(4)]
    start = Cyclic.instances
    freezer.arrived(4)
    members.clear()
    freezer.departed(4)
    assert (freezer.freezes, freezer.unfreezes) == (1, 1)
    freezer.arrived(4)
    assert freezer.freezes == 1  # waits for the collector
    gc.collect()
    assert Cyclic.instances == start - 4
    freezer.arrived(0)
    assert freezer.freezes == 2
