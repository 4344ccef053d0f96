"""tcp-client's relay pieces without sockets, fed byte by byte: refusal lines, CRLF, the idle timer."""

from __future__ import annotations

import random
import threading

import pytest

from socketlab.relay import CrlfEncoder, IdleTimer, RefusalWatch
from support import TIMEOUT

pytestmark = pytest.mark.timeout(30)


def watch_all(data: bytes, pieces: list[int]) -> tuple[bytes, str | None]:
    """Feed *data* to a RefusalWatch in pieces of these sizes; what it passed on, and the refusal."""
    watch = RefusalWatch()
    out = b""
    start = 0
    for size in pieces:
        out += watch.feed(data[start : start + size])
        start += size
    out += watch.feed(data[start:]) if data[start:] else b""
    held, refusal = watch.finish()
    return out + held, refusal


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"server is full, try again later\n", "server is full, try again later"),
        (b"server is full\n", "server is full"),
        (b"! server full\n", "server full"),
        (b"! too many connections from your address\n", "too many connections from your address"),
        (b"too many connections from your address, try again later\n", "too many connections from your address, try again later"),
        (b"! chat backend unavailable, try again later\n", "chat backend unavailable, try again later"),
    ],
)
def test_a_refusal_line_then_the_end_is_a_refusal_however_it_is_split(line: bytes, reason: str) -> None:
    """socketlab's refusal lines, alone before the end, are refusals whatever the chunking."""
    for _ in range(20):
        pieces = [random.randint(1, 5) for _ in range(len(line))]
        assert watch_all(line, pieces) == (b"", reason)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Welcome to Socket Server\n",
        b"server is full\nbut here is more\n",
        b"server is",
        b"! server fullish news\nmore",
        b"too many cooks\n",
        b"!",
        b"x" * 1000,
        b"server is full" + b"x" * 300 + b"\n",
    ],
)
def test_anything_else_is_passed_on_unchanged(data: bytes) -> None:
    """Other bytes, including ones that start like a refusal, come out whole and in order."""
    for _ in range(20):
        pieces = [random.randint(1, 7) for _ in range(len(data))]
        assert watch_all(data, pieces) == (data, None)


def test_output_is_not_held_once_it_cannot_be_a_refusal() -> None:
    """A first line unlike any refusal is passed on at once, not at the end."""
    watch = RefusalWatch()
    assert watch.feed(b"se") == b""
    assert watch.feed(b"x") == b"sex"
    assert watch.feed(b"more") == b"more"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb", b"a\r\nb"),
        (b"\n\n", b"\r\n\r\n"),
        (b"lone\rcr\n", b"lone\rcr\r\n"),
        (b"\r\r\n", b"\r\r\n"),
        (b"", b""),
    ],
)
def test_crlf_encoder_byte_by_byte(data: bytes, expected: bytes) -> None:
    """LF becomes CRLF, CRLF stays, a lone CR stays, whether fed whole or byte by byte."""
    assert CrlfEncoder().feed(data) == expected
    encoder = CrlfEncoder()
    assert b"".join(encoder.feed(data[i : i + 1]) for i in range(len(data))) == expected


def test_idle_timer_fires_once_after_quiet_and_not_while_touched() -> None:
    """The timer fires after its seconds of no touch(), once; stop() ends it without firing."""
    fired = threading.Event()
    timer = IdleTimer(0.05, fired.set)
    timer.start()
    assert fired.wait(TIMEOUT) and timer.expired
    timer.stop()
    quiet = IdleTimer(TIMEOUT, fired.clear)
    quiet.start()
    quiet.stop()
    assert not quiet.expired and fired.is_set()


def test_a_slow_receive_only_peer_gets_all_of_the_input(tmp_path) -> None:
    """A server that ends its side at once, then reads slowly (32 KiB every 0.1 s, small buffers on both
    sides): while it takes what is sent, the relay keeps sending, however long each send blocks."""
    import os
    import socket

    from socketlab.relay import StdioRelay

    data = random.Random(3).randbytes(768 * 1024)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    got = bytearray()

    def slow_reader() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(32 * 1024):
                got.extend(chunk)
                threading.Event().wait(0.1)

    thread = threading.Thread(target=slow_reader, daemon=True)
    thread.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    sock.connect(listener.getsockname())
    with open(path, "rb") as source, open(os.devnull, "wb") as sink:
        assert StdioRelay(sock, "slow", source.fileno(), sink.fileno()).run() == "closed"
    sock.close()
    thread.join(TIMEOUT)
    listener.close()
    assert bytes(got) == data
