"""LineBuffer: whole lines from any split of the byte stream, bounded memory."""

import random

import pytest

from socketlab.lines import LineBuffer, LineTooLong, message_lines


def feed_in_pieces(buffer: LineBuffer, stream: bytes, rng: random.Random, longest: int) -> list:
    """Feed *stream* in random pieces of 1 to *longest* bytes; return every item."""
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, longest)
        got += buffer.feed(stream[pos : pos + step])
        pos += step
    return got


def test_lines_survive_every_split() -> None:
    """Feeding the stream one byte at a time or in random pieces gives the same lines."""
    stream = b"one\ntwo\r\n\nthree \xf0\x9f\x91\x8d\nlast"
    expected = [b"one", b"two", b"", b"three \xf0\x9f\x91\x8d"]
    rng = random.Random(7)
    for _ in range(50):
        buffer = LineBuffer(100)
        assert feed_in_pieces(buffer, stream, rng, 6) == expected
        assert buffer.finish() == [b"last"]


def test_random_streams_give_what_reading_line_by_line_gives() -> None:
    """Any mix of short, long and \\r-ended lines, in any pieces: each line once, in order,
    without its terminator, or one LineTooLong in its place."""
    rng = random.Random(11)
    alphabet = [b"a", b"b", b" ", b"/", b"\r", b"\n", b"\n", b"\xc3\xa9"]
    for _ in range(400):
        limit = rng.randint(1, 12)
        stream = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) + b"\n"
        expected: list = []
        for line in stream.split(b"\n")[:-1]:
            line = line[:-1] if line.endswith(b"\r") else line
            expected.append(line if len(line) <= limit else LineTooLong(limit))
        buffer = LineBuffer(limit)
        assert feed_in_pieces(buffer, stream, rng, 24) == expected, (stream, limit)
        assert buffer.finish() == []


def test_long_line_reported_once_and_rest_skipped() -> None:
    """An overlong line yields one LineTooLong; the next line arrives intact."""
    buffer = LineBuffer(8)
    assert buffer.feed(b"12345678\n") == [b"12345678"]
    assert buffer.feed(b"123456789") == [LineTooLong(8)]
    assert buffer.feed(b"more junk") == []
    assert buffer.feed(b" end\nnext\n") == [b"next"]
    assert buffer.feed(b"waytoolongline\nok\n") == [LineTooLong(8), b"ok"]


def test_crlf_at_the_limit_is_not_too_long() -> None:
    """The limit counts the line, not its \\r\\n terminator, even split between chunks."""
    buffer = LineBuffer(4)
    assert buffer.feed(b"abcd\r") == []
    assert buffer.feed(b"\n") == [b"abcd"]


def test_memory_stays_bounded_without_newlines() -> None:
    """100 MB with no newline never makes the buffer hold more than the limit."""
    buffer = LineBuffer(4096)
    chunk = b"x" * 65536
    reported = []
    for _ in range(1600):
        reported += buffer.feed(chunk)
        assert buffer.pending <= 4097
    assert reported == [LineTooLong(4096)]
    assert buffer.feed(b"\nhello\n") == [b"hello"]


def test_max_line_must_be_positive() -> None:
    """A zero limit is a programming error."""
    with pytest.raises(ValueError):
        LineBuffer(0)


def test_message_lines_is_a_buffer_fed_the_whole_message_then_finished() -> None:
    """The shortcut for one short line must give exactly what the buffer gives, for every kind of message."""
    rng = random.Random(7)
    alphabet = [b"a", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b" "]
    messages = [b"", b"hello", b"x" * 8, b"x" * 9, b"x" * 8 + b"\r", b"line\n", b"a\r\nb", b"\n\n", b"\r"]
    messages += [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(2000)]
    for message in messages:
        buffer = LineBuffer(8)
        assert message_lines(message, 8) == buffer.feed(message) + buffer.finish(), message
    assert message_lines(b"x" * 8, 8) == [b"x" * 8]
    assert message_lines(b"x" * 9, 8) == [LineTooLong(8)]
