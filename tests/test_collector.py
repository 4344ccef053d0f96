"""ArrivalFreezer: members that arrived are frozen out of the collector's walks, and what departed members
might leave in reference cycles is reclaimed once as many have gone as were frozen."""

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


def test_arrivals_are_frozen_every_so_many(clean_collector) -> None:
    freezer = ArrivalFreezer(freeze_every=10)
    members = [Cyclic() for _ in range(10)]
    before = gc.get_freeze_count()
    freezer.arrived(9)
    assert freezer.freezes == 0 and gc.get_freeze_count() == before
    assert walked(members) == len(members)  # in the collector's generations
    freezer.arrived(1)
    assert freezer.freezes == 1 and gc.get_freeze_count() >= before + len(members)
    assert walked(members) == 0  # frozen: no collection walks them


def test_while_no_connection_closes_each_arrival_and_each_join_is_frozen_at_once(clean_collector) -> None:
    """A storm of arrivals: nothing can be garbage yet, so new connections, and what their handshakes and
    joins build, are frozen before any collection walks them, however few come at a time."""
    freezer = ArrivalFreezer(freeze_every=10)
    freezer.built()  # nothing frozen yet: the first freeze waits for freeze_every arrivals
    assert freezer.freezes == 0
    freezer.arrived(10)  # the first freeze collects the young generations first
    assert freezer.freezes == 1
    accepted = [Cyclic()]
    freezer.arrived(1)
    assert freezer.freezes == 2 and walked(accepted) == 0
    joined = [Cyclic()]
    assert walked(joined) == 1
    freezer.built()
    assert freezer.freezes == 3 and walked(joined) == 0


def test_after_a_connection_closes_the_next_freeze_waits_and_collects_first(clean_collector) -> None:
    """What a closed connection left in cycles is reclaimed by the young collection before the freeze,
    not frozen with the members that arrived after it."""
    freezer = ArrivalFreezer(freeze_every=10)
    freezer.arrived(10)
    start = Cyclic.instances
    left = [Cyclic()]
    left.clear()  # a cycle: garbage only the collector frees
    freezer.departed()  # 1 of 10: not yet all
    assert freezer.unfreezes == 0
    freezer.arrived(9)
    freezer.built()
    assert freezer.freezes == 1 and Cyclic.instances == start + 1
    freezer.arrived(1)
    assert freezer.freezes == 2 and Cyclic.instances == start


def walked(objects: list[object]) -> int:
    """How many of *objects* are in a generation the collector walks (not frozen)."""
    ids = {id(item) for item in objects}
    return sum(1 for item in gc.get_objects() if id(item) in ids)


def test_departed_members_cycles_are_reclaimed_once_the_frozen_crowd_has_turned_over(clean_collector) -> None:
    """Frozen, a departed member's cycle survives a full collection; once departures reach the frozen
    arrivals, everything is unfrozen and the next full collection frees it."""
    freezer = ArrivalFreezer(freeze_every=8)
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
    freezer = ArrivalFreezer(freeze_every=8, unfreeze_share=0.25)
    freezer.arrived(8)
    freezer.departed()
    assert freezer.unfreezes == 0
    freezer.departed()  # 2 of 8: a quarter
    assert freezer.unfreezes == 1


def test_departures_without_a_freeze_do_nothing(clean_collector) -> None:
    freezer = ArrivalFreezer(freeze_every=100)
    freezer.arrived(5)
    freezer.departed(5)
    assert (freezer.freezes, freezer.unfreezes) == (0, 0)


def test_nothing_is_frozen_again_before_a_full_collection_reclaims_what_was_unfrozen(clean_collector) -> None:
    """Else the departed members' cycles, unfrozen, would be frozen again by the next arrivals, and a server
    under churn would keep them for good."""
    freezer = ArrivalFreezer(freeze_every=4)
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


def test_garbage_possible_without_a_close_makes_the_next_freeze_wait_and_collect(clean_collector) -> None:
    """A session that ended on a connection still open: the next freeze waits for freeze_every arrivals
    and collects the young generations first, as after a close, without counting a departure."""
    freezer = ArrivalFreezer(freeze_every=10)
    freezer.arrived(10)
    start = Cyclic.instances
    left = [Cyclic()]
    left.clear()
    freezer.garbage_possible()
    freezer.built()
    assert freezer.freezes == 1 and Cyclic.instances == start + 1  # not frozen at once
    freezer.arrived(10)
    assert freezer.freezes == 2 and Cyclic.instances == start  # collected, then frozen
    assert freezer.unfreezes == 0
