"""The events servers of a cluster send each other, and their one codec.

A room's events travel on the room's own channel; a private message on its
receiver's server's channel. One message on a channel is a *batch*: one
header line (JSON: a list of ``[kind, ...fields]``) and the events' bytes
after it, in order. Redis's scripts build the membership events (they know
the counts); servers build the lines. Decoding dispatches on the kind
through a table, never an if-chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Said:
    """Chat lines of *member* (already prefixed and cleaned) for its room."""

    member: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Joined:
    """*member*, called *name*, joined the room, which had *before* members; *first*: it just connected."""

    member: str
    name: str
    before: int
    first: bool


@dataclass(frozen=True, slots=True)
class Left:
    """*member*, called *name*, left the room, which has *after* members now (*reason*: empty after /quit)."""

    member: str
    name: str
    after: int
    reason: str


@dataclass(frozen=True, slots=True)
class Renamed:
    """*member* of the room is now called *new* (was *old*)."""

    member: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Private:
    """Lines for *member* alone (a /msg), on its server's channel."""

    member: str
    data: bytes


Event = Said | Joined | Left | Renamed | Private

_KIND = {Said: "said", Joined: "joined", Left: "left", Renamed: "renamed", Private: "private"}
_WITH_DATA = (Said, Private)


def encode(events: Sequence[Event]) -> bytes:
    """One batch: a JSON header line, then the lines the events carry."""
    header: list[list[object]] = []
    tail: list[bytes] = []
    for event in events:
        if isinstance(event, _WITH_DATA):
            header.append([_KIND[type(event)], event.member, len(event.data)])
            tail.append(event.data)
        elif isinstance(event, Joined):
            header.append(["joined", event.member, event.name, event.before, int(event.first)])
        elif isinstance(event, Left):
            header.append(["left", event.member, event.name, event.after, event.reason])
        else:
            header.append(["renamed", event.member, event.old, event.new])
    return json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" + b"".join(tail)


def _with_data(cls: type[Said] | type[Private]):  # type: ignore[no-untyped-def]
    def make(fields: list, tail: memoryview, at: int) -> tuple[Event, int]:  # type: ignore[type-arg]
        member, size = fields
        end = at + int(size)
        if end > len(tail):
            raise ValueError("a batch shorter than its header says")
        return cls(str(member), bytes(tail[at:end])), end

    return make


def _joined(fields: list, tail: memoryview, at: int) -> tuple[Event, int]:  # type: ignore[type-arg]
    member, name, before, first = fields
    return Joined(str(member), str(name), int(before), bool(first)), at


def _left(fields: list, tail: memoryview, at: int) -> tuple[Event, int]:  # type: ignore[type-arg]
    member, name, after, reason = fields
    return Left(str(member), str(name), int(after), str(reason)), at


def _renamed(fields: list, tail: memoryview, at: int) -> tuple[Event, int]:  # type: ignore[type-arg]
    member, old, new = fields
    return Renamed(str(member), str(old), str(new)), at


_DECODERS = {"said": _with_data(Said), "private": _with_data(Private), "joined": _joined, "left": _left, "renamed": _renamed}


def decode(message: bytes) -> list[Event]:
    """The events of one batch; ValueError (or KeyError, TypeError) when it is not one."""
    head, newline, rest = message.partition(b"\n")
    if not newline:
        raise ValueError("a batch without its header line")
    tail = memoryview(rest)
    at = 0
    events: list[Event] = []
    for kind, *fields in json.loads(head):
        event, at = _DECODERS[kind](fields, tail, at)
        events.append(event)
    if at != len(rest):
        raise ValueError("a batch longer than its header says")
    return events
