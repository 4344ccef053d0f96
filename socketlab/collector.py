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
members arrive, so that they are not walked again while they live:

* While no connection has closed since the last freeze, nothing can have
  become cyclic garbage, so every arrival freezes at once, before any
  collection walks the new objects, and so does every handshake or join that
  built more (``built()``).
* Once a connection has closed, the next freeze waits for FREEZE_EVERY
  arrivals and collects the young generations first (``gc.collect(1)``), so
  that fresh garbage is not frozen.

A departed member's objects are freed by reference counting, frozen or not:
no transport leaves a reference cycle behind (tests/test_departures_freed.py
tries each way to leave, over each transport, with the collector off). What
a path the tests do not know might leave in cycles would not be reclaimed
while frozen, though; so once departures (closed connections) reach the
number of arrivals frozen -- the crowd has turned over once -- everything is
unfrozen (``gc.unfreeze()``) and the collector's own rule takes over again:
its next full collection reclaims any such cycles, and nothing is frozen
again before that collection has run (else what it was to reclaim would be
frozen again). That collection walks every live object, a pause that grows
with the members. Measured with 19,000 WebSocket members and 150 of them
replaced every second for 150 s: when departures left cycles and a quarter
turning over unfroze, six full collections of 0.50-0.64 s, one every 20 s,
and 200 MiB; now none, and 164 MiB. A crowd that leaves at once reaches the
valve only as its last members go, when little is left to walk. Memory held
by cycles of departed members, if any path leaves them, is bounded by the
members that departed since the last unfreeze.

The process-wide collector is shared: a process that runs several servers
(tests) freezes for all of them, which is harmless. Thread-safe.
"""

from __future__ import annotations

import gc
import threading

#: Arrivals between two freezes (a few seconds of a storm; rare otherwise).
FREEZE_EVERY = 1000
#: Departures, as a share of the arrivals frozen, after which everything is unfrozen (a safety valve).
UNFREEZE_SHARE = 1.0


class ArrivalFreezer:
    """Counts connections that arrive and close; freezes and unfreezes the collector's objects."""

    def __init__(self, freeze_every: int = FREEZE_EVERY, unfreeze_share: float = UNFREEZE_SHARE) -> None:
        self.freeze_every = freeze_every
        self.unfreeze_share = unfreeze_share
        self._lock = threading.Lock()
        #: Arrivals since the last freeze; arrivals frozen (since the last unfreeze); departures since then.
        self._arrivals = 0
        self._frozen = 0
        self._departures = 0
        #: A connection may have closed since the last collection before a freeze (garbage may be young).
        self._closed_since = True
        #: The collector's count of full collections when it last unfroze (None: no collection awaited).
        self._unfrozen_at: int | None = None
        #: How many times it froze and unfroze (for tests and diagnostics).
        self.freezes = 0
        self.unfreezes = 0

    def arrived(self, count: int) -> None:
        """*count* connections were accepted."""
        with self._lock:
            self._arrivals += count
            self._freeze()

    def built(self) -> None:
        """Connections already counted built more objects (a handshake done, a member joined)."""
        with self._lock:
            if not self._closed_since:
                self._freeze()

    def _freeze(self) -> None:
        if self._unfrozen_at is not None:
            if _full_collections() <= self._unfrozen_at:
                return  # what was unfrozen is not reclaimed yet
            self._unfrozen_at = None
        if self._closed_since:
            if self._arrivals < self.freeze_every:
                return
            gc.collect(1)  # the young generations' garbage is not frozen with the rest
            self._closed_since = False
        gc.freeze()
        self._frozen += self._arrivals
        self._arrivals = 0
        self.freezes += 1

    def garbage_possible(self) -> None:
        """Something that may leave cycles ended without a connection closing (a Socket.IO session whose
        kept-alive connection stays): the next freeze collects the young generations first."""
        with self._lock:
            self._closed_since = True

    def departed(self, count: int = 1) -> None:
        """*count* connections closed (members or not): what they leave may be garbage from now on."""
        with self._lock:
            self._closed_since = True
            if not self._frozen:
                return
            self._departures += count
            if self._departures < self.unfreeze_share * self._frozen:
                return
            gc.unfreeze()
            self._unfrozen_at = _full_collections()
            self._frozen = self._departures = 0
            self.unfreezes += 1


def _full_collections() -> int:
    """How many times the collector has collected its oldest generation in this process."""
    return int(gc.get_stats()[-1]["collections"])
