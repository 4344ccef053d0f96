"""Sans-IO line framing with a byte limit.

TCP delivers a byte stream, not messages: one ``recv()`` may hold half a
line or twenty lines. :class:`LineBuffer` turns whatever chunks arrive into
whole lines, whatever the split, and never stores more than ``max_line``
bytes of an unfinished line: a peer that sends 100 MB without a newline
costs no more memory than one that sends a short line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

#: Default longest line in bytes, terminator excluded. IRC allows 512 bytes,
#: most line-based servers a few KiB; 4 KiB fits any chat line a person types.
DEFAULT_MAX_LINE = 4096


@dataclass(frozen=True)
class LineTooLong:
    """Stands in for a line longer than the limit; its bytes were discarded."""

    limit: int


Item = Union[bytes, LineTooLong]


class LineBuffer:
    """Reassembles ``\\n``-terminated lines (``\\r\\n`` accepted) from chunks.

    ``feed(chunk)`` returns the lines the chunk completes, without their
    terminators, in order. A line longer than *max_line* bytes is replaced by
    one :class:`LineTooLong` item, reported as soon as the limit is passed;
    the rest of it, up to the next newline, is skipped without being stored.
    ``finish()`` returns an unterminated last line when the stream ends.
    """

    __slots__ = ("max_line", "_partial", "_skipping")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._partial = b""
        self._skipping = False

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished line (never more than max_line + 1)."""
        return len(self._partial)

    def feed(self, chunk: bytes) -> list[Item]:
        """Add *chunk*; return the complete lines (and LineTooLong markers)."""
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return []
            self._skipping = False
            chunk = chunk[end + 1 :]
        data = self._partial + chunk if self._partial else chunk
        pieces = data.split(b"\n")
        partial = pieces.pop()
        limit = self.max_line
        lines: list[Item]
        if b"\r" not in data and (not pieces or max(map(len, pieces)) <= limit):
            lines = pieces  # type: ignore[assignment]  # the common case, without a loop per line
        else:
            lines = []
            for line in pieces:
                if line.endswith(b"\r"):
                    line = line[:-1]
                lines.append(line if len(line) <= limit else LineTooLong(limit))
        if len(partial) > limit + 1 or (len(partial) > limit and not partial.endswith(b"\r")):
            lines.append(LineTooLong(limit))
            partial = b""
            self._skipping = True
        self._partial = partial
        return lines

    def finish(self) -> list[Item]:
        """The stream ended: return its unterminated last line, if any."""
        partial, self._partial = self._partial, b""
        self._skipping = False
        if partial.endswith(b"\r"):
            partial = partial[:-1]
        return [partial] if partial else []


def message_lines(message: bytes, max_line: int = DEFAULT_MAX_LINE) -> list[Item]:
    """The lines of one whole *message* (a WebSocket or Socket.IO text), as a :class:`LineBuffer` fed it
    and then finished would give them: the last line needs no terminator.

    A message of one short line, the chat's usual, is returned as it is, without a buffer.
    """
    if len(message) <= max_line and b"\n" not in message and b"\r" not in message:
        return [message] if message else []
    framer = LineBuffer(max_line)
    return framer.feed(message) + framer.finish()
