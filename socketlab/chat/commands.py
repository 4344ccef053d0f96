"""What a member's lines ask for, before any rule that needs the chat's state.

:func:`interpret` turns a member's lines into :data:`Step` values: chat lines
to relay (prefixed and cleaned), replies for the sender alone (usage errors,
help, a line too long), and commands with valid arguments (/nick, /join,
/who, /rooms, /msg, /quit). It knows nothing of other members or rooms, so
the one server's :class:`~socketlab.chat.protocol.ChatHub` and a cluster's
servers (which ask Redis) carry out the same steps, parsed by the same code.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

from socketlab.chat.words import HELP_LINES, LOBBY, NAME_RULE, clean_text, error, page_number, valid_name
from socketlab.lines import LineTooLong


@dataclass(frozen=True, slots=True)
class Say:
    """Chat lines for the sender's room: whole lines, cleaned, not yet prefixed (a /nick before them may
    change the name they go out under: see :meth:`said_by`)."""

    lines: bytes

    def said_by(self, prefix: bytes) -> bytes:
        """The lines as the room sees them: each after *prefix* (``<NAME> ``)."""
        return prefix + self.lines[:-1].replace(b"\n", b"\n" + prefix) + b"\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """Lines for the sender only (an error, the help)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Nick:
    """Take the name *name* (a valid name, NFC)."""

    name: str


@dataclass(frozen=True, slots=True)
class Join:
    """Move to the room *room* (a valid name, NFC; /leave is a join of the lobby)."""

    room: str


@dataclass(frozen=True, slots=True)
class Who:
    """List the members of the sender's room, page *page* (from 1)."""

    page: int


@dataclass(frozen=True, slots=True)
class Rooms:
    """List the rooms, page *page* (from 1)."""

    page: int


@dataclass(frozen=True, slots=True)
class Msg:
    """Send *text* to the member called *name* only."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the chat (the steps end here)."""


Step = Say | Reply | Nick | Join | Who | Rooms | Msg | Quit


def interpret(items: Sequence[bytes | LineTooLong], max_line: int) -> list[Step]:
    """The steps *items* ask for, in order; nothing after a /quit.

    Consecutive chat lines become one :class:`Say` (their bytes joined), so a
    burst is relayed with one send per receiver.
    """
    steps: list[Step] = []
    burst: list[bytes] = []
    for item in items:
        if isinstance(item, LineTooLong):
            _said(burst, steps)
            steps.append(Reply(error(f"line too long (max {max_line} bytes)")))
            continue
        if not item or item.isspace():
            continue
        if item[:1] == b"/" and item[:2] != b"//":
            _said(burst, steps)
            step = command(item)
            steps.append(step)
            if isinstance(step, Quit):
                return steps
            continue
        if item[:1] == b"/":
            item = item[1:]
        burst += (clean_text(item), b"\n")
    _said(burst, steps)
    return steps


def command(line: bytes) -> Step:
    """The step one command line asks for (a Reply when it is unknown or its arguments are wrong)."""
    text = clean_text(line).decode("utf-8")
    word, _, rest = text.partition(" ")
    name = word.lower()
    rest = rest.strip()
    if name == "/quit":
        return Quit()
    if name == "/nick":
        nick = unicodedata.normalize("NFC", rest)
        if not nick:
            return Reply(error("usage: /nick NAME"))
        return Nick(nick) if valid_name(nick) else Reply(error(f"invalid nickname: {NAME_RULE}"))
    if name == "/join":
        room = unicodedata.normalize("NFC", rest)
        if not room:
            return Reply(error("usage: /join ROOM"))
        return Join(room) if valid_name(room) else Reply(error(f"invalid room name: {NAME_RULE}"))
    if name == "/leave":
        return Join(LOBBY)
    if name in ("/who", "/rooms"):
        page = page_number(rest)
        if page is None:
            return Reply(error(f"usage: {name} [PAGE]"))
        return Who(page) if name == "/who" else Rooms(page)
    if name == "/msg":
        target, _, message = rest.partition(" ")
        message = message.strip()
        if not target or not message:
            return Reply(error("usage: /msg NAME TEXT"))
        return Msg(target, message)
    if name == "/help":
        return Reply("".join(f"{line}\n" for line in HELP_LINES).encode())
    return Reply(error(f"unknown command {word} (type /help)"))


def _said(burst: list[bytes], steps: list[Step]) -> None:
    if burst:
        steps.append(Say(b"".join(burst)))
        burst.clear()
