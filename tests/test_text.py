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


def test_display_bytes_escapes_tabs_for_logs_escape_controls_keeps_them() -> None:
    """A log line shows a peer's tab as \\t (it would pass for spaces); chat text keeps its tabs."""
    assert display_bytes(b"a\tb") == "a\\tb"
    assert escape_controls("a\tb") == "a\tb"
    assert escape_controls("a\tb", keep_tabs=False) == "a\\tb"


def test_hexdump_offsets_can_start_further_on() -> None:
    """A chunk dumped with start=N is numbered from N, so a stream's dumps run on."""
    assert hexdump(b"AB", start=0x20) == "00000020  41 42" + " " * 44 + "|AB|"


def test_plural() -> None:
    """One noun for one, the plural for every other count, zero included."""
    from socketlab.text import plural

    assert [plural(n, "datagram") for n in (0, 1, 2)] == ["0 datagrams", "1 datagram", "2 datagrams"]
    assert plural(1, "byte") == "1 byte" and plural(1024, "byte") == "1024 bytes"
    assert plural(2, "child", "children") == "2 children"


def test_seconds_and_rates_keep_three_significant_digits() -> None:
    """Small durations are not rounded to 0.000 s, nor their rates to 0/s; no exponents."""
    from socketlab.text import format_rate, format_seconds

    assert format_seconds(1.23456) == "1.235"
    assert format_seconds(0.5) == "0.500"
    assert format_seconds(0.0123456) == "0.0123"
    assert format_seconds(0.000123456) == "0.000123"
    assert format_seconds(0.0) == "0.000"
    assert format_seconds(3e-10) == "0.000000000"
    assert format_rate(813008.13) == "813,008"
    assert format_rate(123.4) == "123"
    assert format_rate(12.345) == "12.3"
    assert format_rate(0.333333) == "0.333"
    assert format_rate(0.0) == "0"
