"""Python's cyclic garbage collector and thousands of long-lived connections.

Every object the collector tracks is walked when it is young (a young
collection every 700 new objects), again when it moves to the oldest
generation, and then at every full collection -- which CPython runs whenever
that generation has grown by a quarter since the last one. A server that
takes 19,000 members in a few seconds makes a hundred or so such objects per
member, all alive: measured at 19,000 WebSocket members before this module,
ten full collections during the storm, about 1.5 s of the server's 5 s of CPU
there; with freezes every 1,000 arrivals, still 0.6-0.9 s of young and full
collections, none of which found any garbage.

:class:`ArrivalFreezer` moves what exists into the collector's permanent
generation (``gc.freeze()``, which costs the same whatever it moves) as
members arrive -- every accepted batch, and every handshake or join that
built more (``built()``) -- so that they are not walked again while they
live.

A departed member's objects are freed by reference counting, frozen or not:
no transport leaves a reference cycle behind (tests/test_departures_freed.py
tries each way to leave, over each transport and in a cluster, with the
collector off). So nothing waits to be collected before a freeze. It did
when departures left cycles: a freeze then waited for 1,000 arrivals and
collected the young generations first. But the collector starts a young
collection only when allocations outnumber deallocations by 700, and
departed members freed by reference counting count as deallocations: under
churn the youngest generation grew to 50,000-100,000 objects between
collections, and each walk of them stalled the server for 15-80 ms
(measured with 10,000 Socket.IO members, 100 replaced a second).

What a path the tests do not know might leave in cycles would not be
reclaimed while frozen, though; so once departures (closed connections)
reach the most connections there were since the last unfreeze -- the crowd
has turned over once -- everything is unfrozen (``gc.unfreeze()``) and the collector's own rule
takes over again: its next full collection reclaims any such cycles, and
nothing is frozen again before that collection has run (else what it was to
reclaim would be frozen again). That collection walks every live object, a
pause that grows with the members. Measured with 19,000 WebSocket members
and 150 of them replaced every second for 150 s: when departures left
cycles and a quarter turning over unfroze, six full collections of
0.50-0.64 s, one every 20 s, and 200 MiB; with no cycles and this valve,
none, and 164 MiB. A crowd that leaves at once reaches the valve only as
its last members go, when little is left to walk. Memory held by cycles of
departed members, if any path leaves them, is bounded by the members that
departed since the last unfreeze.

The process-wide collector is shared: a process that runs several servers
(tests) freezes for all of them, which is harmless. Thread-safe.
"""

from __future__ import annotations

import gc
import threading

#: Departures, as a share of the most connections present since the last unfreeze, after which everything
#: is unfrozen (a safety valve).
UNFREEZE_SHARE = 1.0


class ArrivalFreezer:
    """Counts connections that arrive and close; freezes and unfreezes the collector's objects."""

    def __init__(self, unfreeze_share: float = UNFREEZE_SHARE) -> None:
        self.unfreeze_share = unfreeze_share
        self._lock = threading.Lock()
        #: Connections present (arrived, not yet closed), and the most there were since the last unfreeze.
        self._present = 0
        self._peak = 0
        #: Departures since the last unfreeze.
        self._departures = 0
        #: The collector's count of full collections when it last unfroze (None: no collection awaited).
        self._unfrozen_at: int | None = None
        #: How many times it froze and unfroze (for tests and diagnostics).
        self.freezes = 0
        self.unfreezes = 0

    def arrived(self, count: int) -> None:
        """*count* connections were accepted: freeze what exists."""
        with self._lock:
            self._present += count
            self._peak = max(self._peak, self._present)
            self._freeze()

    def built(self) -> None:
        """Connections already counted built more objects (a handshake done, a member joined): freeze them."""
        with self._lock:
            self._freeze()

    def _freeze(self) -> None:
        if self._unfrozen_at is not None:
            if _full_collections() <= self._unfrozen_at:
                return  # what was unfrozen is not reclaimed yet
            self._unfrozen_at = None
        gc.freeze()
        self.freezes += 1

    def departed(self, count: int = 1) -> None:
        """*count* connections closed (members or not): once as many have closed as the most there were
        since the last unfreeze, unfreeze (the safety valve)."""
        with self._lock:
            self._present = max(0, self._present - count)
            self._departures += count
            if not self._peak or self._departures < self.unfreeze_share * self._peak:
                return
            gc.unfreeze()
            self._unfrozen_at = _full_collections()
            self._departures = 0
            self._peak = self._present
            self.unfreezes += 1


def _full_collections() -> int:
    """How many times the collector has collected its oldest generation in this process."""
    return int(gc.get_stats()[-1]["collections"])
