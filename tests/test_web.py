"""The chat over WebSocket, end to end: browsers (websockets' clients) and TCP clients in the same rooms."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from importlib import resources
from typing import Any, Iterator

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import CloseCode, Opcode
from websockets.http11 import Response
from websockets.sync.client import connect
from websockets.uri import parse_uri

from socketlab.chat.server import ChatServer
from socketlab.chat.web import WebSite, load_pages
from support import TIMEOUT, Browser, CliServer, Peer, serving, wait_until

pytestmark = pytest.mark.timeout(30)


class RawBrowser:
    """A WebSocket client on a bare socket: the handshake by hand, then only what the test does.

    It never sends anything after the handshake -- not even the pongs its
    ClientProtocol queues -- and reads only when asked.
    """

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.events: list[Any] = []
        answer = self.event()
        assert isinstance(answer, Response) and answer.status_code == 101, answer

    def event(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.events += self.protocol.events_received()
            assert data or self.events, "closed without a close frame"
        return self.events.pop(0)

    def frames_until_close(self) -> tuple[list[Any], int]:
        """Frames up to the server's close frame, and its code."""
        frames = []
        while True:
            frame = self.event()
            if frame.opcode is Opcode.CLOSE:
                assert self.protocol.close_rcvd is not None
                return frames, self.protocol.close_rcvd.code
            frames.append(frame)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def chat(web_chat: Any) -> Any:
    """conftest's web_chat: a ChatServer factory with a web listener."""
    return web_chat


@pytest.fixture
def browsers() -> Iterator[Any]:
    """Open Browser clients with websockets' sync connect(), each used as a context manager."""
    with contextlib.ExitStack() as stack:

        def open_browser(server: ChatServer | int, **options: Any) -> Browser:
            return Browser(stack.enter_context(connect(ws_url(server), open_timeout=TIMEOUT, close_timeout=1, **options)))

        yield open_browser


def web_port(server: ChatServer | int) -> int:
    return server if isinstance(server, int) else server.web_address[1]


def ws_url(server: ChatServer | int) -> str:
    return f"ws://127.0.0.1:{web_port(server)}/ws"


def welcome(name: str) -> str:
    return f"* welcome {name}, you are in lobby (type /help)"


def get(server: ChatServer | int, path: str) -> tuple[int, dict[str, str], bytes]:
    """An HTTP GET with urllib: status, headers, body (HTTP errors included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port(server)}{path}", timeout=TIMEOUT) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


# -- one room, two transports ---------------------------------------------------------------


def test_tcp_and_websocket_members_see_one_order(chat, browsers) -> None:
    """Two TCP senders and one WebSocket sender interleave 200 lines each; a TCP and a WebSocket
    receiver get identical sequences, each sender's lines in its order; names count across both."""
    server = chat()
    port = server.server_address[1]
    a = Peer(port)
    assert a.line() == welcome("user1")
    b = Peer(port)
    assert b.line() == welcome("user2")
    c = browsers(server)
    assert c.line() == welcome("user3")
    r = Peer(port)
    assert r.line() == welcome("user4")
    w = browsers(server)
    assert w.line() == welcome("user5")
    assert a.lines(4) == [f"* user{n} joined lobby" for n in (2, 3, 4, 5)]
    assert b.lines(3) == [f"* user{n} joined lobby" for n in (3, 4, 5)]
    assert c.lines(2) == ["* user4 joined lobby", "* user5 joined lobby"]
    assert r.line() == "* user5 joined lobby"

    count = 200
    start = threading.Barrier(3)

    def send(prefix: str, write: Any) -> None:
        start.wait(TIMEOUT)
        for number in range(count):
            write(f"{prefix}{number:03d}")

    senders = [
        threading.Thread(target=send, args=("a", lambda text: a.send(text.encode() + b"\n"))),
        threading.Thread(target=send, args=("b", lambda text: b.send(text.encode() + b"\n"))),
        threading.Thread(target=send, args=("c", c.send)),  # one message per line
    ]
    for thread in senders:
        thread.start()
    on_tcp = r.lines(3 * count)
    on_ws = w.lines(3 * count)
    for thread in senders:
        thread.join(TIMEOUT)
    assert on_tcp == on_ws
    for name, prefix in (("user1", "a"), ("user2", "b"), ("user3", "c")):
        assert [line for line in on_tcp if line.startswith(f"<{name}> ")] == [f"<{name}> {prefix}{n:03d}" for n in range(count)]
    # each sender sees the same order, without its own lines
    assert a.lines(2 * count) == [line for line in on_tcp if not line.startswith("<user1> ")]
    assert c.lines(2 * count) == [line for line in on_tcp if not line.startswith("<user3> ")]
    w.send("/who")
    assert w.line() == "* in lobby: user1, user2, user3, user4, user5"
    for peer in (a, b, r):
        peer.close()


def test_room_full_counts_both_transports(chat, browsers) -> None:
    """room_size=2 with a TCP and a WebSocket member in chess: a third (WebSocket) is refused exactly."""
    server = chat(room_size=2)
    tcp = Peer(server.server_address[1])
    tcp.line()
    tcp.send(b"/join chess\n")
    tcp.until("* you are in chess")
    second, third = browsers(server), browsers(server)
    second.until(welcome("user2"))
    third.until(welcome("user3"))
    second.send("/join chess")
    second.until("* you are in chess")
    assert tcp.line() == "* user2 joined chess"
    assert third.line() == "* user2 left lobby"
    third.send("/join chess")
    assert third.line() == "! room chess is full (2/2)"
    third.send("/who")
    assert third.line() == "* in lobby: user3"
    tcp.close()


# -- what a browser may not do ----------------------------------------------------------------


def test_a_long_line_from_a_browser_is_refused_and_it_stays(chat, browsers) -> None:
    """A line over max_line in a message: '! line too long (max N bytes)'; the connection goes on."""
    server = chat(max_line=64)
    tcp = Peer(server.server_address[1])
    tcp.line()
    browser = browsers(server)
    browser.line()
    tcp.line()
    browser.send("y" * 65)
    assert browser.line() == "! line too long (max 64 bytes)"
    browser.send("y" * 64 + "\nshort")
    assert tcp.lines(2) == ["<user2> " + "y" * 64, "<user2> short"]
    tcp.send(b"/who\n")
    assert tcp.line() == "* in lobby: user1, user2"
    tcp.close()


def tcp_then_browser(server: ChatServer, browsers) -> tuple[Peer, Browser]:
    """A TCP member (user1), then a browser member (user2), past their welcomes and the join notice."""
    tcp = Peer(server.server_address[1])
    tcp.line()
    browser = browsers(server)
    browser.line()
    tcp.line()
    return tcp, browser


def test_a_binary_message_closes_1003_and_the_room_hears_why(chat, browsers) -> None:
    """Binary data is not a chat line: close code 1003; the room hears '(binary message)'."""
    server = chat()
    tcp, browser = tcp_then_browser(server, browsers)
    browser.conn.send(b"hello\n")
    lines, closed = browser.closed()
    assert lines == [] and closed.rcvd is not None and closed.rcvd.code == CloseCode.UNSUPPORTED_DATA
    assert tcp.line() == "* user2 left lobby (binary message)"
    tcp.send(b"after\n/who\n")
    assert tcp.line() == "* in lobby: user1"
    tcp.close()


def test_bad_origin_and_unknown_path_are_refused_and_the_chat_goes_on(chat, browsers) -> None:
    """A foreign Origin gets 403 and an unknown path 404, neither takes a name; members chat on."""
    server = chat()
    tcp = Peer(server.server_address[1])
    tcp.line()
    member = browsers(server, origin=f"http://127.0.0.1:{server.web_address[1]}")  # the page's own origin
    assert member.line() == welcome("user2")
    assert tcp.line() == "* user2 joined lobby"
    with pytest.raises(InvalidStatus) as refused:
        browsers(server, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    status, _headers, body = get(server, "/nope")
    assert (status, body) == (404, b"Not found.\n")
    assert get(server, "/../setup.cfg")[0] == 404
    member.send("still here")
    assert tcp.line() == "<user2> still here"
    late = browsers(server)
    assert late.line() == welcome("user3")  # the refused ones took no number
    assert tcp.line() == "* user3 joined lobby"
    tcp.close()


# -- limits and departures ----------------------------------------------------------------------


def test_a_browser_that_never_reads_is_dropped_as_too_slow(chat) -> None:
    """A never-reading WebSocket client fills only its own backlog and leaves '(too slow)';
    a TCP member receives every line, in order, throughout.

    The sender keeps at most two chunks ahead of the reading member: it reads in this process,
    under the server's GIL, and on a busy machine could otherwise fall 64 KiB behind and be
    dropped as too slow itself (rightly, but not what this test is about)."""
    server = chat(max_backlog=64 * 1024)
    port = server.server_address[1]
    sender, reader = Peer(port), Peer(port)
    sender.line(), reader.line(), sender.line()
    slow = RawBrowser(server.web_address[1], rcvbuf=4096)  # never reads after the handshake
    assert sender.line() == reader.line() == "* user3 joined lobby"
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    dropped = threading.Event()
    result: dict[str, Any] = {}
    progress = threading.Condition()
    numbers: list[int] = []

    def read_all() -> None:
        notices, buffer = [], b""
        while True:
            data = reader.sock.recv(1 << 20)
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"<user1> end"):
                    result.update(numbers=numbers, notices=notices)
                    return
                if line.startswith(b"<user1> "):
                    with progress:
                        numbers.append(int(line[8:15]))
                        progress.notify()
                else:
                    notices.append(line.decode())
                    dropped.set()

    thread = threading.Thread(target=read_all)
    thread.start()
    sent = 0
    deadline = time.monotonic() + TIMEOUT
    while not dropped.is_set():
        assert time.monotonic() < deadline, "the slow client was never dropped"
        behind = sent - 200
        with progress:
            assert progress.wait_for(lambda behind=behind: len(numbers) >= behind, TIMEOUT), "the reader fell behind"
        sender.send(b"".join(b"%07d" % (sent + n) + b"x" * 992 + b"\n" for n in range(100)))
        sent += 100
    sender.send(b"end\n")
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the reading client stalled"
    assert result["notices"] == ["* user3 left lobby (too slow)"]
    assert result["numbers"] == list(range(sent))
    slow.close()
    sender.close()
    reader.close()


def test_server_full_reaches_a_browser_then_1013(chat, browsers) -> None:
    """max_clients counts TCP and WebSocket members together; a browser past it reads
    '! server full' then a close with 1013, a TCP client '! server full' then EOF."""
    server = chat(max_clients=2)
    tcp = Peer(server.server_address[1])
    tcp.line()
    member = browsers(server)
    member.line()
    refused = browsers(server)
    lines, closed = refused.closed()
    assert lines == ["! server full"]
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.TRY_AGAIN_LATER
    extra = Peer(server.server_address[1])
    assert extra.rest() == b"! server full\n"
    assert tcp.line() == "* user2 joined lobby"
    member.conn.close()
    assert tcp.line() == "* user2 left lobby (disconnected)"
    wait_until(lambda: server.connection_count == 1, what="the browser's place to be free")
    assert browsers(server).line() == welcome("user3")
    tcp.close()
    extra.close()


def test_quit_over_websocket_says_bye_then_closes_1000(chat, browsers) -> None:
    """/quit: '* bye', then a normal close (1000); the room hears the plain departure."""
    server = chat()
    tcp, browser = tcp_then_browser(server, browsers)
    browser.send("/quit\nignored")
    lines, closed = browser.closed()
    assert lines == ["* bye"]
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.NORMAL_CLOSURE
    assert tcp.line() == "* user2 left lobby"
    tcp.send(b"/who\n")
    assert tcp.line() == "* in lobby: user1"
    tcp.close()


def test_cli_sigterm_closes_browsers_with_1001(browsers) -> None:
    """SIGTERM on 'chat serve --web 0': browsers read '* server shutting down' and a 1001 close;
    the process exits 0 promptly."""
    with CliServer("chat", "serve", "--port", "0", "--web", "0") as cli:
        web = int(cli.out.wait_for(r"^Web chat on http://127\.0\.0\.1:(\d+)/$").group(1))
        first, second = browsers(web), browsers(web)
        assert first.line() == welcome("user1")
        assert second.line() == welcome("user2")
        tcp = Peer(cli.port)
        assert tcp.line() == welcome("user3")
        status, seconds = cli.stop(signal.SIGTERM)
        assert status == 0 and seconds < 2.0
        for browser in (first, second):
            lines, closed = browser.closed()
            assert lines[-1] == "* server shutting down"
            assert closed.rcvd is not None and closed.rcvd.code == CloseCode.GOING_AWAY
        assert tcp.rest().endswith(b"* server shutting down\n")
        tcp.close()


def test_idle_timeout_applies_to_browsers(chat, browsers) -> None:
    """A browser that says nothing is dropped at idle_timeout, though it answers keepalive pings."""
    site = WebSite(load_pages(), ping_interval=0.05, ping_timeout=1.0)
    server = chat(idle_timeout=1.0, web_site=site)  # the TCP member joins well before it, on a slow machine too
    silent = browsers(server)
    silent.line()
    tcp = Peer(server.server_address[1])
    tcp.line()
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while "* user1 left lobby (idle timeout)" not in seen:  # tcp stays active; the browser says nothing
        assert time.monotonic() < deadline, seen[-5:]
        tcp.send(b"/who\n")
        seen.append(tcp.line())
    lines, closed = silent.closed()
    assert lines == ["* user2 joined lobby", "! idle for 1 s, disconnecting"]
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.NORMAL_CLOSURE
    tcp.close()


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_keepalive_keeps_answering_clients_and_closes_silent_ones(chat, browsers) -> None:
    """With short keepalive timers, a client that answers pings stays; one that never does is closed
    with 1011 and the room hears '(keepalive timeout)'."""
    site = WebSite(load_pages(), ping_interval=0.2, ping_timeout=1.0)  # a second to answer, on a slow machine too
    server = chat(web_site=site)
    recorder = Recorder()
    client_log = logging.getLogger("tests.web.keepalive")
    client_log.setLevel(logging.DEBUG)
    client_log.propagate = False
    client_log.addHandler(recorder)
    try:
        answering = browsers(server, logger=client_log, ping_interval=None)
        assert answering.line() == welcome("user1")
        mute = RawBrowser(server.web_address[1])
        assert answering.line() == "* user2 joined lobby"
        frames, code = mute.frames_until_close()
        assert code == CloseCode.INTERNAL_ERROR
        assert Opcode.PING in [frame.opcode for frame in frames]
        assert answering.line() == "* user2 left lobby (keepalive timeout)"
        wait_until(lambda: sum(message.startswith("< PING") for message in recorder.messages) >= 3, what="three pings answered")
        answering.send("/who")
        assert answering.line() == "* in lobby: user1"
        mute.close()
    finally:
        client_log.removeHandler(recorder)


def test_an_unfinished_request_head_times_out(chat) -> None:
    """A connection that never completes its request is closed at the head timeout, with no member made."""
    server = chat(web_site=WebSite(load_pages(), head_timeout=0.2))
    with socket.create_connection(server.web_address[:2], timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(1024) == b""
    wait_until(lambda: server.connection_count == 0 and not server.hub.members, what="nothing left of it")


# -- the page --------------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served(chat) -> None:
    """GET / is the chat page (it loads /chat.js and /chat.css, which are served too), with a CSP."""
    server = chat()
    static = resources.files("socketlab.chat") / "static"
    status, headers, page = get(server, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert page == static.joinpath("index.html").read_bytes()
    assert b'<script src="/chat.js"' in page and b'href="/chat.css"' in page
    for path, kind in (("/chat.js", "text/javascript; charset=utf-8"), ("/chat.css", "text/css; charset=utf-8")):
        status, headers, body = get(server, path)
        assert (status, headers["Content-Type"]) == (200, kind)
        assert body == static.joinpath(path[1:]).read_bytes()


def test_web_clients_that_wait_for_room_then_close_free_their_address_slot() -> None:
    """Web connections that wait for room for their request and close give back their --max-per-ip count."""
    server = ChatServer(("127.0.0.1", 0), web=("127.0.0.1", 0), max_per_ip=50)
    server.max_pending_web = 1
    with serving(server):
        socks = [socket.create_connection(("127.0.0.1", server.web_address[1])) for _ in range(5)]
        for sock in socks:
            sock.close()
        wait_until(lambda: server.acceptor.per_ip.count("127.0.0.1") == 0, what="every address slot given back")


def test_a_sweep_looks_only_at_timers_that_are_due(chat, browsers, monkeypatch) -> None:
    """Twenty browsers and twenty terminals with --idle-timeout: a sweep with nothing due ticks no
    connection and looks through no member (the timers are heaps, not scans)."""
    from socketlab.chat.web import WebConnection

    server = chat(idle_timeout=60)
    members: list[Any] = []
    for number in range(20):
        browser = browsers(server)
        browser.send(f"/join b{number}")  # a room of its own: later arrivals are not announced to it
        browser.until(f"* you are in b{number}")
        members += [browser, Peer(server.server_address[1])]
    wait_until(lambda: len(server.service.local_transports()) == 40, what="forty members")
    ticks: list[object] = []
    looks: list[object] = []
    monkeypatch.setattr(WebConnection, "tick", lambda self, now: ticks.append(self))
    monkeypatch.setattr(server.service, "close_members", lambda *args: looks.append(args))
    for _ in range(5):
        server.sweep()
    assert ticks == [] and looks == []


def test_a_crowd_of_browsers_beyond_the_pending_limit_is_served_not_refused() -> None:
    """Forty browsers connecting at once to a server with room for 10 members and no request in flight
    beyond them: the others wait in the listen queue, each is welcomed as a seat frees (every browser
    leaves after its welcome), and none is refused."""
    import concurrent.futures

    server = ChatServer(("127.0.0.1", 0), web=("127.0.0.1", 0), max_clients=10)
    server.max_pending_web = 0

    def browser_welcome(_: int) -> str:
        with connect(ws_url(server), open_timeout=TIMEOUT, close_timeout=1) as conn:
            return str(conn.recv(timeout=TIMEOUT)).partition("\n")[0]

    with serving(server):
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            welcomes = list(pool.map(browser_welcome, range(40)))
        # Afterwards the accept thread sleeps: resume() woke it, and the wake-up was consumed.
        [acceptor] = [thread for thread in threading.enumerate() if thread.name.endswith("(serve_forever)")]
        assert acceptor.native_id is not None
        before = thread_cpu_seconds(acceptor.native_id)
        time.sleep(0.5)  # a span of time to measure the thread's CPU over, not a synchronisation
        assert thread_cpu_seconds(acceptor.native_id) - before < 0.1
    assert sorted(welcomes) == sorted(f"* welcome user{n}, you are in lobby (type /help)" for n in range(1, 41))


def thread_cpu_seconds(native_id: int) -> float:
    """CPU time (user + system) of one thread of this process, from /proc."""
    import os

    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
