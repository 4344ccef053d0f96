"""A cluster server's view of its own members: what the rooms' events mean for them (sans-IO).

Each server keeps only its own members; the cluster's facts (names, every
room's members, the rooms) live in Redis. :class:`LocalView` turns the
events arriving on a room's channel into deliveries to this server's
members of that room, in the channel's order, which is the room's one order:

- A member is *in* a room from its own ``joined`` event on: what the room said
  before it joined never reaches it, what it says after always does (a
  consistent cut). That event also brings its welcome or ``* you are in ROOM``.
- A member that moves on stops hearing its old room at once, and members that
  left are heard of no more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from socketlab.chat.cluster.events import Event, Joined, Left, Private, Renamed, Said
from socketlab.chat.words import DEFAULT_ANNOUNCE_RATE, LOBBY, AnnouncementBudget, notice


@dataclass(eq=False, slots=True)
class LocalMember:
    """One of this server's members, as its chat core sees it (``member`` in deliveries)."""

    key: int
    #: Its id across the cluster: ``SERVER:KEY``.
    id: str
    transport: Any
    number: int = 0
    name: str = ""
    #: The room it hears (None until its welcome), and the room it is joining (None when not moving).
    room: str | None = None
    joining: str | None = None
    #: Whether it hears ``room``: from its own joined event on, until it moves on or leaves.
    present: bool = False
    welcomed: bool = False
    prefix: bytes = b""
    #: It asked to /quit: nothing it sends after that is taken (as on one server, where it is closed at once).
    quitting: bool = False
    #: Its steps waiting for the publisher, and whether its reading stopped for them.
    waiting: int = 0
    held: bool = False

    @property
    def target(self) -> str:
        """The room its lines go to: the one it is joining, else the one it is in."""
        return self.joining or self.room or LOBBY

    @property
    def echo(self) -> bool:
        return bool(getattr(self.transport, "echo", False))

    def rename(self, name: str) -> None:
        self.name = name
        self.prefix = f"<{name}> ".encode()


#: These bytes to these members of this server.
Delivery = tuple[Sequence["LocalMember"], bytes]


@dataclass
class LocalView:
    """This server's members by id, and by room those that hear it."""

    announce_limit: int
    members: dict[str, LocalMember] = field(default_factory=dict)
    rooms: dict[str, dict[LocalMember, None]] = field(default_factory=dict)
    #: Arrivals and departures told to this server's members of one room a second, past the first 50 at once.
    announce_rate: int = DEFAULT_ANNOUNCE_RATE
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._budget = AnnouncementBudget(self.announce_rate, clock=self.clock)

    def add(self, member: LocalMember) -> None:
        self.members[member.id] = member

    def remove(self, member: LocalMember) -> None:
        """*member* left this server: it hears nothing more."""
        self.members.pop(member.id, None)
        self.leave_room(member)

    def leave_room(self, member: LocalMember) -> None:
        """*member* stops hearing its room (it moves on, or is gone)."""
        if member.present and member.room is not None:
            room = self.rooms.get(member.room)
            if room is not None:
                room.pop(member, None)
                if not room:
                    del self.rooms[member.room]
                    self._budget.forget(member.room)
        member.present = False

    def room_event(self, room: str, event: Event) -> list[Delivery]:
        """What one event on *room*'s channel delivers to this server's members."""
        hearing = self.rooms.get(room)
        if isinstance(event, Said):
            if not hearing:
                return []
            sender = self.members.get(event.member)
            if sender is None or sender not in hearing or sender.echo:
                return [(list(hearing), event.data)]
            others = list(hearing)
            others.remove(sender)
            return [(others, event.data)] if others else []
        if isinstance(event, Joined):
            out: list[Delivery] = []
            if hearing and event.before and self._announced(room, event.before):
                out.append((list(hearing), notice(f"{event.name} joined {room}")))
            member = self.members.get(event.member)
            if member is not None and member.joining == room:
                out += self.arrived(member)
            return out
        if isinstance(event, Left):
            member = self.members.get(event.member)
            if member is not None and member.room == room and member.present:  # gone from here all the same
                self.leave_room(member)
                hearing = self.rooms.get(room)
            if not hearing or not event.after or not self._announced(room, event.after):
                return []
            suffix = f" ({event.reason})" if event.reason else ""
            return [(list(hearing), notice(f"{event.name} left {room}{suffix}"))]
        if isinstance(event, Renamed):
            member = self.members.get(event.member)
            if member is not None:
                member.rename(event.new)
            return [(list(hearing), notice(f"{event.old} is now known as {event.new}"))] if hearing else []
        return []

    def arrived(self, member: LocalMember) -> list[Delivery]:
        """*member* is in the room it was joining: it hears that room from now on, and is told."""
        room = member.joining
        if room is None:
            return []
        self.leave_room(member)
        member.room, member.joining, member.present = room, None, True
        self.rooms.setdefault(room, {})[member] = None
        if member.welcomed:
            return [([member], notice(f"you are in {room}"))]
        member.welcomed = True
        return [([member], notice(f"welcome {member.name}, you are in {LOBBY} (type /help)"))]

    def private(self, event: Private) -> list[Delivery]:
        member = self.members.get(event.member)
        return [([member], event.data)] if member is not None else []

    def _announced(self, room: str, count: int) -> bool:
        """Whether an arrival or departure is announced in *room*, of *count* others, now: not in a crowd,
        and within the room's budget on this server (which it uses)."""
        if self.announce_limit and count >= self.announce_limit:
            return False
        return self._budget.take(room)
