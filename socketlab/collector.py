"""Python's cyclic garbage collector and thousands of long-lived connections.

CPython collects its oldest generation whenever that has grown by a quarter
since the last full collection, and a full collection walks every object the
collector tracks. A server that takes 19,000 members in a few seconds grows
its oldest generation by a quarter again and again: measured at 19,000
WebSocket members, ten full collections during the storm, about 1.5 s of the
server's 5 s of CPU there, the last one 360 ms long -- walking members that
are all alive.

:class:`ArrivalFreezer` moves what exists into the collector's permanent
generation (``gc.freeze()``) every FREEZE_EVERY arrivals, after a young
collection so that fresh garbage is not frozen: members that arrived are not
walked again while they live. What a departed member leaves in reference
cycles (websockets' protocol and its parser refer to each other) is not
reclaimed while frozen, though; so once departures reach a quarter of the
arrivals frozen, everything is unfrozen (``gc.unfreeze()``) and the
collector's own rule takes over again: the next full collection returns the
departed members' memory, as it would have without freezing, and nothing is
frozen again before that collection has run (else what it was to reclaim
would be frozen again: measured, a server under a churn of 150 connections a
second grew by 11 MiB in a minute, against 4 MiB without freezing). Memory
held by departed members is thus bounded by a quarter of the members, as
with the collector's own rule.

The process-wide collector is shared: a process that runs several servers
(tests) freezes for all of them, which is harmless. Thread-safe.
"""

from __future__ import annotations

import gc
import threading

#: Arrivals between two freezes (a few seconds of a storm; rare otherwise).
FREEZE_EVERY = 1000
#: Departures, as a share of the arrivals frozen, after which everything is unfrozen.
UNFREEZE_SHARE = 0.25


class ArrivalFreezer:
    """Counts arrivals and departures of connections; freezes and unfreezes the collector's old objects."""

    def __init__(self, freeze_every: int = FREEZE_EVERY, unfreeze_share: float = UNFREEZE_SHARE) -> None:
        self.freeze_every = freeze_every
        self.unfreeze_share = unfreeze_share
        self._lock = threading.Lock()
        #: Arrivals since the last freeze; arrivals frozen (since the last unfreeze); departures since then.
        self._arrivals = 0
        self._frozen = 0
        self._departures = 0
        #: The collector's count of full collections when it last unfroze (None: no collection awaited).
        self._unfrozen_at: int | None = None
        #: How many times it froze and unfroze (for tests and diagnostics).
        self.freezes = 0
        self.unfreezes = 0

    def arrived(self, count: int) -> None:
        """*count* connections arrived."""
        with self._lock:
            self._arrivals += count
            if self._arrivals < self.freeze_every:
                return
            if self._unfrozen_at is not None:
                if _full_collections() <= self._unfrozen_at:
                    return  # what was unfrozen is not reclaimed yet
                self._unfrozen_at = None
            gc.collect(1)  # the young generations' garbage is not frozen with the rest
            gc.freeze()
            self._frozen += self._arrivals
            self._arrivals = 0
            self.freezes += 1

    def departed(self, count: int = 1) -> None:
        """*count* connections ended."""
        with self._lock:
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
