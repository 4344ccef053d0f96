"""Turning untrusted bytes into text that is safe to show on a terminal.

Peers can send anything, including ANSI escape sequences that would move the
cursor, recolour or retitle the operator's terminal. Everything shown to a
person goes through :func:`escape_controls` (or :func:`hexdump`): control
characters become visible escapes such as ``\\x1b``, and printable Unicode --
Korean, emoji, accented letters -- passes through untouched.

Also the words around the numbers people read: :func:`plural`,
:func:`format_seconds` and :func:`format_rate`.
"""

from __future__ import annotations

import codecs
import math
import re

#: C0 controls except tab, DEL, C1 controls, the Unicode line/paragraph
#: separators and the bidirectional overrides ("Trojan Source" characters).
UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: The same and tab: for one-line logs of a peer's bytes, where a tab would pass for spaces.
UNSAFE_IN_LOGS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_tabs: bool = True) -> str:
    """Return *text* with every terminal-unsafe character escaped.

    ``\\n`` and ``\\r`` become ``\\n`` and ``\\r``; other unsafe characters
    become ``\\xHH`` or ``\\uHHHH``. All printable characters are kept, and
    tab too unless *keep_tabs* is false (then it becomes ``\\t``).
    """
    unsafe = UNSAFE_CHARACTERS if keep_tabs else UNSAFE_IN_LOGS
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(_escape_one, text)


def display_bytes(data: bytes) -> str:
    """A peer's bytes as one line of a log: UTF-8 (invalid bytes become U+FFFD), every control escaped, tab included."""
    return escape_controls(data.decode("utf-8", "replace"), keep_tabs=False)


def hexdump(data: bytes, width: int = 16, start: int = 0) -> str:
    """Return a canonical hex dump of *data*: offset (counted from *start*), hex bytes, ASCII column."""
    rows = []
    for offset in range(0, len(data), width):
        row = data[offset : offset + width]
        hex_part = " ".join(f"{byte:02x}" for byte in row)
        ascii_part = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        rows.append(f"{start + offset:08x}  {hex_part:<{width * 3 - 1}}  |{ascii_part}|")
    return "\n".join(rows)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 datagram``, ``2 datagrams``, ``0 bytes``: *count* with its noun (*nouns*: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def format_seconds(seconds: float) -> str:
    """Seconds in plain decimals with three significant digits at least: ``1.250``, ``0.0123``, ``0.000123``.

    Never exponent notation, so scripts that read ``in ([\\d.]+) s`` keep working; at most
    nanoseconds.
    """
    if seconds >= 1 or seconds <= 0:
        return f"{max(seconds, 0.0):.3f}"
    decimals = min(9, max(3, 2 - math.floor(math.log10(seconds))))
    return f"{seconds:.{decimals}f}"


def format_rate(rate: float) -> str:
    """A rate with three significant digits at least: ``813,008``, ``12.5``, ``0.333``."""
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}" if rate > 0 else "0"


class TerminalText:
    """Turns a byte stream, chunk by chunk, into text safe for a terminal.

    UTF-8 sequences split between chunks are decoded whole; line breaks
    (``\n``, ``\r\n``) and tabs are kept, every other control character is
    escaped as by escape_controls().
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending_cr = False

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        if self._pending_cr:
            text = "\r" + text
        self._pending_cr = text.endswith("\r") and not final
        if self._pending_cr:
            text = text[:-1]
        lines = text.replace("\r\n", "\n").split("\n")
        return "\n".join(escape_controls(line) for line in lines)
