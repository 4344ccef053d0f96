"""Deadlines: many timers, each costing nothing until it is due.

A server with 19,000 members must not look at each of them on every tick to
find the few whose idle timeout, keepalive ping or polling deadline has come.
:class:`Deadlines` is a heap of (time, item): a tick pops only what is due,
so its work follows the timers that fire, not the number of members.

An item has at most one live deadline: scheduling it again replaces the old one
(the old heap entry is skipped when it surfaces). The usual pattern is to let a
deadline fire early and have the item say when it is due next -- an idle timer
set for ``last_active + timeout`` fires, finds the member active since, and is
scheduled again for the new ``last_active + timeout`` -- so the hot path (a
message arriving) never touches the heap.

Not thread-safe: the caller serialises (the chat server holds its lock).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, Hashable, TypeVar

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """Items with a deadline each; ``due(now)`` takes out those whose deadline has passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        #: Each item's live deadline (entries of the heap with another time are stale).
        self._when: dict[T, float] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, item: object) -> bool:
        return item in self._when

    def schedule(self, item: T, when: float) -> None:
        """Give *item* the deadline *when*, replacing any it had."""
        if self._when.get(item) == when:
            return
        self._when[item] = when
        heapq.heappush(self._heap, (when, next(self._order), item))
        if len(self._heap) > 2 * len(self._when) + 64:  # stale entries pile up: rebuild once
            self._heap = [(at, order, it) for at, order, it in self._heap if self._when.get(it) == at]
            heapq.heapify(self._heap)

    def earliest(self, item: T, when: float) -> None:
        """Give *item* the deadline *when* unless it has an earlier one."""
        current = self._when.get(item)
        if current is None or when < current:
            self.schedule(item, when)

    def cancel(self, item: T) -> None:
        """*item* has no deadline any more (its heap entry is skipped later)."""
        self._when.pop(item, None)

    def due(self, now: float) -> list[T]:
        """The items whose deadline is *now* or earlier, earliest first; they no longer have one."""
        heap, when = self._heap, self._when
        fired = []
        while heap and heap[0][0] <= now:
            at, _, item = heapq.heappop(heap)
            if when.get(item) == at:
                del when[item]
                fired.append(item)
        return fired

    def next_time(self) -> float | None:
        """The earliest live deadline, or None."""
        heap, when = self._heap, self._when
        while heap and when.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None
