"""The cluster's sans-IO parts, without Redis: steps from lines, the event codec, and a server's view of its members."""

from __future__ import annotations

from typing import Any

import pytest

from socketlab.chat.cluster.events import Joined, Left, Private, Renamed, Said, decode, encode
from socketlab.chat.cluster.view import LocalMember, LocalView
from socketlab.chat.commands import Join, Msg, Nick, Quit, Reply, Rooms, Say, Who, interpret
from socketlab.lines import LineTooLong


class Sink:
    peer = "127.0.0.1:1"

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo


def member(key: int, name: str, echo: bool = False) -> LocalMember:
    made = LocalMember(key, f"s:{key}", Sink(echo))
    made.rename(name)
    return made


def texts(deliveries: list[Any]) -> list[tuple[list[str], bytes]]:
    return [([m.name for m in members], data) for members, data in deliveries]


# -- steps ---------------------------------------------------------------------------------------------


def test_lines_become_steps_in_order_with_bursts_of_chat_lines_joined() -> None:
    items: list[bytes | LineTooLong] = [b"hi", b"there", b"/nick bob", b"//slash", LineTooLong(10), b"", b"/quit", b"never"]
    steps = interpret(items, 10)
    assert steps == [
        Say(b"hi\nthere\n"),
        Nick("bob"),
        Say(b"/slash\n"),
        Reply(b"! line too long (max 10 bytes)\n"),
        Quit(),
    ]
    assert steps[0].said_by(b"<al> ") == b"<al> hi\n<al> there\n"  # type: ignore[union-attr]


def test_commands_with_bad_arguments_are_replies_and_good_ones_are_steps() -> None:
    assert interpret([b"/join r\xc3\xa9", b"/leave", b"/who 2", b"/rooms", b"/msg bob hi there"], 100) == [
        Join("ré"),
        Join("lobby"),
        Who(2),
        Rooms(1),
        Msg("bob", "hi there"),
    ]
    replies = interpret([b"/nick", b"/nick a b", b"/join", b"/who x", b"/msg bob", b"/dance"], 100)
    assert [step.data for step in replies] == [  # type: ignore[union-attr]
        b"! usage: /nick NAME\n",
        b"! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces\n",
        b"! usage: /join ROOM\n",
        b"! usage: /who [PAGE]\n",
        b"! usage: /msg NAME TEXT\n",
        b"! unknown command /dance (type /help)\n",
    ]
    assert interpret([b"bad \x1b[31m"], 100) == [Say(b"bad \\x1b[31m\n")]  # controls escaped before anyone sees them


# -- the codec -----------------------------------------------------------------------------------------


def test_a_batch_round_trips_every_kind_of_event() -> None:
    events = [
        Said("a:1", "<ré> 둘\n".encode()),
        Joined("b:2", "bob", 3, True),
        Left("c:3", "cy", 0, "server lost"),
        Renamed("a:1", "ré", "rene"),
        Private("b:2", b"<x> (private) hi\n"),
        Said("a:1", b""),
    ]
    assert decode(encode(events)) == events


@pytest.mark.parametrize(
    "message",
    [
        b"no header line",
        b'[["said","a",5]]\nabc',
        b'[["said","a",1]]\nabc',
        b'[["dance","a"]]\n',
        b"[[1\n",
        b'[["joined","a"]]\n',
    ],
)
def test_a_malformed_batch_is_an_error_not_garbage(message: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(message)


# -- the view ------------------------------------------------------------------------------------------


def view_with(*members: LocalMember) -> LocalView:
    view = LocalView(announce_limit=100)
    for one in members:
        view.add(one)
        one.joining = "lobby"
    return view


def test_a_member_hears_its_room_from_its_own_joined_event_on() -> None:
    """The consistent cut: before its joined event nothing reaches it; its welcome comes with the event."""
    al, bo = member(1, "al"), member(2, "bo")
    view = view_with(al, bo)
    assert texts(view.room_event("lobby", Said("x:9", b"<x> before\n"))) == []
    assert texts(view.room_event("lobby", Joined(al.id, "al", 1, True))) == [
        (["al"], b"* welcome al, you are in lobby (type /help)\n")
    ]
    assert texts(view.room_event("lobby", Said("x:9", b"<x> only al\n"))) == [(["al"], b"<x> only al\n")]
    assert texts(view.room_event("lobby", Joined(bo.id, "bo", 2, True))) == [
        (["al"], b"* bo joined lobby\n"),
        (["bo"], b"* welcome bo, you are in lobby (type /help)\n"),
    ]
    assert texts(view.room_event("lobby", Said(al.id, b"<al> hi\n"))) == [(["bo"], b"<al> hi\n")]  # not its own
    assert texts(view.room_event("lobby", Renamed(al.id, "al", "alice"))) == [(["alice", "bo"], b"* al is now known as alice\n")]
    assert al.prefix == b"<alice> "


def test_a_member_that_moves_stops_hearing_its_old_room_when_it_arrives() -> None:
    al, bo = member(1, "al"), member(2, "bo")
    view = view_with(al, bo)
    view.room_event("lobby", Joined(al.id, "al", 0, True))
    view.room_event("lobby", Joined(bo.id, "bo", 1, True))
    al.joining = "chess"
    assert texts(view.room_event("chess", Joined(al.id, "al", 0, False))) == [(["al"], b"* you are in chess\n")]
    assert texts(view.room_event("lobby", Said("x:9", b"<x> lobby only\n"))) == [(["bo"], b"<x> lobby only\n")]
    assert texts(view.room_event("lobby", Left(al.id, "al", 1, ""))) == [(["bo"], b"* al left lobby\n")]
    assert texts(view.room_event("chess", Left("x:9", "x", 1, "server lost"))) == [(["al"], b"* x left chess (server lost)\n")]
    assert sorted(view.rooms) == ["chess", "lobby"]
    view.remove(bo)
    assert sorted(view.rooms) == ["chess"]  # a room nobody here hears is forgotten


def test_echo_members_hear_their_own_lines_and_crowds_hear_no_arrivals() -> None:
    io, al = member(1, "io", echo=True), member(2, "al")
    view = LocalView(announce_limit=3)
    for one in (io, al):
        view.add(one)
        one.joining = "lobby"
        view.room_event("lobby", Joined(one.id, one.name, 0, True))
    assert texts(view.room_event("lobby", Said(io.id, b"<io> hi\n"))) == [(["io", "al"], b"<io> hi\n")]
    assert texts(view.room_event("lobby", Joined("x:1", "x", 3, True))) == []  # a room of 3 is a crowd here
    assert texts(view.room_event("lobby", Left("x:1", "x", 2, ""))) == [(["io", "al"], b"* x left lobby\n")]
    assert texts(view.private(Private(al.id, b"<io> (private) psst\n"))) == [(["al"], b"<io> (private) psst\n")]
    assert view.private(Private("gone:1", b"x\n")) == []


def test_a_crowd_is_announced_fifty_then_ten_a_second_to_this_servers_members() -> None:
    """The cluster's view keeps the same budget per room as one server: 50 arrivals and departures at
    once, then 10 a second."""
    now = [0.0]
    al = member(1, "al")
    view = LocalView(announce_limit=100, clock=lambda: now[0])
    view.add(al)
    al.joining = "lobby"
    view.room_event("lobby", Joined(al.id, "al", 0, True))
    told = [texts(view.room_event("lobby", Joined(f"x:{n}", f"x{n}", n, True))) for n in range(1, 53)]
    assert told == [[(["al"], f"* x{n} joined lobby\n".encode())] for n in range(1, 51)] + [[], []]
    assert texts(view.room_event("lobby", Left("x:1", "x1", 52, ""))) == []
    now[0] = 0.1
    assert texts(view.room_event("lobby", Left("x:2", "x2", 51, ""))) == [(["al"], b"* x2 left lobby\n")]
    assert texts(view.room_event("lobby", Left("x:3", "x3", 50, ""))) == []
