"""Sans-IO chat protocol: names, rooms, commands and sanitising.

:class:`ChatHub` holds every member and room and turns events -- a client
connected, sent these lines, went away -- into :data:`Delivery` values: the
bytes to send and who gets them. It never touches a socket or a thread, so
it is tested directly; the server calls it under one lock, which is what
gives every member of a room the same order of messages.

Consecutive chat lines from one sender become *one* delivery (their bytes
joined), so the I/O layer sends a burst of lines with one call per receiver.
A burst of ordinary lines (printable ASCII, no command, nothing blank) is
prefixed in one pass over its bytes instead of line by line.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

from socketlab.chat.commands import Join, Msg, Nick, Quit, Reply, Rooms, Say, Step, Who, interpret
from socketlab.chat.words import (  # noqa: F401  (re-exported: the chat's words were defined here first)
    DEFAULT_ANNOUNCE_LIMIT,
    DEFAULT_ANNOUNCE_RATE,
    AnnouncementBudget,
    HELP_LINES,
    LOBBY,
    MAX_NAME,
    NAME_RULE,
    RESERVED_NAME,
    ROOMS_PAGE,
    WHO_PAGE,
    PLAIN_BYTES,
    SPECIAL_LINE_START,
    clean_text,
    error,
    name_key,
    notice,
    paged,
    pages,
    valid_name,
)
from socketlab.lines import LineTooLong


class Transport(Protocol):
    """What the chat core needs of a member's connection. Called with the lock held; never blocks."""

    #: Who is on the other end, for the log (``HOST:PORT``).
    peer: str
    #: Whether the member gets its own chat lines back (Socket.IO's ``io.to(room).emit`` does).
    echo: bool

    def send(self, data: bytes) -> None:
        """Send *data*, one or more whole lines, after everything sent before."""

    def close(self, reason: str) -> None:
        """End the connection once what was sent is out; *reason* says why (for the log and the room)."""


class NoTransport:
    """The transport of a member the rules alone are tried with (no I/O layer): it drops what it is given."""

    peer = "-"
    echo = False

    def send(self, data: bytes) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


NO_TRANSPORT = NoTransport()


@dataclass(eq=False, slots=True)
class Member:
    """One connected client: a name, a room, and the I/O layer's handle."""

    number: int
    name: str
    room: "Room"
    #: The member's connection, as the chat core sees it.
    transport: Transport
    prefix: bytes = b""
    #: Its own chat lines come back to it (its transport's ``echo``).
    echo: bool = False

    def __post_init__(self) -> None:
        self.echo = bool(getattr(self.transport, "echo", False))

    def rename(self, name: str) -> None:
        self.name = name
        self.prefix = f"<{name}> ".encode()


@dataclass(eq=False, slots=True)
class Room:
    """Members of one room, in joining order."""

    name: str
    members: dict[Member, None] = field(default_factory=dict)

    def others(self, member: Member) -> list[Member]:
        """Every member but *member*, in joining order (built at C speed: this runs for every line)."""
        others = list(self.members)
        if member in self.members:
            others.remove(member)  # Members compare by identity
        return others

    def audience(self, sender: Member) -> list[Member]:
        """Who gets *sender*'s chat lines: the others, or everyone when the sender wants its echo."""
        return list(self.members) if sender.echo else self.others(sender)


#: What the I/O layer must send: these bytes to each of these members.
Delivery = tuple[Sequence[Member], bytes]


@dataclass
class Reaction:
    """What handling a member's lines produced."""

    deliveries: list[Delivery] = field(default_factory=list)
    #: The member asked to leave (/quit): send the deliveries, then close.
    quit: bool = False


#: Whoever a delivery goes to: a hub's Member, or a cluster server's own member.
Receiver = TypeVar("Receiver")


def coalesce(deliveries: Sequence[tuple[Sequence[Receiver], bytes]]) -> list[tuple[Sequence[Receiver], bytes]]:
    """The same bytes to the same members, in the same order, at most one delivery per member.

    Members that get the same deliveries share one joined ``bytes``, so a
    burst of join notices to a big lobby is joined once, not per member.
    Each member's deliveries so far are a path in a trie of delivery
    indices: memory grows with the members and the distinct paths, not with
    members times deliveries.
    """
    if len(deliveries) < 2:
        return list(deliveries)
    node_of: dict[Receiver, int] = {}
    child: dict[tuple[int, int], int] = {}  # (node, delivery index) -> node
    parent: list[tuple[int, int]] = [(0, -1)]  # node -> (parent node, delivery index); 0 is the root
    for index, (members, _data) in enumerate(deliveries):
        for member in members:
            step = (node_of.get(member, 0), index)
            node = child.get(step)
            if node is None:
                node = child[step] = len(parent)
                parent.append(step)
            node_of[member] = node
    groups: dict[int, list[Receiver]] = {}
    for member, node in node_of.items():
        groups.setdefault(node, []).append(member)
    coalesced: list[tuple[Sequence[Receiver], bytes]] = []
    for node, members in groups.items():
        indices = []
        while node:
            node, index = parent[node]
            indices.append(index)
        coalesced.append((members, b"".join(deliveries[i][1] for i in reversed(indices))))
    return coalesced


class ChatHub:
    """Every member and room of one chat server, and the rules between them.

    Not thread-safe: the caller serialises calls (the server uses one lock).
    ``room_size`` caps every room but the lobby (0: no cap); ``max_line`` is
    only quoted in the "line too long" reply. Arrivals and departures are
    announced in rooms of fewer than ``announce_limit`` members (0: always):
    in a crowd -- a busy server's lobby -- each would cost a send to every
    member, and a stream of connections would cost the square of the crowd;
    and to each room, up to 50 at once, then ``announce_rate`` a second (0: no
    limit), so that a crowd passing through a small room is not announced one
    by one either (see :class:`~socketlab.chat.words.AnnouncementBudget`).
    """

    def __init__(
        self,
        room_size: int = 0,
        max_line: int = 4096,
        announce_limit: int = DEFAULT_ANNOUNCE_LIMIT,
        announce_rate: int = DEFAULT_ANNOUNCE_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.room_size = room_size
        self.max_line = max_line
        self.announce_limit = announce_limit
        self.announce_rate = announce_rate
        self._budget = AnnouncementBudget(announce_rate, clock=clock)
        self.connections = 0
        self.rooms: dict[str, Room] = {LOBBY: Room(LOBBY)}
        self._by_name: dict[str, Member] = {}

    # -- events from the I/O layer ----------------------------------------

    def connect(self, transport: Transport = NO_TRANSPORT) -> tuple[Member, list[Delivery]]:
        """A client connected: name it ``user<N>``, put it in the lobby."""
        self.connections += 1
        name = f"user{self.connections}"
        while name_key(name) in self._by_name:  # only after a rename collision, which /nick forbids
            name += "_"
        lobby = self.rooms[LOBBY]
        member = Member(self.connections, name, lobby, transport)
        member.rename(name)
        self._by_name[name_key(name)] = member
        deliveries: list[Delivery] = []
        if lobby.members and self._announced(lobby):
            deliveries.append((list(lobby.members), notice(f"{name} joined {LOBBY}")))
        lobby.members[member] = None
        deliveries.append(([member], notice(f"welcome {name}, you are in {LOBBY} (type /help)")))
        return member, deliveries

    def receive(self, member: Member, items: Sequence[bytes | LineTooLong]) -> Reaction:
        """Handle lines from *member*, in order; stop after /quit."""
        plain = self._plain_burst(member, items)
        if plain is not None:
            audience = member.room.audience(member)
            return Reaction([(audience, plain)] if audience else [])
        reaction = Reaction()
        for step in interpret(items, self.max_line):
            self.carry_out(member, step, reaction)
        return reaction

    def carry_out(self, member: Member, step: Step, reaction: Reaction) -> None:
        """One step of *member*'s lines (see :func:`~socketlab.chat.commands.interpret`)."""
        out = reaction.deliveries
        match step:
            case Say():
                audience = member.room.audience(member)
                if audience:
                    out.append((audience, step.said_by(member.prefix)))
            case Reply(data):
                out.append(([member], data))
            case Nick(name):
                self._nick(member, name, out)
            case Join(room):
                self._move(member, room, out)
            case Who(page):
                self._who(member, page, out)
            case Rooms(page):
                self._rooms(member, page, out)
            case Msg(name, text):
                self._msg(member, name, text, out)
            case Quit():
                out.append(([member], notice("bye")))
                reaction.quit = True

    def disconnect(self, member: Member, reason: str | None = None) -> list[Delivery]:
        """*member* is gone; tell its room (with *reason* unless it quit)."""
        room = member.room
        room.members.pop(member, None)
        self._by_name.pop(name_key(member.name), None)
        self._drop_if_empty(room)
        suffix = f" ({reason})" if reason else ""
        if not room.members or not self._announced(room):
            return []
        return [(list(room.members), notice(f"{member.name} left {room.name}{suffix}"))]

    def announce(self, text: str) -> list[Delivery]:
        """A notice to every member of every room (e.g. shutdown)."""
        everyone = [m for room in self.rooms.values() for m in room.members]
        return [(everyone, notice(text))] if everyone else []

    @property
    def members(self) -> list[Member]:
        return list(self._by_name.values())

    # -- state, for replicas (see socketlab.chat.cluster) -----------------------

    def export_state(self, identify: Callable[[Member], Any]) -> dict[str, Any]:
        """Every room and member, in order, as plain data; *identify* names each member's transport."""
        return {
            "connections": self.connections,
            "rooms": [[room.name, [[identify(m), m.number, m.name] for m in room.members]] for room in self.rooms.values()],
        }

    def import_state(self, state: dict[str, Any], transport_for: Callable[[Any], Transport]) -> list[Member]:
        """Replace everything with *state* (from export_state()); returns the members made."""
        self.reset()
        self.connections = state["connections"]
        made = []
        for room_name, members in state["rooms"]:
            room = self.rooms.setdefault(room_name, Room(room_name))
            for identity, number, name in members:
                member = Member(number, name, room, transport_for(identity))
                member.rename(name)
                room.members[member] = None
                self._by_name[name_key(name)] = member
                made.append(member)
        return made

    def restore(self, transport: Transport, number: int, name: str, room_name: str) -> Member:
        """Put back a member known before (same number, name and room, if still free), silently."""
        while name_key(name) in self._by_name:
            name += "_"
        room = self.rooms.setdefault(room_name, Room(room_name))
        member = Member(number, name, room, transport)
        member.rename(name)
        room.members[member] = None
        self._by_name[name_key(name)] = member
        self.connections = max(self.connections, number)
        return member

    def reset(self) -> None:
        """Forget every member and room."""
        self.connections = 0
        self.rooms = {LOBBY: Room(LOBBY)}
        self._by_name = {}

    # -- commands ----------------------------------------------------------

    def _nick(self, member: Member, name: str, out: list[Delivery]) -> None:
        if name == member.name:
            out.append(([member], notice(f"you are already {name}")))
        elif RESERVED_NAME.match(name):  # even when nobody has it: the server may hand it out next
            out.append(([member], error(f"nickname {name} is reserved: names user<N> are the server's to give")))
        elif self._by_name.get(name_key(name), member) is not member:
            out.append(([member], error(f"nickname {name} is taken")))
        else:
            old = member.name
            del self._by_name[name_key(old)]
            member.rename(name)
            self._by_name[name_key(name)] = member
            out.append((list(member.room.members), notice(f"{old} is now known as {name}")))

    def _move(self, member: Member, name: str, out: list[Delivery]) -> None:
        old = member.room
        if name == old.name:
            out.append(([member], notice(f"you are in {name}")))
            return
        room = self.rooms.get(name)
        count = len(room.members) if room else 0
        if name != LOBBY and self.room_size and count >= self.room_size:
            out.append(([member], error(f"room {name} is full ({count}/{self.room_size})")))
            return
        if room is None:
            room = self.rooms[name] = Room(name)
        del old.members[member]
        if old.members and self._announced(old):
            out.append((list(old.members), notice(f"{member.name} left {old.name}")))
        self._drop_if_empty(old)
        if room.members and self._announced(room):
            out.append((list(room.members), notice(f"{member.name} joined {name}")))
        room.members[member] = None
        member.room = room
        out.append(([member], notice(f"you are in {name}")))

    def _who(self, member: Member, page: int, out: list[Delivery]) -> None:
        room = member.room
        count = len(room.members)
        if count <= WHO_PAGE and page == 1:
            out.append(([member], notice(f"in {room.name}: {', '.join(m.name for m in room.members)}")))
            return
        start = (page - 1) * WHO_PAGE  # joining order: islice walks only up to this page
        names = [m.name for m in itertools.islice(room.members, start, start + WHO_PAGE)]
        out.append(([member], notice(paged(f"in {room.name}", count, page, WHO_PAGE, names, "/who"))))

    def _rooms(self, member: Member, page: int, out: list[Delivery]) -> None:
        count = len(self.rooms)
        if count <= ROOMS_PAGE and page == 1:
            listing = ", ".join(f"{r.name} ({len(r.members)})" for r in sorted(self.rooms.values(), key=lambda r: r.name))
            out.append(([member], notice(f"rooms: {listing}")))
            return
        # By name: the first PAGE x ROOMS_PAGE names are found without sorting every room.
        first = heapq.nsmallest(min(page, pages(count, ROOMS_PAGE)) * ROOMS_PAGE, self.rooms)
        names = first[(page - 1) * ROOMS_PAGE :]
        entries = [f"{name} ({len(self.rooms[name].members)})" for name in names]
        out.append(([member], notice(paged("rooms", count, page, ROOMS_PAGE, entries, "/rooms"))))

    def _msg(self, member: Member, name: str, text: str, out: list[Delivery]) -> None:
        target = self._by_name.get(name_key(name))
        if target is None:
            out.append(([member], error(f"no such user {name}")))
        else:
            out.append(([target], f"<{member.name}> (private) {text}\n".encode()))
            if target is not member:
                out.append(([member], notice(f"to {target.name}: {text}")))

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _plain_burst(member: Member, items: Sequence[bytes | LineTooLong]) -> bytes | None:
        """What receive() relays for *items* when all are ordinary chat lines, else None.

        Ordinary: printable ASCII or tab only, not starting with "/", space or
        tab, not empty -- lines the per-line rules would pass through unchanged.
        The check and the prefixing run at C speed over the joined bytes.
        """
        try:
            block = b"\n".join(items)  # type: ignore[arg-type]
        except TypeError:  # a LineTooLong among them
            return None
        wrapped = b"\n" + block + b"\n"
        if wrapped.translate(None, PLAIN_BYTES) or SPECIAL_LINE_START.search(wrapped):
            return None
        prefix = member.prefix
        return prefix + block.replace(b"\n", b"\n" + prefix) + b"\n"

    def _announced(self, room: Room) -> bool:
        """Whether an arrival or departure is announced in *room* now: not in a crowd, and within the
        room's budget (which it uses)."""
        if self.announce_limit and len(room.members) >= self.announce_limit:
            return False
        return self._budget.take(room.name)

    def _drop_if_empty(self, room: Room) -> None:
        if not room.members and room.name != LOBBY:
            self.rooms.pop(room.name, None)
            self._budget.forget(room.name)
