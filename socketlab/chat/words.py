"""The chat's words: names and their rule, notices, errors, cleaning and paging.

What one server's :class:`~socketlab.chat.protocol.ChatHub` and a cluster's
servers (:mod:`socketlab.chat.cluster`) say alike, so that both speak the same.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Callable

from socketlab.access import TokenBucket
from socketlab.text import escape_controls

LOBBY = "lobby"
#: Rooms of this many members or more hear no arrivals and departures (see ChatHub).
DEFAULT_ANNOUNCE_LIMIT = 100
#: Arrivals and departures announced to one room: this many at once, then this many a second (see
#: AnnouncementBudget).
DEFAULT_ANNOUNCE_BURST = 50
DEFAULT_ANNOUNCE_RATE = 10
#: Nicknames and room names: 1 to 32 letters or digits of any script, ``_`` or ``-`` (see valid_name()).
NAME_RULE = "1 to 32 letters or digits (any script), _ or -; no spaces"
MAX_NAME = 32
_ASCII_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
#: Names the server hands out (``user<N>``) cannot be taken with /nick.
RESERVED_NAME = re.compile(r"user[0-9]+\Z", re.IGNORECASE)
#: Bytes that need a closer look before relaying: anything but printable ASCII and tab.
_NEEDS_CLEANING = re.compile(rb"[^\t\x20-\x7e]")
#: The bytes of ordinary chat lines joined by newlines (what bytes.translate() may delete).
PLAIN_BYTES = bytes([0x09, 0x0A, *range(0x20, 0x7F)])
#: A line that starts with "/" (a command or "//"), a space or tab (maybe blank), or is empty.
SPECIAL_LINE_START = re.compile(rb"\n[/ \t\n]")

HELP_LINES = (
    "* commands:",
    "*   /nick NAME       change your name",
    "*   /join ROOM       move to ROOM, creating it",
    "*   /leave           go back to lobby",
    "*   /who [PAGE]      list the members of your room (100 a page)",
    "*   /rooms [PAGE]    list every room with its member count (50 a page)",
    "*   /msg NAME TEXT   send TEXT to NAME only",
    "*   /quit            leave the chat",
    "*   //TEXT           send a line that starts with /",
)


#: Names one /who answer lists, and rooms one /rooms answer lists: more are paged (/who 2, /rooms 2).
WHO_PAGE = 100
ROOMS_PAGE = 50


class AnnouncementBudget:
    """Up to *burst* arrival and departure notices at once to each room, then *rate* a second (0: no limit).

    A crowd that comes or goes at once -- a restart's reconnect storm, clients
    passing through the lobby on their way to a room -- would otherwise bury a
    small room's talk under notices, and cost a send to each of its members
    per arrival. Past the budget, arrivals and departures go unannounced until
    it refills (``/who`` says who is there); a room's everyday comings and
    goings never reach it.
    """

    __slots__ = ("rate", "burst", "clock", "_buckets")

    def __init__(
        self,
        rate: float = DEFAULT_ANNOUNCE_RATE,
        burst: float = DEFAULT_ANNOUNCE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, room: str) -> bool:
        """Whether a notice may go to *room* now (it is counted)."""
        if not self.rate:
            return True
        now = self.clock()
        bucket = self._buckets.get(room)
        if bucket is None:
            bucket = self._buckets[room] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(1, now)

    def forget(self, room: str) -> None:
        """*room* is gone (its bucket with it: what is kept is bounded by the rooms)."""
        self._buckets.pop(room, None)


def page_number(rest: str) -> int | None:
    """The PAGE argument of /who and /rooms (1 when none), or None when it is not a number from 1."""
    rest = rest.strip()
    if not rest:
        return 1
    return int(rest) if rest.isdigit() and rest.isascii() and 0 < int(rest) < 10**9 else None


def pages(count: int, size: int) -> int:
    return max(1, -(-count // size))


def paged(what: str, count: int, page: int, size: int, entries: list[str], command: str) -> str:
    """``in lobby (1234, page 2 of 13): a, b, ... (/who 3 for more)``."""
    last = pages(count, size)
    if page > last:
        return f"{what} ({count}): there {'is 1 page' if last == 1 else f'are {last} pages'}"
    more = f" ({command} {page + 1} for more)" if page < last else ""
    return f"{what} ({count}, page {page} of {last}): {', '.join(entries)}{more}"


def valid_name(name: str) -> bool:
    """Whether *name* may be a nickname or a room name (:data:`NAME_RULE`), given in NFC form.

    Letters and digits of every script are allowed (``한국``, ``café``), with the combining marks that
    complete them; spaces, punctuation, symbols, controls and invisible format characters (the
    right-to-left override that makes a name read backwards, zero-width joiners) are not.
    """
    if not 0 < len(name) <= MAX_NAME or name != unicodedata.normalize("NFC", name):
        return False
    if name.isascii():
        return _ASCII_NAME.match(name) is not None
    if unicodedata.category(name[0])[0] == "M":  # a mark must follow what it marks
        return False
    return all(char in "_-" or unicodedata.category(char)[0] in "LNM" for char in name)


def name_key(name: str) -> str:
    """What two names that look alike have in common: names are unique by it (``Bob`` = ``bob``, ``ﬁ`` = ``fi``)."""
    return name.lower() if name.isascii() else unicodedata.normalize("NFKC", name).casefold()


def clean_text(raw: bytes) -> bytes:
    """Return *raw* safe to relay: valid UTF-8 with control characters escaped.

    Invalid UTF-8 becomes U+FFFD; control characters other than tab (ESC
    included) become visible escapes such as ``\\x1b``. Printable Unicode is
    returned byte for byte.
    """
    if _NEEDS_CLEANING.search(raw) is None:
        return raw
    text = raw.decode("utf-8", "replace")
    return escape_controls(text).encode("utf-8")


def notice(text: str) -> bytes:
    """A server line: ``* text``."""
    return f"* {text}\n".encode()


def error(text: str) -> bytes:
    """An error line for one client: ``! text``."""
    return f"! {text}\n".encode()
