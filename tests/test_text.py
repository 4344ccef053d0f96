"""Sanitising and hex dumps: what a peer's bytes look like on a terminal."""

from socketlab.text import display_bytes, escape_controls, hexdump


def test_escape_controls_escapes_ansi_and_keeps_unicode() -> None:
    """ESC, CR, LF, DEL and C1 become visible escapes; Korean, emoji, tab stay."""
    text = "\x1b[31mred\r\n\x7f\x9b 안녕 👍🏽 café\tend"
    assert escape_controls(text) == "\\x1b[31mred\\r\\n\\x7f\\x9b 안녕 👍🏽 café\tend"


def test_escape_controls_neutralises_bidi_and_line_separators() -> None:
    """Trojan Source bidi overrides and U+2028 are escaped; the ZWJ in emoji is kept."""
    assert escape_controls("a\u202eb\u2028c") == "a\\u202eb\\u2028c"
    family = "👨\u200d👩\u200d👧"
    assert escape_controls(family) == family


def test_display_bytes_replaces_invalid_utf8() -> None:
    """Invalid UTF-8 becomes U+FFFD rather than an error."""
    assert display_bytes(b"ok \xff\xfe end\n") == "ok \ufffd\ufffd end\\n"


def test_hexdump_layout() -> None:
    """Offset, sixteen hex bytes, ASCII column with dots for the rest."""
    dump = hexdump(b"Hello, world!\x00\x01\x02\xffZ")
    assert dump.splitlines() == [
        "00000000  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 00 01 02  |Hello, world!...|",
        "00000010  ff 5a                                            |.Z|",
    ]


def test_terminal_text_keeps_lines_and_split_utf8() -> None:
    """A stream split inside a UTF-8 sequence and a \\r\\n decodes whole; ESC is escaped."""
    from socketlab.text import TerminalText

    terminal = TerminalText()
    data = "안녕\r\n\x1b[31mred\tok\n".encode()
    out = "".join(terminal.feed(data[i : i + 1]) for i in range(len(data)))
    out += terminal.feed(b"", final=True)
    assert out == "안녕\n\\x1b[31mred\tok\n"
