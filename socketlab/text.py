"""Turning untrusted bytes into text that is safe to show on a terminal.

Peers can send anything, including ANSI escape sequences that would move the
cursor, recolour or retitle the operator's terminal. Everything shown to a
person goes through :func:`escape_controls` (or :func:`hexdump`): control
characters become visible escapes such as ``\\x1b``, and printable Unicode --
Korean, emoji, accented letters -- passes through untouched.
"""

from __future__ import annotations

import codecs
import re

#: C0 controls except tab, DEL, C1 controls, the Unicode line/paragraph
#: separators and the bidirectional overrides ("Trojan Source" characters).
UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Return *text* with every terminal-unsafe character escaped.

    ``\\n`` and ``\\r`` become ``\\n`` and ``\\r``; other unsafe characters
    become ``\\xHH`` or ``\\uHHHH``. Tab and all printable characters are kept.
    """
    if UNSAFE_CHARACTERS.search(text) is None:
        return text
    return UNSAFE_CHARACTERS.sub(_escape_one, text)


def display_bytes(data: bytes) -> str:
    """Decode *data* as UTF-8 (invalid bytes become U+FFFD) and escape it."""
    return escape_controls(data.decode("utf-8", "replace"))


def hexdump(data: bytes, width: int = 16) -> str:
    """Return a canonical hex dump of *data*: offset, hex bytes, ASCII column."""
    rows = []
    for offset in range(0, len(data), width):
        row = data[offset : offset + width]
        hex_part = " ".join(f"{byte:02x}" for byte in row)
        ascii_part = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        rows.append(f"{offset:08x}  {hex_part:<{width * 3 - 1}}  |{ascii_part}|")
    return "\n".join(rows)


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
