"""Flood control for one chat client, sans-IO: budgets of lines and bytes per second.

:class:`FloodGate` admits a client's lines at most ``line_rate`` per second,
with a burst of twice that, and its raw bytes at most 8 MiB per second
(twice that in a burst; a read may run it into a debt that is then waited
off), each a :class:`~socketlab.access.TokenBucket`, so a client pouring bytes
without newlines is held too. Nothing is dropped and nobody is disconnected: lines over the
budget wait here (at most what one read brought), and the reader loop stops
reading the client until ``resume_at()`` -- TCP flow control then slows the
sender down, and everyone else is served as usual. A client that leaves
while lines of its are held loses those (``drop()`` says how many): it is
gone, and its slot is free at once.

A client held back is told so (``notice_due()``: when it is first held, then
at most every ``NOTICE_INTERVAL`` seconds while it stays held). The notice
is also how the server learns that a held-back client has left: one that
closed its socket while its kernel still had bytes the server had not read
has its FIN queued behind them, unseen, but it answers the notice with a
reset. A client that only ended its sending side reads the notice and keeps
its held lines.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from socketlab.access import TokenBucket
from socketlab.lines import Item

#: Default lines per second per client on the command line (a burst of twice that).
DEFAULT_MAX_RATE = 20.0
#: Bytes per second one client may send (twice that in a burst). Reading and skipping bytes costs
#: the reader about one recv() per 64 KiB, so this keeps any client from occupying it, yet drains a
#: departed flooder's buffered bytes within a second or two: its FIN, queued behind them, then
#: arrives, its departure is seen and its slot freed. (Budgets shared per address would make a
#: crowd of such departures wait for each other.)
DEFAULT_BYTE_RATE = 8 * 1024 * 1024
#: Seconds between two "held back" notices to a client that stays over its budget; also how long a
#: departed flooder whose FIN waits behind unread bytes holds its slot at most (see the module docstring).
NOTICE_INTERVAL = 1.0


class FloodGate:
    """One client's input budget. ``now`` is any monotonic clock, in seconds."""

    __slots__ = ("line_rate", "budget", "lines", "held", "noticed")

    def __init__(self, line_rate: float, now: float, budget: TokenBucket | None = None) -> None:
        if line_rate <= 0:
            raise ValueError("line_rate must be positive (no FloodGate means no limit)")
        self.line_rate = line_rate
        #: Bytes: a read may run it into debt, which is then waited off.
        self.budget = budget or TokenBucket(DEFAULT_BYTE_RATE, 2 * DEFAULT_BYTE_RATE, now)
        #: Lines: a full burst to begin with.
        self.lines = TokenBucket(line_rate, max(1.0, 2 * line_rate), now)  # a line always fits, however slow the rate
        self.held: deque[Item] = deque()
        #: When the client was last told it is held back (None: not since it was last read freely).
        self.noticed: float | None = None

    def admit(self, items: Sequence[Item], size: int, now: float) -> list[Item]:
        """A read of *size* bytes completed *items*: return those within budget, hold the rest."""
        self.budget.spend(size, now)
        self.held.extend(items)
        return self._release(now)

    def release(self, now: float) -> list[Item]:
        """Held lines the budget allows by *now*."""
        return self._release(now)

    def _release(self, now: float) -> list[Item]:
        count = self.lines.take_whole(len(self.held), now)
        return [self.held.popleft() for _ in range(count)]

    def drop(self) -> int:
        """The client left: forget its held lines; return how many there were."""
        count = len(self.held)
        self.held.clear()
        return count

    def notice_due(self, now: float) -> bool:
        """True when the client, held back now, should be told so (and the time is noted)."""
        if self.noticed is not None and now - self.noticed < NOTICE_INTERVAL:
            return False
        self.noticed = now
        return True

    def notice(self) -> bytes:
        """The line telling a held-back client what happens to its input."""
        held = len(self.held)
        return (
            f"! sending too fast: {held} line{'s' if held != 1 else ''} held back, let through at {self.line_rate:g} a second\n"
        ).encode()

    def resume_at(self, now: float) -> float | None:
        """When reading this client may go on; None: now."""
        wait = self.budget.wait_time(0, now)
        if self.held:
            wait = max(wait, self.lines.wait_time(1, now))
        return now + wait if wait > 0 else None
