"""The rooms workloads of ``socketlab bench chat``: who is in which room, and when each member speaks.

Sans-IO: a :class:`RoomPlan` is numbers only, so the layout and the
schedule are tested without a socket. Two workloads:

- ``pairs``: the tutorial's rooms server at scale. Members two by two,
  each pair in a room of its own (the server runs with ``--room-size 2``):
  every line is one copy, to the other member.
- ``mixed``: one big room of ``min(500, N // 4)`` members; of the others,
  about half -- rounded up to whole rooms, as long as they fill them -- in
  rooms of 20, and the rest in pairs. An odd member left over joins the big
  room. At 19,000 members: one room of 500, 463 rooms of 20 (9,260 members)
  and 4,620 pairs; at 2,000: 500, 38 rooms of 20 and 370 pairs.

Every member sends one line each ``interval`` seconds for ``duration``
seconds. Start times are spread evenly over the first interval, in an
order that interleaves the rooms (member ``k`` starts at rank
``k * stride mod N``, ``stride`` coprime to ``N`` near ``0.618 N``): the
server sees a steady stream, and a big room's lines are not bunched
together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

#: The largest room of the mixed workload (fewer members when there are fewer than four times this).
MIXED_BIG = 500
#: The middle rooms' size in the mixed workload.
MIXED_MIDDLE = 20
#: The workloads :meth:`RoomPlan.named` knows.
SCENARIOS = ("pairs", "mixed")


@dataclass(frozen=True)
class RoomPlan:
    """Rooms, in member order (room *r* holds the members ``starts[r] .. starts[r] + sizes[r] - 1``),
    and the pace: one line of *size* bytes per member every *interval* seconds for *duration* seconds.

    *prefix* starts every room's name; give each run its own, so that a
    server that never forgets a room (the tutorial's Node server keeps
    every socket that ever joined one) starts each run with empty rooms.
    """

    scenario: str
    sizes: tuple[int, ...]
    interval: float = 2.0
    duration: float = 10.0
    size: int = 64
    prefix: str = "bench-"

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError("every room needs a member")
        if self.interval <= 0 or self.duration <= 0:
            raise ValueError("the interval and the duration must be positive")

    @classmethod
    def named(cls, scenario: str, members: int, **settings: Any) -> "RoomPlan":
        """The workload *scenario* (``pairs`` or ``mixed``) for *members*; ValueError saying why it cannot be."""
        if scenario == "pairs":
            if members < 2 or members % 2:
                raise ValueError(f"pairs need an even number of members (not {members})")
            return cls("pairs", (2,) * (members // 2), **settings)
        if scenario == "mixed":
            if members < 8:
                raise ValueError(f"the mixed workload needs at least 8 members (not {members})")
            big = min(MIXED_BIG, members // 4)
            rest = members - big
            middles = min(-(-rest // (2 * MIXED_MIDDLE)), rest // MIXED_MIDDLE)
            left = rest - middles * MIXED_MIDDLE
            big += left % 2
            return cls("mixed", (big,) + (MIXED_MIDDLE,) * middles + (2,) * (left // 2), **settings)
        raise ValueError(f"no rooms workload {scenario!r} (choose from {', '.join(SCENARIOS)})")

    @cached_property
    def members(self) -> int:
        return sum(self.sizes)

    @cached_property
    def starts(self) -> list[int]:
        """The first member of each room."""
        out, total = [], 0
        for size in self.sizes:
            out.append(total)
            total += size
        return out

    def room_name(self, room: int) -> str:
        return f"{self.prefix}{room}"

    def layout(self) -> dict[str, int]:
        """How many rooms of each size, largest first: ``{"500": 1, "20": 463, "2": 4620}``."""
        counts: dict[int, int] = {}
        for size in self.sizes:
            counts[size] = counts.get(size, 0) + 1
        return {str(size): counts[size] for size in sorted(counts, reverse=True)}

    @cached_property
    def stride(self) -> int:
        """The step between consecutive members' start ranks: coprime to the member count, near 0.618 of it."""
        count = self.members
        stride = max(1, round(count * (math.sqrt(5) - 1) / 2))
        while math.gcd(stride, count) != 1:
            stride += 1
        return stride

    def offset_ns(self, member: int) -> int:
        """When *member* says its first line, in ns after the start; every later one comes an interval after."""
        rank = member * self.stride % self.members
        return rank * self.interval_ns // self.members

    @property
    def interval_ns(self) -> int:
        return round(self.interval * 1e9)

    @property
    def duration_ns(self) -> int:
        return round(self.duration * 1e9)

    def lines_of(self, member: int) -> int:
        """How many lines *member* says (the last one starts before the duration is over)."""
        offset = self.offset_ns(member)
        return max(0, -(-(self.duration_ns - offset) // self.interval_ns))

    @property
    def max_lines(self) -> int:
        """The most lines any member says (those that start first)."""
        return max(1, -(-self.duration_ns // self.interval_ns))

    def split(self, processes: int) -> list[list[int]]:
        """The rooms of each of *processes* load processes (whole rooms, members balanced: largest rooms first,
        each to the process with the fewest members so far); each list in room order."""
        loads = [0] * processes
        shares: list[list[int]] = [[] for _ in range(processes)]
        for room in sorted(range(len(self.sizes)), key=lambda r: (-self.sizes[r], r)):
            least = min(range(processes), key=lambda p: (loads[p], p))
            shares[least].append(room)
            loads[least] += self.sizes[room]
        return [sorted(share) for share in shares]


def source_address(member: int, sources: int) -> str:
    """The loopback address *member* connects from (``127.0.0.2`` onwards, in turn): each address has an
    ephemeral port range of its own, so the range never limits how many members connect."""
    return f"127.0.0.{2 + member % sources}"
