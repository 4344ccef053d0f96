"""HTTP/1.1 requests for Engine.IO's long-polling: heads, bodies, keep-alive, limits."""

from __future__ import annotations

import pytest

from socketlab.http import HttpError, RequestReader, response


def test_requests_one_after_another_on_one_connection() -> None:
    reader = RequestReader()
    data = (
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n4hel"
    )
    (first,) = reader.feed(data)
    assert (first.method, first.path, first.query) == ("GET", "/socket.io/", {"EIO": "4", "transport": "polling"})
    assert first.keep_alive
    assert reader.partial
    (second,) = reader.feed(b"lo")
    assert second.body == b"4hell"
    assert reader.take_buffered() == b"o"


def test_a_head_split_over_reads() -> None:
    reader = RequestReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHo") == []
    (request,) = reader.feed(b"st: x\r\nConnection: close\r\n\r\n")
    assert request.header("HOST") == "x"
    assert not request.keep_alive


def test_http_10_keeps_alive_only_when_asked() -> None:
    (request,) = RequestReader().feed(b"GET / HTTP/1.0\r\n\r\n")
    assert not request.keep_alive
    (request,) = RequestReader().feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert request.keep_alive


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 1200 + b"\r\n", 431),  # all in one read
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 1200, 431),  # never ends
        (b"POST / HTTP/1.1\r\nContent-Length: 1000001\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),  # latin-1 '\u00b2': a digit, but not 0-9
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ],
)
def test_requests_that_cannot_be_read(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        RequestReader().feed(data)
    assert caught.value.status == status


def test_response_carries_its_length() -> None:
    assert response(200, b"ok", [("Content-Type", "text/html")]) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nok"
    )
    assert response(400, b"", close=True) == b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
