"""WebSession through its sans-IO interface: HTTP routing, the upgrade, frames to lines, limits, timers.

No sockets: requests are hand-built HTTP heads or made by websockets' own ClientProtocol, and the
session's output is parsed back by the same ClientProtocol. Bytes are fed in random small pieces
on purpose (as h11's tests do): a split must never change the outcome.
"""

from __future__ import annotations

import random

import pytest
from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from socketlab.chat.web import MAX_HEAD, MAX_PINGS_PER_SECOND, WebSession, WebSite
from socketlab.lines import LineTooLong

HOST = "127.0.0.1:8080"
PAGE = b'<!doctype html><title>chat</title><script src="/chat.js"></script>'
PAGES = {
    "/": (PAGE, "text/html; charset=utf-8"),
    "/chat.js": (b"console.log(1);", "text/javascript; charset=utf-8"),
    "/chat.css": (b"body{}", "text/css; charset=utf-8"),
}
T0 = 1000.0


def site(**options: object) -> WebSite:
    return WebSite(dict(PAGES), **options)  # type: ignore[arg-type]


def feed(session: WebSession, data: bytes, now: float = T0, seed: int = 0, largest: int = 7) -> list:
    """Feed *data* in random pieces of 1..*largest* bytes; return every item the pieces completed."""
    rng = random.Random(seed)
    items: list = []
    at = 0
    while at < len(data):
        size = rng.randint(1, largest)
        items += session.receive(data[at : at + size], now)
        at += size
    return items


def head(method: str = "GET", path: str = "/", *headers: str, host: str | None = HOST) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else []) + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response(session: WebSession) -> tuple[int, dict[str, str], bytes, bool]:
    """The session's HTTP answer: status, headers (lower-case names), body, and whether EOF follows."""
    chunks = session.outgoing()
    eof = bool(chunks) and chunks[-1] == b""
    raw = b"".join(chunks)
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body, eof


def http(request: bytes, **options: object) -> tuple[WebSession, int, dict[str, str], bytes, bool]:
    session = WebSession(site(**options), T0)
    feed(session, request)
    return (session, *response(session))


class Browser:
    """A WebSocket client made of websockets' ClientProtocol, wired to one WebSession."""

    def __init__(self, session: WebSession | None = None, origin: str | None = None, seed: int = 0) -> None:
        self.session = session or WebSession(site(), T0)
        self.client = ClientProtocol(parse_uri(f"ws://{HOST}/ws"), origin=origin)  # type: ignore[arg-type]
        self.eof = False
        self.seed = seed
        self.client.send_request(self.client.connect())

    def open(self) -> "Browser":
        assert self.send() == []
        assert self.session.opened and self.session.ended is None
        [answer] = self.frames()
        assert isinstance(answer, Response) and answer.status_code == 101
        assert self.client.state is State.OPEN
        return self

    def send(self, now: float = T0) -> list:
        """Deliver what the client has queued to the session; return the items."""
        data = b"".join(self.client.data_to_send())
        self.seed += 1
        return feed(self.session, data, now, self.seed)

    def frames(self) -> list:
        """Deliver the session's output to the client; return what the client parsed."""
        for chunk in self.session.outgoing():
            assert not self.eof, "bytes after EOF"
            if chunk:
                self.client.receive_data(chunk)
            else:
                self.eof = True
                self.client.receive_eof()
        return self.client.events_received()

    def closed_with(self) -> int:
        """The close code the session sent (the client must have received a close frame)."""
        self.frames()
        assert self.client.close_rcvd is not None, "no close frame"
        return self.client.close_rcvd.code

    def text(self, data: bytes, now: float = T0) -> list:
        self.client.send_text(data)
        return self.send(now)


def opened(**options: object) -> Browser:
    return Browser(WebSession(site(**options), T0)).open()


# -- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, kind",
    [
        ("/", PAGE, "text/html; charset=utf-8"),
        ("/?from=bookmark", PAGE, "text/html; charset=utf-8"),
        ("/chat.js", b"console.log(1);", "text/javascript; charset=utf-8"),
        ("/chat.css", b"body{}", "text/css; charset=utf-8"),
    ],
)
def test_get_a_page_answers_200_with_body_and_headers_then_ends(path: str, body: bytes, kind: str) -> None:
    """GET of one of the three pages: 200, the body, its Content-Type, a CSP, then EOF and ended 'HTTP 200'."""
    session, status, headers, got, eof = http(head("GET", path))
    assert (status, got, eof) == (200, body, True)
    assert headers["content-type"] == kind
    assert headers["content-length"] == str(len(body))
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert session.ended == "HTTP 200" and session.status == 200 and not session.opened
    assert session.outgoing() == []


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/index.html",
        "/static/index.html",
        "/../setup.cfg",
        "//etc/passwd",
        "/%2e%2e/",
        "/%2e%2e/setup.cfg",
        "/chat.js/",
        "/ws/",
        "/WS",
        "http://evil.example/",
    ],
)
def test_any_other_path_is_404(path: str) -> None:
    """Only /, /chat.js, /chat.css and /ws exist: nothing is looked up on the filesystem."""
    session, status, _headers, body, eof = http(head("GET", path))
    assert (status, eof) == (404, True)
    assert body == b"Not found.\n"
    assert session.ended == "HTTP 404"


@pytest.mark.parametrize("method, path", [("POST", "/ws"), ("HEAD", "/"), ("PUT", "/"), ("DELETE", "/ws"), ("OPTIONS", "/")])
def test_methods_other_than_get_are_405_with_allow_get(method: str, path: str) -> None:
    """Anything but GET: 405 with 'Allow: GET', and the connection ends."""
    session, status, headers, _body, eof = http(head(method, path, "Content-Length: 0"))
    assert (status, headers["allow"], eof) == (405, "GET", True)
    assert session.ended == "HTTP 405" and not session.opened


@pytest.mark.parametrize("method, expected", [("POST", 405), ("PUT", 405), ("GET", 400)])
def test_a_request_with_a_body_is_answered_not_just_closed(method: str, expected: int) -> None:
    """websockets refuses request bodies without an answer; the session answers: 405 for another
    method (with 'Allow: GET'), 400 for a GET."""
    session, status, headers, _body, eof = http(head(method, "/ws", "Content-Length: 5") + b"hello")
    assert (status, eof, session.status) == (expected, True, expected)
    assert headers.get("allow") == ("GET" if expected == 405 else None)
    assert session.ended == "bad request" and not session.opened


@pytest.mark.parametrize("extra", [(), ("Connection: Upgrade",), ("Upgrade: h2c", "Connection: Upgrade")])
def test_ws_without_the_upgrade_headers_is_a_plain_400(extra: tuple[str, ...]) -> None:
    """GET /ws that is not a WebSocket handshake: 400 (not websockets' 426), then EOF."""
    session, status, headers, _body, eof = http(head("GET", "/ws", *extra))
    assert (status, eof) == (400, True)
    assert "upgrade" not in headers
    assert session.ended == "HTTP 400" and not session.opened


def test_ws_with_two_hosts_or_two_origins_is_400() -> None:
    """Ambiguous Host or Origin headers are refused before the Origin rule is applied."""
    for extra in (("Host: other:1",), ("Origin: http://" + HOST, "Origin: http://" + HOST)):
        browser = Browser()
        data = b"".join(browser.client.data_to_send())
        top, _, _ = data.partition(b"\r\n\r\n")
        feed(browser.session, top + b"\r\n" + "\r\n".join(extra).encode() + b"\r\n\r\n")
        assert response(browser.session)[0] == 400


# -- the Origin rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin, allowed, status",
    [
        (None, (), 101),  # no Origin: not a browser, so no cross-site page is driving it
        ("http://" + HOST, (), 101),  # the page's own origin, from the Host header
        ("http://evil.example", (), 403),
        ("https://" + HOST, (), 403),  # same host, another scheme
        ("http://127.0.0.1:8081", (), 403),  # same host, another port
        ("null", (), 403),
        ("https://chat.example.org", ("https://chat.example.org",), 101),
        ("https://other.example.org", ("https://chat.example.org",), 403),
    ],
)
def test_origin_rule(origin: str | None, allowed: tuple[str, ...], status: int) -> None:
    """No Origin or the page's own origin opens; others only when listed in WebSite.origins (else 403)."""
    browser = Browser(WebSession(site(origins=allowed), T0), origin=origin)
    browser.send()
    [answer] = browser.frames()
    assert answer.status_code == status
    assert browser.session.opened is (status == 101)
    if status != 101:
        assert browser.session.ended == f"HTTP {status}" and browser.eof


# -- the request head: size, pieces, time -------------------------------------------------------


def padded(size: int) -> bytes:
    """A GET / head of exactly *size* bytes (header lines of about 100 bytes)."""
    start = head("GET", "/")[:-2]
    pad = b""
    while len(start) + len(pad) + 2 < size:
        room = size - len(start) - len(pad) - 2
        value = b"a" * max(1, min(90, room - len(b"X-Pad: \r\n")))
        pad += b"X-Pad: " + value + b"\r\n"
    data = start + pad + b"\r\n"
    assert len(data) == size, len(data)
    return data


def test_head_over_max_head_without_completing_is_431() -> None:
    """More than MAX_HEAD bytes of head and no end yet: 431, EOF, ended; later bytes change nothing."""
    data = padded(MAX_HEAD + 400)[:-2]  # no blank line: the head never completes
    session = WebSession(site(), T0)
    feed(session, data, largest=64)
    status, _headers, _body, eof = response(session)
    assert (status, eof) == (431, True)
    assert session.ended == "request head too large"
    assert session.receive(b"\r\n", T0) == [] and session.outgoing() == []


def test_head_over_max_head_in_one_read_is_431() -> None:
    """A complete 10 KiB head of 110 short headers, arriving in one piece, is held to MAX_HEAD too."""
    start = head("GET", "/")[:-2]
    data = start + b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"a" * 80) for i in range(110)) + b"\r\n"
    assert 10 * 1024 - 200 < len(data) <= 10 * 1024 + 200
    session = WebSession(site(), T0)
    session.receive(data, T0)
    status, _headers, _body, eof = response(session)
    assert (status, eof) == (431, True)
    assert session.ended == "request head too large"


def test_head_just_under_max_head_is_served() -> None:
    """A long but complete head within MAX_HEAD is answered normally."""
    session, status, _headers, body, _eof = http(padded(MAX_HEAD - 10))
    assert (status, body) == (200, PAGE)


@pytest.mark.parametrize("seed", range(5))
def test_requests_fed_in_random_pieces_work(seed: int) -> None:
    """A page request, a handshake and a message, each split anywhere, behave as if sent whole."""
    largest = 1 + seed * 3
    session = WebSession(site(), T0)
    feed(session, head("GET", "/"), seed=seed, largest=largest)
    status, headers, body, eof = response(session)
    assert (status, headers["content-type"], body, eof) == (200, "text/html; charset=utf-8", PAGE, True)

    browser = Browser(seed=seed)
    assert feed(browser.session, b"".join(browser.client.data_to_send()), seed=seed, largest=largest) == []
    assert browser.session.opened and browser.frames()[0].status_code == 101
    browser.client.send_text("héllo wörld 👋\nsecond".encode())
    data = b"".join(browser.client.data_to_send())
    assert feed(browser.session, data, seed=seed, largest=largest) == ["héllo wörld 👋".encode(), b"second"]


@pytest.mark.parametrize("largest", [1, 7, 10_000])
@pytest.mark.parametrize("after", [b"xyz", head("GET", "/chat.js"), b"\r\n"])
def test_bytes_after_a_page_request_are_not_taken_for_frames(after: bytes, largest: int) -> None:
    """A page request followed by more bytes (a pipelined request, garbage) gets its page, then EOF: what
    follows a head is not handed to the WebSocket protocol before the head is answered."""
    session = WebSession(site(), T0)
    assert feed(session, head("GET", "/") + after, largest=largest) == []
    status, headers, body, eof = response(session)
    assert (status, body, eof, session.ended) == (200, PAGE, True, "HTTP 200")


@pytest.mark.parametrize("largest", [1, 7, 10_000])
def test_a_message_sent_with_the_handshake_is_read_after_the_upgrade(largest: int) -> None:
    """A client that sends a frame without waiting for the 101 (in the same write as its request) is
    upgraded, then its message is read; garbage there instead fails the WebSocket (1002)."""
    browser = Browser()
    request = b"".join(browser.client.data_to_send())
    frame = Frame(Opcode.TEXT, b"early\n").serialize(mask=True, extensions=[])
    assert feed(browser.session, request + frame, largest=largest) == [b"early"]
    assert browser.session.opened and browser.frames()[0].status_code == 101
    garbled = Browser()
    assert feed(garbled.session, b"".join(garbled.client.data_to_send()) + b"GET / HTTP/1.1\r\n\r\n", largest=largest) == []
    assert garbled.session.opened
    assert garbled.closed_with() == CloseCode.PROTOCOL_ERROR


def test_requests_fed_one_byte_at_a_time_work() -> None:
    """One byte per receive(): the page is served, the handshake completes, a message arrives."""
    session = WebSession(site(), T0)
    feed(session, head("GET", "/chat.css"), largest=1)
    assert response(session)[0] == 200
    browser = Browser()
    feed(browser.session, b"".join(browser.client.data_to_send()), largest=1)
    assert browser.session.opened and browser.frames()[0].status_code == 101
    browser.client.send_text(b"hi\n")
    assert feed(browser.session, b"".join(browser.client.data_to_send()), largest=1) == [b"hi"]


def test_head_timeout() -> None:
    """tick() after head_timeout with the head unfinished ends the session; before it, nothing."""
    session = WebSession(site(head_timeout=5.0), T0)
    session.receive(b"GET / HTTP/1.1\r\nHo", T0 + 1)
    assert session.tick(T0 + 4.9) is None and session.ended is None
    assert session.tick(T0 + 5.1) == "request head timeout"
    assert session.ended == "request head timeout"
    assert session.tick(T0 + 6) is None  # reported once


def test_head_timeout_does_not_apply_after_the_upgrade() -> None:
    """Once open, the head deadline is gone (only the keepalive runs)."""
    browser = opened(head_timeout=1.0, ping_interval=100.0)
    assert browser.session.tick(T0 + 50) is None
    assert browser.session.ended is None and browser.frames() == []


# -- messages to lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, items",
    [
        (b"a\nb", [b"a", b"b"]),
        (b"a\n", [b"a"]),
        (b"a", [b"a"]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"\n\n", [b"", b""]),
        ("Korean 한국어 ✓".encode(), ["Korean 한국어 ✓".encode()]),
    ],
)
def test_a_text_message_is_one_or_more_lines(text: bytes, items: list[bytes]) -> None:
    """Each message is lines; the last newline is optional and a message never continues into the next."""
    browser = opened()
    assert browser.text(text) == items
    assert browser.text(b"next") == [b"next"]


def test_a_fragmented_message_completes_its_lines_only_at_fin() -> None:
    """Fragments give no lines until the final one; then every line, one split across fragments whole."""
    browser = opened()
    browser.client.send_text(b"one\ntw", fin=False)
    assert browser.send() == []
    browser.client.send_continuation(b"o\nthr", fin=False)
    assert browser.send() == []
    browser.client.send_continuation(b"ee", fin=True)
    assert browser.send() == [b"one", b"two", b"three"]
    assert browser.text(b"four\n") == [b"four"]


def test_a_line_over_max_line_is_a_line_too_long_item() -> None:
    """A line longer than max_line becomes LineTooLong (the hub answers '! line too long'); the rest goes on."""
    browser = opened(max_line=8)
    assert browser.text(b"123456789\nshort\n12345678") == [LineTooLong(8), b"short", b"12345678"]
    browser.client.send_text(b"12345", fin=False)
    browser.send()
    browser.client.send_continuation(b"6789", fin=True)
    assert browser.send() == [LineTooLong(8)]
    assert browser.text(b"ok") == [b"ok"]
    assert browser.session.ended is None


def test_a_message_over_max_message_closes_1009_and_relays_nothing_of_it() -> None:
    """Bigger than max_message, whole or in fragments: close 1009, EOF, none of its lines."""
    browser = opened(max_message=100)
    assert browser.text(b"x" * 101) == []
    assert browser.closed_with() == CloseCode.MESSAGE_TOO_BIG and browser.eof
    assert browser.session.ended == "message too big"

    browser = opened(max_message=100)
    browser.client.send_text(b"hello\n" * 10, fin=False)
    assert browser.send() == []
    browser.client.send_continuation(b"y" * 41, fin=True)
    assert browser.send() == []
    assert browser.closed_with() == CloseCode.MESSAGE_TOO_BIG


def test_a_message_of_exactly_max_message_is_accepted() -> None:
    """The limit is inclusive."""
    browser = opened(max_message=100)
    assert browser.text(b"x" * 99 + b"\n") == [b"x" * 99]
    assert browser.session.ended is None


def test_a_binary_message_closes_1003() -> None:
    """Binary messages are refused: close 1003, ended 'binary message'."""
    browser = opened()
    browser.client.send_binary(b"hello\n")
    assert browser.send() == []
    assert browser.closed_with() == CloseCode.UNSUPPORTED_DATA and browser.eof
    assert browser.session.ended == "binary message"


@pytest.mark.parametrize(
    "fragments",
    [
        [b"ok\n\xff\n"],
        [b"ab\xe2"],  # truncated at the end of the message
        [b"ok\nab\xe2\x82", b"(\n"],  # an invalid sequence split across fragments
        [b"ok\n", b"\xed\xa0\x80\n"],  # a UTF-16 surrogate
        [b"ok\n", b"\xc0\xaf\n"],  # an overlong encoding
    ],
)
def test_invalid_utf8_closes_1007_and_relays_nothing_of_the_message(fragments: list[bytes]) -> None:
    """A text message that is not UTF-8, wherever the bad bytes fall: close 1007, no lines from it."""
    browser = opened()
    items = []
    for number, fragment in enumerate(fragments):
        fin = number == len(fragments) - 1
        if number == 0:
            browser.client.send_text(fragment, fin=fin)
        else:
            browser.client.send_continuation(fragment, fin=fin)
        items += browser.send()
    assert items == []
    assert browser.closed_with() == CloseCode.INVALID_DATA
    assert browser.session.ended == "invalid UTF-8"


def test_a_character_split_across_fragments_is_valid() -> None:
    """A multi-byte character cut between two fragments is still one valid character."""
    browser = opened()
    browser.client.send_text(b"caf\xc3", fin=False)
    browser.send()
    browser.client.send_continuation(b"\xa9 \xf0\x9f", fin=False)
    browser.send()
    browser.client.send_continuation(b"\x91\x8b\n", fin=True)
    assert browser.send() == ["café 👋".encode()]
    assert browser.text(b"next") == [b"next"]


# -- control frames ------------------------------------------------------------------------------


def test_each_ping_gets_a_pong() -> None:
    """Pings within the rate are answered with pongs carrying their data, in order."""
    browser = opened()
    for number in range(3):
        browser.client.send_ping(f"p{number}".encode())
    assert browser.send() == []
    pongs = browser.frames()
    assert [(frame.opcode, frame.data) for frame in pongs] == [(Opcode.PONG, f"p{n}".encode()) for n in range(3)]


def test_a_ping_burst_over_the_rate_closes_1008() -> None:
    """MAX_PINGS_PER_SECOND pings at once are fine; one more closes with 1008 ('too many pings')."""
    burst = int(MAX_PINGS_PER_SECOND)
    browser = opened()
    for _ in range(burst):
        browser.client.send_ping(b"")
    browser.send()
    assert browser.session.ended is None
    assert [frame.opcode for frame in browser.frames()] == [Opcode.PONG] * burst
    browser.client.send_ping(b"")
    browser.send()
    assert browser.closed_with() == CloseCode.POLICY_VIOLATION
    assert browser.session.ended == "too many pings"


def test_pings_at_the_allowed_rate_go_on_forever() -> None:
    """The budget refills with time: a full burst every second is never closed."""
    browser = opened()
    for second in range(5):
        for _ in range(int(MAX_PINGS_PER_SECOND)):
            browser.client.send_ping(b"")
        browser.send(T0 + second)
    assert browser.session.ended is None
    assert len(browser.frames()) == 5 * int(MAX_PINGS_PER_SECOND)


def test_a_close_from_the_client_is_answered_and_ends_the_session() -> None:
    """The client's close frame: the same code is echoed, then EOF; ended 'disconnected'."""
    browser = opened()
    browser.client.send_close(CloseCode.GOING_AWAY, "tab closed")
    assert browser.send() == []
    chunks = browser.session.outgoing()
    assert chunks[-1] == b"" and len(chunks) == 2
    assert browser.session.ended == "disconnected"
    browser.client.receive_data(chunks[0])
    assert browser.client.close_rcvd.code == CloseCode.GOING_AWAY
    assert browser.session.receive(b"more", T0) == []


def test_a_malformed_frame_closes_1002() -> None:
    """An unmasked frame from a client breaks RFC 6455: close 1002, ended 'protocol error'."""
    browser = opened()
    assert feed(browser.session, b"\x81\x03hi\n") == []
    assert browser.closed_with() == CloseCode.PROTOCOL_ERROR
    assert browser.session.ended == "protocol error"


def test_eof_from_the_client_ends_the_session() -> None:
    """The client's side ends without a close frame: ended 'disconnected'."""
    browser = opened()
    browser.session.receive_eof()
    assert browser.session.ended == "disconnected"


# -- keepalive -----------------------------------------------------------------------------------


def test_a_quiet_connection_is_pinged_and_closed_1011_without_a_pong() -> None:
    """Quiet past ping_interval: a ping; no pong within ping_timeout: close 1011, 'keepalive timeout'."""
    browser = opened(ping_interval=10.0, ping_timeout=5.0, ping_spread=0.0)
    session = browser.session
    assert session.tick(T0 + 9.9) is None and browser.frames() == []
    assert session.tick(T0 + 10.1) is None
    [ping] = browser.frames()
    assert ping.opcode is Opcode.PING
    assert session.tick(T0 + 11) is None and browser.frames() == []  # one ping at a time
    assert session.tick(T0 + 15.2) == "keepalive timeout"
    assert session.ended == "keepalive timeout"
    assert browser.closed_with() == CloseCode.INTERNAL_ERROR and browser.eof


def test_a_pong_in_time_keeps_the_connection() -> None:
    """The client's pong (ClientProtocol answers pings itself) resets the keepalive."""
    browser = opened(ping_interval=10.0, ping_timeout=5.0, ping_spread=0.0)
    session = browser.session
    session.tick(T0 + 10.1)
    assert [frame.opcode for frame in browser.frames()] == [Opcode.PING]
    browser.send(T0 + 11)  # the pong
    assert session.tick(T0 + 16) is None
    assert session.tick(T0 + 20.9) is None and browser.frames() == []  # quiet since the pong: not yet
    session.tick(T0 + 21.2)
    assert [frame.opcode for frame in browser.frames()] == [Opcode.PING]
    assert session.ended is None


def test_a_quiet_crowd_is_not_pinged_all_at_once() -> None:
    """Connections opened together and left quiet get their first ping at random in the interval's last
    half; after the pong, the next comes after a whole interval of quiet."""
    crowd = [opened(ping_interval=10.0, ping_timeout=5.0) for _ in range(100)]
    firsts = sorted(browser.session.next_deadline() or 0.0 for browser in crowd)
    assert T0 + 5.0 <= firsts[0] and firsts[-1] <= T0 + 10.0
    assert firsts[-1] - firsts[0] > 2.5  # 100 draws from 5 s all within 2.5 s: odds of about 2**-95
    browser = crowd[0]
    first = browser.session.next_deadline() or 0.0
    assert browser.session.tick(first - 0.01) is None and browser.frames() == []
    browser.session.tick(first + 0.01)
    assert [frame.opcode for frame in browser.frames()] == [Opcode.PING]
    browser.send(first + 1)  # the pong
    assert browser.session.next_deadline() == pytest.approx(first + 11)


def test_messages_count_as_heard_for_the_keepalive() -> None:
    """A client that keeps talking is not pinged."""
    browser = opened(ping_interval=10.0, ping_timeout=5.0)
    for second in range(0, 40, 5):
        assert browser.text(b"hi", T0 + second) == [b"hi"]
        assert browser.session.tick(T0 + second + 4) is None
    assert browser.frames() == []


# -- output ----------------------------------------------------------------------------------


def test_send_lines_is_one_text_frame_with_exactly_the_bytes() -> None:
    """send_lines() while open: one unfragmented text frame holding exactly the bytes given."""
    browser = opened()
    browser.session.send_lines("* welcome user1\n<bo> 안녕\n".encode())
    [frame] = browser.frames()
    assert isinstance(frame, Frame)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, "* welcome user1\n<bo> 안녕\n".encode())


def test_send_lines_before_the_upgrade_or_after_close_sends_nothing() -> None:
    """Nothing is framed onto an HTTP response or after the closing handshake started."""
    session = WebSession(site(), T0)
    session.send_lines(b"early\n")
    assert session.outgoing() == []
    browser = opened()
    browser.session.close(None)
    browser.session.send_lines(b"late\n")
    frames = browser.frames()
    assert [frame.opcode for frame in frames] == [Opcode.CLOSE]


@pytest.mark.parametrize(
    "reason, code",
    [
        (None, CloseCode.NORMAL_CLOSURE),
        ("server shutting down", CloseCode.GOING_AWAY),
        ("server full", CloseCode.TRY_AGAIN_LATER),
        ("idle timeout", CloseCode.NORMAL_CLOSURE),
    ],
)
def test_close_codes(reason: str | None, code: int) -> None:
    """close(None) is 1000, shutdown 1001, 'server full' 1013; the reason travels with it."""
    browser = opened()
    browser.session.close(reason)
    assert browser.closed_with() == code
    assert browser.client.close_rcvd.reason == (reason or "")
    browser.session.close(reason)  # twice: still one close frame
    assert browser.frames() == []


def test_only_messages_count_as_activity() -> None:
    """last_message (what the idle timeout measures) moves with text messages, not with pings or pongs."""
    browser = opened(ping_interval=1.0)
    browser.session.tick(T0 + 2)
    browser.frames()
    browser.send(T0 + 3)  # the pong
    browser.client.send_ping(b"")
    browser.send(T0 + 4)
    assert browser.session.last_message == T0
    browser.text(b"hi", T0 + 5)
    assert browser.session.last_message == T0 + 5
