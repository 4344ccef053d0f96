"""Deadlines: many timers, each costing nothing until it is due.

A server with 19,000 members must not look at each of them on every tick to
find the few whose idle timeout, keepalive ping or polling deadline has come.
:class:`Deadlines` is a timer wheel: deadlines sit in buckets of
:data:`BUCKET` seconds, and a heap orders the buckets (not the deadlines), so
a tick looks only at the buckets that have come, and moving or cancelling a
deadline is a dictionary operation that leaves nothing behind.

That matters after a storm: every member that connects gets a handshake
deadline that its opening moves on to a keepalive one. A heap of deadlines
keeps the moved entries until they surface -- 19,000 of them surfacing over
the few seconds the storm lasted, tens of milliseconds of work per tick
while members were talking (measured: the chat's p99 latency at 19,000
WebSocket members). Here a moved deadline is gone at once.

An item has at most one live deadline: scheduling it again replaces the old
one. The usual pattern is to let a deadline fire early and have the item say
when it is due next -- an idle timer set for ``last_active + timeout`` fires,
finds the member active since, and is scheduled again for the new
``last_active + timeout`` -- so the hot path (a message arriving) never
touches the timers.

Not thread-safe: the caller serialises (the chat server holds its lock).
"""

from __future__ import annotations

import heapq
import math
import sys
from typing import Generic, Hashable, TypeVar

T = TypeVar("T", bound=Hashable)

#: Width of a bucket (seconds): deadlines in one bucket are ordered only when it comes due.
BUCKET = 1 / 64
#: The bucket of the deadlines that never come (and of any too far off to number).
_LAST = sys.maxsize


class Deadlines(Generic[T]):
    """Items with a deadline each; ``due(now)`` takes out those whose deadline has passed."""

    def __init__(self) -> None:
        #: Each item's live deadline.
        self._when: dict[T, float] = {}
        #: Bucket number -> the items whose deadline falls in it (and their deadlines).
        self._buckets: dict[int, dict[T, float]] = {}
        #: The numbers of the buckets, a heap; each number is in it once, while its bucket exists.
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, item: object) -> bool:
        return item in self._when

    def schedule(self, item: T, when: float) -> None:
        """Give *item* the deadline *when*, replacing any it had (``math.inf``: one that never comes)."""
        number = _bucket(when)  # first: a deadline it cannot take changes nothing
        old = self._when.get(item)
        if old == when:
            return
        if old is not None:
            self._buckets[_bucket(old)].pop(item, None)
        self._when[item] = when
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = {}
            heapq.heappush(self._order, number)
        bucket[item] = when

    def earliest(self, item: T, when: float) -> None:
        """Give *item* the deadline *when* unless it has an earlier one."""
        current = self._when.get(item)
        if current is None or when < current:
            self.schedule(item, when)

    def cancel(self, item: T) -> None:
        """*item* has no deadline any more."""
        old = self._when.pop(item, None)
        if old is not None:
            self._buckets[_bucket(old)].pop(item, None)

    def due(self, now: float, limit: int | None = None) -> list[T]:
        """The items whose deadline is *now* or earlier, earliest first; they no longer have one.

        With *limit*, at most that many (the earliest); the others stay due for the next call.
        """
        order, buckets, when = self._order, self._buckets, self._when
        last = _bucket(now)
        fired: list[tuple[float, T]] = []
        room = math.inf if limit is None else limit
        while order and order[0] <= last and len(fired) < room:
            number = order[0]
            bucket = buckets[number]
            pairs = bucket.items() if number < last else [(item, at) for item, at in bucket.items() if at <= now]
            ready = sorted(((at, item) for item, at in pairs), key=_first)
            taken = ready[: int(min(len(ready), room - len(fired)))]
            for _, item in taken:
                del bucket[item]
                del when[item]
            fired += taken
            if bucket:
                if len(taken) == len(ready):  # the current bucket: the rest is not due yet
                    break
                continue  # the limit: what is left waits for the next call
            heapq.heappop(order)
            del buckets[number]
        return [item for _, item in fired]

    def next_time(self) -> float | None:
        """The earliest live deadline, or None (deadlines that never come, ``math.inf``, are none)."""
        order, buckets = self._order, self._buckets
        while order and not buckets[order[0]]:
            del buckets[heapq.heappop(order)]
        if not order or order[0] == _LAST:
            return None
        return min(buckets[order[0]].values())


def _first(pair: tuple[float, object]) -> float:
    return pair[0]


def _bucket(when: float) -> int:
    """The bucket of *when*; deadlines too far off for a number (``math.inf``) share the last one."""
    if math.isnan(when):
        raise ValueError("a deadline cannot be NaN")
    scaled = when / BUCKET
    if scaled >= _LAST:
        return _LAST
    if scaled <= -_LAST:
        return -_LAST
    return math.floor(scaled)
