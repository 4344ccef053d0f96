"""The chat over Socket.IO, end to end: python-socketio clients, terminals and browsers in one hub.

Clients are python-socketio's (long-polling with the upgrade, WebSocket
only, long-polling only); the bad-input cases speak HTTP by hand, so each
answer is checked to the byte.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import socket
import statistics
import threading
import time
from typing import Any, Iterator

import pytest
import socketio
from websockets.sync.client import connect

from socketlab.chat.server import ChatServer
from support import TIMEOUT, Browser, CliServer, Peer, recv_until_closed, wait_until

pytestmark = pytest.mark.timeout(30)

#: The three ways a client reaches the server.
TRANSPORTS = {
    "upgrade": ["polling", "websocket"],
    "websocket": ["websocket"],
    "polling": ["polling"],
}


class Member:
    """A python-socketio client and what it has received, event by event."""

    def __init__(self, port: int, transports: list[str] | None = None, **options: Any) -> None:
        self.how = "+".join(transports or ["default"])
        self.client = socketio.SimpleClient(reconnection=False, **options)
        self.client.connect(f"http://127.0.0.1:{port}", transports=transports, wait_timeout=TIMEOUT)

    def event(self) -> list[Any]:
        return self.client.receive(timeout=TIMEOUT)

    def until(self, name: str, *args: Any) -> list[list[Any]]:
        """Events up to and including the first ``[name, *args]``."""
        seen = []
        while True:
            event = self.event()
            seen.append(event)
            if event == [name, *args]:
                return seen

    def say(self, text: str) -> None:
        self.client.emit("chat message", text)

    def call(self, name: str, data: Any) -> Any:
        return self.client.call(name, data, timeout=TIMEOUT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()


@pytest.fixture
def chat(web_chat: Any) -> Any:
    """conftest's web_chat: a ChatServer factory with a web listener."""
    return web_chat


@pytest.fixture
def members() -> Iterator[Any]:
    """Open Socket.IO members; all are disconnected at the end."""
    opened: list[Member] = []

    def open_member(server: ChatServer, how: str = "upgrade", **options: Any) -> Member:
        member = Member(server.web_address[1], TRANSPORTS[how], **options)
        opened.append(member)
        return member

    yield open_member
    for member in opened:
        member.close()


def refusal(port: int, transports: list[str]) -> Any:
    """Connect a python-socketio client that the server refuses; the CONNECT_ERROR's data."""
    client = socketio.Client(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(f"http://127.0.0.1:{port}", transports=transports, wait_timeout=TIMEOUT)
    client.disconnect()
    return errors[0] if errors else None


def welcome(name: str) -> list[Any]:
    return ["notice", f"welcome {name}, you are in lobby (type /help)"]


# -- the tutorial's events -------------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(TRANSPORTS))
def test_each_transport_joins_a_room_and_hears_itself(chat, members, how) -> None:
    """``room`` then ``chat message``: the sender gets its own line back, as ``io.to(room).emit`` does."""
    server = chat()
    alice = members(server, how)
    assert alice.event() == welcome("user1")
    assert alice.call("room", "r1") == "ok"
    assert alice.until("notice", "you are in r1")[-1] == ["notice", "you are in r1"]
    alice.say("hello")
    assert alice.event() == ["chat message", "<user1> hello"]
    expected = "websocket" if how != "polling" else "polling"
    wait_until(lambda: alice.client.transport == expected, what=f"transport {expected}")


def test_a_room_of_two_refuses_the_third(chat, members) -> None:
    """``--room-size 2``: the third ``room`` gets the ack ``failed``, the event ``result`` ``failed``,
    and the reason as an ``error``; the two members go on talking, the third stays in the lobby."""
    server = chat(room_size=2)
    first, second, third = (members(server, how) for how in ("upgrade", "websocket", "polling"))
    for number, member in enumerate((first, second, third), 1):
        assert member.event() == welcome(f"user{number}")
    assert first.call("room", "r1") == "ok"
    assert second.call("room", "r1") == "ok"
    assert third.call("room", "r1") == "failed"
    assert third.until("result", "failed")[-1] == ["result", "failed"]
    assert third.event() == ["error", "room r1 is full (2/2)"]
    first.until("notice", "user2 joined r1")
    second.say("just us")
    assert first.event() == ["chat message", "<user2> just us"]
    assert second.until("chat message", "<user2> just us")
    third.say("anyone?")
    assert third.event() == ["chat message", "<user3> anyone?"]


def test_room_without_an_ack_still_answers_result(chat, members) -> None:
    """The tutorial's page emits ``room`` without an ack: success is the notice, failure ``result``."""
    server = chat(room_size=1)
    first, second = members(server), members(server)
    first.event(), second.event()
    first.client.emit("room", "solo")
    assert first.until("notice", "you are in solo")
    second.until("notice", "user1 left lobby")
    second.client.emit("room", "solo")
    assert second.event() == ["result", "failed"]
    assert second.event() == ["error", "room solo is full (1/1)"]


def test_socketio_tcp_and_websocket_members_share_a_room_in_one_order(chat, members) -> None:
    """A terminal, a /ws browser and a Socket.IO member in one room: each sees the others' lines as
    ``<name> text``, all in the same order; the Socket.IO member hears its own too."""
    server = chat()
    tcp = Peer(server.server_address[1])
    assert tcp.line() == "* welcome user1, you are in lobby (type /help)"
    with connect(f"ws://127.0.0.1:{server.web_address[1]}/ws", open_timeout=TIMEOUT) as ws:
        browser = Browser(ws)
        assert browser.line() == "* welcome user2, you are in lobby (type /help)"
        sio = members(server)
        assert sio.event() == welcome("user3")
        tcp.send(b"/join mix\n")
        tcp.until("* you are in mix")
        browser.send("/join mix")
        browser.until("* you are in mix")
        assert sio.call("room", "mix") == "ok"
        sio.until("notice", "you are in mix")
        tcp.until("* user3 joined mix")
        browser.until("* user3 joined mix")
        expected = []
        for n in range(30):
            tcp.send(f"t{n}\n".encode())
            browser.send(f"b{n}")
            sio.say(f"s{n}")
            expected += [f"<user1> t{n}", f"<user2> b{n}", f"<user3> s{n}"]
        got_tcp = [line for line in tcp.lines(60) if not line.startswith("*")]
        got_browser = browser.lines(60)
        got_sio = [event[1] for event in (sio.event() for _ in range(90)) if event[0] == "chat message"]
        # each sender's lines in its order, and one interleaving that everyone saw
        assert got_sio == sorted(got_sio, key=got_sio.index) and sorted(got_sio) == sorted(expected)
        others_tcp = [line for line in got_sio if not line.startswith("<user1>")]
        others_browser = [line for line in got_sio if not line.startswith("<user2>")]
        assert got_tcp == others_tcp
        assert got_browser == others_browser
        for sender in ("<user1>", "<user2>", "<user3>"):
            assert [line for line in got_sio if line.startswith(sender)] == [line for line in expected if line.startswith(sender)]
    tcp.close()


def test_commands_work_from_a_socketio_client(chat, members) -> None:
    """``/nick``, ``/who``, ``/msg`` and ``/rooms`` through ``chat message``: replies as notices,
    errors as ``error``, private messages as ``chat message``."""
    server = chat()
    tcp = Peer(server.server_address[1])
    tcp.line()
    sio = members(server, "websocket")
    sio.event()
    sio.say("/nick alice")
    assert sio.event() == ["notice", "user2 is now known as alice"]
    tcp.until("* user2 is now known as alice")
    sio.say("/who")
    assert sio.event() == ["notice", "in lobby: user1, alice"]
    sio.say("/rooms")
    assert sio.event() == ["notice", "rooms: lobby (2)"]
    sio.say("/msg user1 psst")
    assert tcp.line() == "<alice> (private) psst"
    assert sio.event() == ["notice", "to user1: psst"]
    tcp.send(b"/msg alice hi back\n")
    assert sio.event() == ["chat message", "<user1> (private) hi back"]
    tcp.send(b"/nick bob\n")
    sio.until("notice", "user1 is now known as bob")
    sio.say("/nick bob")
    assert sio.event() == ["error", "nickname bob is taken"]
    sio.say("/bogus")
    assert sio.event() == ["error", "unknown command /bogus (type /help)"]
    tcp.close()


def test_unknown_events_and_bad_arguments_get_an_error_event(chat, members) -> None:
    server = chat()
    sio = members(server, "websocket")
    sio.event()
    sio.client.emit("shout", "x")
    assert sio.event() == ["error", "unknown event 'shout' (events: chat message, room)"]
    sio.client.emit("chat message", {"text": "x"})
    assert sio.event() == ["error", "chat message takes one string"]
    assert sio.call("room", "bad room") == "failed"
    assert sio.event() == ["result", "failed"]
    assert sio.event() == ["error", "invalid room name: 1 to 32 letters or digits (any script), _ or -; no spaces"]
    sio.client.emit("chat message", b"\x00binary")
    assert sio.event() == ["error", "chat message takes one string"]
    sio.say("still here")  # and the session goes on
    assert sio.event() == ["chat message", "<user1> still here"]


def test_control_characters_never_reach_the_others(chat, members) -> None:
    """A Socket.IO member's text goes through the same sanitising as a terminal's."""
    server = chat()
    tcp = Peer(server.server_address[1])
    tcp.line()
    sio = members(server)
    sio.event()
    tcp.line()  # user2 joined lobby
    sio.say("red \x1b[31mtext\u202e")
    assert tcp.line() == "<user2> red \\x1b[31mtext\\u202e"
    tcp.close()


def test_an_answer_in_two_pieces_does_not_wait_for_a_delayed_ack(chat, members) -> None:
    """A join's notice and its ack are two writes; with Nagle's algorithm on, the second waited for the
    client's delayed ACK (about 40 ms on Linux: 44 ms per join measured). What one read asks for now goes
    out in one send()."""
    server = chat()
    member = members(server, "websocket")
    assert member.event() == welcome("user1")
    times = []
    for n in range(9):
        started = time.perf_counter()
        assert member.call("room", f"r{n}") == "ok"
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02, times


def test_web_connections_have_nagle_off_and_line_connections_keep_it(chat) -> None:
    """As Node's WebSocket and HTTP servers do: an answer sent while the previous one is unacknowledged goes out
    at once, not after the client's delayed ACK. In the churn benchmark beside 5,000 Socket.IO members, with
    Nagle on, a new member's connect and first line took 47 ms, and 2 ms without. The TCP line port keeps it,
    as the tutorial's Node TCP server does."""
    server = chat()
    with (
        socket.create_connection(server.web_address, timeout=TIMEOUT),
        socket.create_connection(server.server_address, timeout=TIMEOUT),
    ):
        wait_until(lambda: server.reader.count == 2, what="both accepted")
        nagle_off = {
            type(conn).__name__: conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            for conn in list(server.reader._open)
        }
    assert nagle_off == {"WebConnection": True, "LineConnection": False}


# -- the limits ------------------------------------------------------------------------------


def test_a_full_server_refuses_with_connect_error(chat, members) -> None:
    """``--max-clients`` counts Socket.IO members: the next one's CONNECT is refused ``server full``,
    and the seat comes back when a member leaves."""
    server = chat(max_clients=1)
    first = members(server)
    first.event()
    assert refusal(server.web_address[1], ["websocket"]) == {"message": "server full"}
    assert refusal(server.web_address[1], ["polling"]) == {"message": "server full"}
    tcp = Peer(server.server_address[1])
    assert tcp.line() == "! server full"
    tcp.close()
    first.close()
    wait_until(lambda: server.connection_count == 0 and not server.service.local_transports(), what="seat free")
    again = members(server, "polling")
    assert again.event()[0] == "notice"


def test_idle_timeout_applies(chat, members) -> None:
    server = chat(idle_timeout=0.5)
    sio = members(server, "websocket")
    assert sio.event() == welcome("user1")
    assert sio.event() == ["error", "idle for 0.5 s, disconnecting"]
    wait_until(lambda: not sio.client.connected, what="disconnect")


def test_flood_control_holds_then_disconnects(chat, members) -> None:
    """``--max-rate``: lines over the budget wait (and the member is told); a client that keeps
    flooding, with no TCP flow control to slow it, is disconnected; what was let through arrives
    in order, and the others hear it leave."""
    server = chat(max_rate=50)
    watcher = members(server, "websocket")
    watcher.event()
    flooder = members(server, "websocket")
    flooder.event()
    watcher.until("notice", "user2 joined lobby")
    flooder.say("\n".join(f"line {n}" for n in range(150)))
    held = flooder.event()
    assert held[0] == "error" and held[1].startswith("sending too fast: "), held
    flooder.say("\n".join(f"more {n}" for n in range(1000)))
    assert flooder.until("error", "sending too fast, disconnecting")
    leaving = watcher.until("notice", "user2 left lobby (flooding)")
    got = [event[1] for event in leaving if event[0] == "chat message"]
    assert len(got) >= 100  # the burst, at least
    assert got == [f"<user2> line {n}" for n in range(len(got))]
    wait_until(lambda: not flooder.client.connected, what="flooder disconnected")


def test_the_ping_timeout_drops_a_silent_client_and_frees_its_seat(chat) -> None:
    """A polling client that stops polling is closed after pingInterval + pingTimeout.

    A second each: the CONNECT, its answer and the TCP client's refusal must all come before the
    first ping is due, which a loaded machine may not manage within a fifth of a second."""
    server = chat(max_clients=1, socketio_ping_interval=1.0, socketio_ping_timeout=1.0)
    raw = RawPolling(server.web_address[1])
    raw.post("40")
    assert raw.get()[0].startswith("40{")
    tcp = Peer(server.server_address[1])
    assert tcp.line() == "! server full"
    tcp.close()
    wait_until(lambda: not server.service.local_transports(), what="silent member dropped")
    tcp = Peer(server.server_address[1])
    assert tcp.line() == "* welcome user2, you are in lobby (type /help)"
    tcp.close()
    raw.close()


def test_max_per_ip_counts_socketio_connections(chat) -> None:
    server = chat(max_per_ip=1)
    with socket.create_connection(server.web_address, timeout=TIMEOUT) as held:
        held.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        held.recv(4096)
        with pytest.raises(socketio.exceptions.ConnectionError):
            Member(server.web_address[1], ["websocket"])


def test_shutdown_sends_a_disconnect(chat, members) -> None:
    """On shutdown every Socket.IO member hears the notice, then is disconnected, within the flush time."""
    server = chat()
    clients = [members(server, how) for how in ("upgrade", "websocket", "polling")]
    for client in clients:
        client.event()
    wait_until(lambda: len(server.service.local_transports()) == 3, what="three members")
    server.shutdown()
    for client in clients:
        assert client.until("notice", "server shutting down")
        wait_until(lambda client=client: not client.client.connected, what=f"disconnected ({client.how})")


# -- bad input, by hand ----------------------------------------------------------------------


def bystander_and_raw(chat: Any, members: Any, how: str) -> tuple[ChatServer, Member, "RawPolling", list[str]]:
    """A server; a welcomed Socket.IO member (*how*) to see that others are unharmed; a raw polling
    session that has sent its CONNECT; and what that session's first GET returned."""
    server = chat()
    other = members(server, how)
    other.event()
    raw = RawPolling(server.web_address[1])
    raw.post("40")
    return server, other, raw, raw.get()


class RawPolling:
    """An Engine.IO long-polling session spoken with http.client: one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        status, body = self.request("GET", "/socket.io/?EIO=4&transport=polling")
        assert status == 200 and body.startswith("0{"), (status, body)
        self.handshake = json.loads(body[1:])
        self.sid = self.handshake["sid"]

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, str]:
        self.http.request(method, path, body=body, headers=headers)
        answer = self.http.getresponse()
        return answer.status, answer.read().decode()

    def get(self) -> list[str]:
        status, body = self.request("GET", f"/socket.io/?EIO=4&transport=polling&sid={self.sid}")
        assert status == 200, (status, body)
        return body.split("\x1e")

    def post(self, body: str | bytes) -> tuple[int, str]:
        data = body.encode() if isinstance(body, str) else body
        return self.request("POST", f"/socket.io/?EIO=4&transport=polling&sid={self.sid}", data)

    def close(self) -> None:
        self.http.close()


def raw_request(port: int, method: str, path: str, **headers: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("EIO=4&transport=polling&sid=nope", 400, '{"code":1,"message":"Session ID unknown"}'),
        ("EIO=3&transport=polling", 400, '{"code":5,"message":"Unsupported protocol version"}'),
        ("EIO=4&transport=carrier-pigeon", 400, '{"code":0,"message":"Transport unknown"}'),
        ("transport=polling", 400, '{"code":5,"message":"Unsupported protocol version"}'),
    ],
)
def test_bad_queries_get_the_javascript_servers_answers(chat, query, status, body) -> None:
    server = chat()
    assert raw_request(server.web_address[1], "GET", f"/socket.io/?{query}") == (status, body)


def test_the_handshake_names_the_settings(chat) -> None:
    server = chat(socketio_ping_interval=3, socketio_ping_timeout=2)
    raw = RawPolling(server.web_address[1])
    assert raw.handshake == {
        "sid": raw.sid,
        "upgrades": ["websocket"],
        "pingInterval": 3000,
        "pingTimeout": 2000,
        "maxPayload": 1000000,
    }
    raw.close()


def test_an_overlapping_get_closes_that_session_only(chat, members) -> None:
    """A second GET while one is held: 400, and the held one is answered with a close packet."""
    server, other, raw, (connected, welcomed) = bystander_and_raw(chat, members, "polling")
    assert connected.startswith("40{") and welcomed == '42["notice","welcome user2, you are in lobby (type /help)"]'
    held: list[list[str]] = []
    thread = threading.Thread(target=lambda: held.append(raw.get()))
    thread.start()
    raw_session = None  # the test's only look inside: wait until the server holds the first GET

    def held_get() -> bool:
        with server.lock:  # looked up each time: the GET's connection may not be accepted yet
            return any(
                conn.session.engine is not None and conn.session.engine.holding and conn.session.engine.session is raw_session
                for conn in server._engine_conns
            )

    with server.lock:
        assert server.socketio is not None
        raw_session = server.socketio.engine.sessions.get(raw.sid)
    assert raw_session is not None
    wait_until(held_get, what="a held GET")
    second = raw_request(server.web_address[1], "GET", f"/socket.io/?EIO=4&transport=polling&sid={raw.sid}")
    assert second == (400, '{"code":3,"message":"overlapping GET requests"}')
    thread.join(TIMEOUT)
    assert held and held[0][-1] == "1"
    assert raw_request(server.web_address[1], "GET", f"/socket.io/?EIO=4&transport=polling&sid={raw.sid}")[0] == 400
    other.say("unharmed")
    assert other.until("chat message", "<user1> unharmed")
    raw.close()


def test_a_post_over_the_payload_limit_is_413(chat, members) -> None:
    """A body over maxPayload (1 MB) is answered 413 from its head, never read, and that
    connection closed; the session itself and the others go on."""
    server, other, raw, _ = bystander_and_raw(chat, members, "websocket")
    with socket.create_connection(server.web_address, timeout=TIMEOUT) as sock:
        path = f"/socket.io/?EIO=4&transport=polling&sid={raw.sid}"
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000001\r\n\r\n".encode())
        answer = recv_until_closed(sock)
    assert answer == (
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 45\r\n"
        b'Connection: close\r\n\r\n{"code":3,"message":"request body too large"}'
    )
    assert raw.post('42["chat message","fine"]') == (200, "ok")
    assert raw.get() == ['42["chat message","<user2> fine"]']
    other.until("chat message", "<user2> fine")


def test_a_malformed_packet_closes_only_that_session(chat, members) -> None:
    server, other, raw, _ = bystander_and_raw(chat, members, "websocket")
    assert raw.post("42[not json")[0] == 200  # the Engine.IO packet was fine, its Socket.IO packet not
    wait_until(lambda: len(server.service.local_transports()) == 1, what="the bad member gone")
    assert raw.post("\x1e\x1e")[0] == 400
    other.say("unharmed")
    assert other.until("chat message", "<user1> unharmed")


def test_an_event_that_is_not_an_array_with_a_name_closes_only_that_session(chat, members, caplog) -> None:
    """``42{...}``: the JS server's parse error; that member leaves (protocol error), logged in one line."""
    server, other, raw, _ = bystander_and_raw(chat, members, "websocket")
    other.until("notice", "user2 joined lobby")
    with caplog.at_level(logging.INFO):
        assert raw.post('42{"a":1}') == (200, "ok")
        assert other.event() == ["notice", "user2 left lobby (protocol error)"]
    closing = [r.getMessage() for r in caplog.records if r.name == "socketlab.socketio"]
    assert closing == [
        f"Closing Socket.IO session from {raw.http.sock.getsockname()[0]}:{raw.http.sock.getsockname()[1]}: "
        "an EVENT payload is an array that starts with the event name"
    ]
    other.say("unharmed")
    assert other.event() == ["chat message", "<user1> unharmed"]


def test_a_client_whose_connection_drops_reconnects_as_a_new_member(chat) -> None:
    """python-socketio reconnects after its WebSocket is cut (no DISCONNECT): the old member leaves,
    the new session joins as the next name, and chat goes on."""
    server = chat()
    client = socketio.Client(reconnection=True, reconnection_delay=0.05, reconnection_delay_max=0.1)
    events: queue.Queue[list[Any]] = queue.Queue()
    client.on("*", lambda name, *args: events.put([name, *args]))
    client.connect(f"http://127.0.0.1:{server.web_address[1]}", transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        assert events.get(timeout=TIMEOUT) == welcome("user1")
        with server.lock:
            socks = [conn.sock for conn in server._engine_conns]
        for sock in socks:  # the network fails under the session
            sock.shutdown(socket.SHUT_RDWR)
        assert events.get(timeout=TIMEOUT) == welcome("user2")
        client.emit("chat message", "back")
        assert events.get(timeout=TIMEOUT) == ["chat message", "<user2> back"]
        assert [t.member.name for t in server.service.local_transports()] == ["user2"]
    finally:
        client.disconnect()


def test_a_page_of_another_origin_is_refused(chat) -> None:
    server = chat()
    port = server.web_address[1]
    status, body = raw_request(port, "GET", "/socket.io/?EIO=4&transport=polling", Origin="http://evil.example")
    assert (status, body) == (403, '{"code":4,"message":"Forbidden"}')
    status, body = raw_request(port, "GET", "/socket.io/?EIO=4&transport=polling", Origin=f"http://127.0.0.1:{port}")
    assert status == 200 and body.startswith("0{")


def test_allowed_origins_get_cors_headers(chat) -> None:
    server = chat(web_origins=("http://app.example",))
    connection = http.client.HTTPConnection("127.0.0.1", server.web_address[1], timeout=TIMEOUT)
    connection.request("GET", "/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://app.example"})
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200
    assert answer.getheader("Access-Control-Allow-Origin") == "http://app.example"
    assert answer.getheader("Access-Control-Allow-Credentials") == "true"
    connection.close()


def test_socketio_can_be_turned_off(chat) -> None:
    server = chat(socketio=False)
    status, _ = raw_request(server.web_address[1], "GET", "/socket.io/?EIO=4&transport=polling")
    assert status == 404


# -- the command line ------------------------------------------------------------------------


def test_chat_serve_web_answers_socketio() -> None:
    """``socketlab chat serve --web 0``: a Socket.IO client and a terminal in one room; SIGTERM
    disconnects the client and the server exits 0 within a second."""
    with CliServer("chat", "serve", "--port", "0", "--web", "0", "--room-size", "2") as cli:
        web = int(cli.out.wait_for(r"^Web chat on http://127\.0\.0\.1:(\d+)/$").group(1))
        sio = Member(web, ["polling", "websocket"])
        try:
            assert sio.event() == welcome("user1")
            assert sio.call("room", "r") == "ok"
            tcp = Peer(cli.port)
            tcp.line()
            tcp.send(b"/join r\n")
            tcp.until("* you are in r")
            sio.say("from the page")
            assert tcp.line() == "<user1> from the page"
            code, elapsed = cli.stop()
            assert code == 0 and elapsed < 1.5
            sio.until("notice", "server shutting down")
            wait_until(lambda: not sio.client.connected, what="disconnected")
            tcp.close()
        finally:
            sio.close()


# -- the relay's fast path, without sockets ----------------------------------------------------------


def test_a_members_events_read_together_become_one_burst() -> None:
    """Consecutive lines of one member merge (one delivery per room member); order and other intents stay."""
    from socketlab.chat.socketio_chat import _merged

    a, b = object(), object()
    intents: list[Any] = [("lines", a, [b"1"]), ("lines", a, [b"2"]), ("lines", b, [b"x"]), ("join", a, None)]
    intents += [("lines", a, [b"3"])]
    assert _merged(intents) == [("lines", a, [b"1", b"2"]), ("lines", b, [b"x"]), ("join", a, None), ("lines", a, [b"3"])]


def test_a_delivery_is_encoded_once_for_every_member() -> None:
    """Lines become chat message, notice and error events; the same bytes object gives the same list back."""
    from socketlab.chat.socketio_chat import SocketIOChat

    chat = SocketIOChat(None, None, 4096)  # type: ignore[arg-type]  # encoding needs neither core nor acceptor
    data = "<alice> hi\n* bob joined r1\n! room r2 is full (2/2)\n<bob> \u00e9\n".encode()
    messages = chat.encoded(data)
    assert messages == [
        '2["chat message","<alice> hi"]',
        '2["notice","bob joined r1"]',
        '2["error","room r2 is full (2/2)"]',
        '2["chat message","<bob> \u00e9"]',
    ]
    assert chat.encoded(data) is messages
    copy = bytes(bytearray(data))
    assert copy is not data and chat.encoded(copy) == messages and chat.encoded(copy) is not messages


def test_a_long_poll_held_past_the_head_timeout_keeps_its_connection(web_chat) -> None:
    """The keep-alive deadline starts when a held GET is answered, not when it arrived: a GET held
    longer than the head timeout, then answered, leaves its client the whole timeout for the next one."""
    import time

    from socketlab.chat.web import WebSite, load_pages

    head_timeout = 0.5
    server = web_chat(web_site=WebSite(load_pages(), head_timeout=head_timeout))
    raw = RawPolling(server.web_address[1])
    assert raw.post("40") == (200, "ok")
    assert raw.get()[-1] == '42["notice","welcome user1, you are in lobby (type /help)"]'
    answered: list[list[str]] = []
    holder = threading.Thread(target=lambda: answered.append(raw.get()))
    holder.start()
    time.sleep(2 * head_timeout)  # the GET is held past the head timeout: what this test is about
    peer = Peer(server.server_address[1])
    holder.join(TIMEOUT)
    assert answered == [['42["notice","user2 joined lobby"]']]
    time.sleep(head_timeout / 2)  # well within the timeout, counted from the answer
    later: list[list[str]] = []
    holder = threading.Thread(target=lambda: later.append(raw.get()))
    holder.start()
    peer.line()
    peer.send(b"still there?\n")
    holder.join(TIMEOUT)
    assert later == [['42["chat message","<user2> still there?"]']]
    peer.close()
    raw.close()


def test_what_a_websocket_upgrade_built_is_frozen_before_its_namespace_connects(chat) -> None:
    """In a crowd, a Socket.IO client's chat join (what used to freeze its objects) comes a round trip after
    its upgrade; the collector walked thousands of such clients meanwhile. Its connection is frozen at once:
    once when it is accepted, once more when its upgrade is done, before any namespace CONNECT."""
    server = chat()
    before = server.freezer.freezes
    with connect(f"ws://127.0.0.1:{server.web_address[1]}/socket.io/?EIO=4&transport=websocket") as ws:
        opened = ws.recv(timeout=TIMEOUT)
        assert isinstance(opened, str) and opened.startswith('0{"sid":"')
        # The accept's freeze may come just after the upgrade's (another thread): wait for both.
        wait_until(lambda: server.freezer.freezes - before >= 2, what="the accept's and the upgrade's freezes")
        assert server.freezer.freezes - before == 2


def test_a_polling_client_between_two_polls_at_shutdown_still_hears_the_goodbye(chat) -> None:
    """A long-polling client whose GET was just answered when the server shuts down opens its next
    GET on a new connection (as the JavaScript client in Node does): the listener still takes it while
    the goodbye waits, and it carries the notice and the DISCONNECT. Then shutdown ends at once."""
    server = chat()
    port = server.web_address[1]
    status, body = raw_request(port, "GET", "/socket.io/?EIO=4&transport=polling")
    assert status == 200
    path = f"/socket.io/?EIO=4&transport=polling&sid={json.loads(body[1:])['sid']}"
    post = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    post.request("POST", path, body=b"40")
    assert post.getresponse().read() == b"ok"
    post.close()
    status, body = raw_request(port, "GET", path)
    assert status == 200 and body.startswith("40{") and "welcome user1" in body
    started = time.monotonic()
    stopping = threading.Thread(target=server.shutdown)
    stopping.start()
    wait_until(lambda: server.service.shutting_down, what="shutdown begun")
    status, body = raw_request(port, "GET", path)  # between two polls: a new connection
    assert status == 200
    assert body.split("\x1e") == ['42["notice","server shutting down"]', "41"]  # Engine.IO's close comes alone
    stopping.join(TIMEOUT)
    assert not stopping.is_alive() and time.monotonic() - started < 1.0


def test_shutdown_waits_no_more_than_half_a_second_for_a_polling_client_that_is_gone(chat) -> None:
    """A long-polling client that never polls again does not hold shutdown to the 2 s flush limit."""
    server = chat()
    port = server.web_address[1]
    status, body = raw_request(port, "GET", "/socket.io/?EIO=4&transport=polling")
    path = f"/socket.io/?EIO=4&transport=polling&sid={json.loads(body[1:])['sid']}"
    post = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    post.request("POST", path, body=b"40")
    assert post.getresponse().read() == b"ok"
    post.close()
    assert raw_request(port, "GET", path)[1].startswith("40{")
    started = time.monotonic()
    server.shutdown()  # the client never comes back for its goodbye
    assert 0.5 <= time.monotonic() - started < 1.0
