"""Engine.IO protocol 4, sans-IO: the codec, sessions, polling, the upgrade, heartbeats, limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from socketlab.engineio import (
    BAD_HANDSHAKE_METHOD,
    SESSION_UNKNOWN,
    TRANSPORT_UNKNOWN,
    UNSUPPORTED_VERSION,
    EngineError,
    EngineServer,
    EngineSession,
    EngineSettings,
    Message,
    PacketError,
    decode_packet,
    decode_payload,
    encode_payload,
)


class App:
    """An EngineApp that remembers what happened."""

    def __init__(self) -> None:
        self.sessions: list[EngineSession] = []
        self.messages: list[Message] = []
        self.reasons: list[str] = []

    def opened(self, session: EngineSession) -> None:
        self.sessions.append(session)

    def received(self, session: EngineSession, message: Message) -> None:
        self.messages.append(message)

    def closed(self, session: EngineSession, reason: str) -> None:
        self.reasons.append(reason)


class Carrier:
    """A carrier that records what it was given."""

    def __init__(self) -> None:
        self.deliveries: list[list[tuple[str, Message]]] = []
        self.closed = False

    def deliver(self, packets: list[tuple[str, Message]]) -> None:
        self.deliveries.append(list(packets))

    def close(self) -> None:
        self.closed = True


def polling_session(settings: EngineSettings | None = None) -> tuple[EngineServer, App, EngineSession, dict]:
    app = App()
    server = EngineServer(app, settings)
    session = server.handshake("polling", 0.0, "127.0.0.1:1")
    first = Carrier()
    session.poll(first, 0.0)
    [[(kind, data)]] = first.deliveries
    assert kind == "0"
    return server, app, session, json.loads(data)


def test_payload_codec_round_trips_text_and_binary() -> None:
    packets = [("4", "hello"), ("2", ""), ("4", b"\x00\xff"), ("4", "\u00e9\u4e2d")]
    body = encode_payload(packets)
    assert body == "4hello\x1e2\x1ebAP8=\x1e4\u00e9\u4e2d"
    assert decode_payload(body.encode()) == packets


@pytest.mark.parametrize("body", [b"", b"9x", b"4a\x1e", b"b!!!", b"\xff4"])
def test_malformed_payloads_are_refused(body: bytes) -> None:
    with pytest.raises(PacketError):
        decode_payload(body)


def test_decode_packet_binary_is_a_message() -> None:
    assert decode_packet(b"\x01") == ("4", b"\x01")
    assert decode_packet("3probe") == ("3", "probe")


def test_handshake_announces_the_settings() -> None:
    _server, app, session, opening = polling_session(EngineSettings(ping_interval=2.5, ping_timeout=1.5, max_payload=1000))
    assert opening == {
        "sid": session.sid,
        "upgrades": ["websocket"],
        "pingInterval": 2500,
        "pingTimeout": 1500,
        "maxPayload": 1000,
    }
    assert app.sessions == [session]
    assert len(session.sid) == 20  # 15 random bytes from os.urandom


@pytest.mark.parametrize(
    ("query", "method", "code"),
    [
        ({"EIO": "3", "transport": "polling"}, "GET", UNSUPPORTED_VERSION),
        ({"transport": "polling"}, "GET", UNSUPPORTED_VERSION),
        ({"EIO": "4", "transport": "carrier-pigeon"}, "GET", TRANSPORT_UNKNOWN),
        ({"EIO": "4", "transport": "polling"}, "POST", BAD_HANDSHAKE_METHOD),
    ],
)
def test_bad_queries_get_the_javascript_servers_codes(query: dict, method: str, code: int) -> None:
    with pytest.raises(EngineError) as caught:
        EngineServer.check_query(query, method)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert json.loads(caught.value.body())["code"] == code


def test_unknown_sid_is_refused() -> None:
    server = EngineServer(App())
    with pytest.raises(EngineError) as caught:
        server.session("nope", 0.0)
    assert caught.value.code == SESSION_UNKNOWN
    assert caught.value.body() == b'{"code":1,"message":"Session ID unknown"}'


def test_a_held_poll_is_answered_when_a_message_is_sent() -> None:
    _server, app, session, _ = polling_session()
    held = Carrier()
    session.poll(held, 0.1)
    assert held.deliveries == []
    session.send("hello")
    session.send(b"\x01")  # after the GET was answered: waits for the next
    assert held.deliveries == [[("4", "hello")]]
    assert session.backlog == 2
    again = Carrier()
    session.poll(again, 0.2)
    assert again.deliveries == [[("4", b"\x01")]]


def test_posts_deliver_messages_in_order() -> None:
    _server, app, session, _ = polling_session()
    session.post(b"4one\x1e4two\x1ebAQI=", 0.1)
    assert app.messages == ["one", "two", b"\x01\x02"]


def test_a_malformed_post_closes_the_session() -> None:
    server, app, session, _ = polling_session()
    with pytest.raises(EngineError) as caught:
        session.post(b"9what", 0.1)
    assert caught.value.status == 400
    assert app.reasons == ["parse error"]
    assert session.sid not in server.sessions


def test_a_second_concurrent_get_closes_the_session_and_answers_the_first() -> None:
    server, app, session, _ = polling_session()
    held = Carrier()
    session.poll(held, 0.1)
    with pytest.raises(EngineError):
        session.poll(Carrier(), 0.2)
    assert held.deliveries == [[("1", "")]]
    assert app.reasons == ["duplicate poll"]
    with pytest.raises(EngineError) as caught:
        server.session(session.sid, 0.3)
    assert caught.value.code == SESSION_UNKNOWN


def test_client_close_packet_ends_the_session() -> None:
    _server, app, session, _ = polling_session()
    session.post(b"1", 0.1)
    assert app.reasons == ["client closed"]


def test_ping_pong_keeps_a_session_and_silence_ends_it() -> None:
    settings = EngineSettings(ping_interval=1.0, ping_timeout=0.5, ping_spread=0.0)
    server, app, session, _ = polling_session(settings)
    held = Carrier()
    session.poll(held, 0.0)
    server.tick(0.99)
    assert held.deliveries == []
    server.tick(1.0)
    assert held.deliveries == [[("2", "")]]
    session.post(b"3", 1.2)  # pong
    assert session.next_timer() == pytest.approx(2.2)
    session.poll(Carrier(), 1.2)
    server.tick(2.2)  # the next ping goes to the held GET
    server.tick(2.69)
    assert app.reasons == []
    server.tick(2.71)  # no pong within ping_timeout of the ping
    assert app.reasons == ["ping timeout"]


def test_a_client_that_never_polls_again_is_freed() -> None:
    settings = EngineSettings(ping_interval=1.0, ping_timeout=0.5, ping_spread=0.0)
    server, app, session, _ = polling_session(settings)
    server.tick(1.4)  # ping queued, nobody polls
    assert app.reasons == []
    server.tick(1.6)
    assert app.reasons == ["ping timeout"]
    assert server.sessions == {}


def test_first_pings_of_a_crowd_are_spread_then_every_interval_after_the_pong() -> None:
    """Sessions opened at once (a restart) get their first ping at random in the interval's last half,
    not all at once; after a pong the next ping is one interval later, as always."""
    server = EngineServer(App(), EngineSettings(ping_interval=10.0, ping_timeout=5.0))
    crowd = [server.handshake("polling", 0.0, "127.0.0.1:1") for _ in range(200)]
    firsts = sorted(session.next_timer() for session in crowd)
    assert 5.0 <= firsts[0] and firsts[-1] <= 10.0
    assert firsts[-1] - firsts[0] > 2.5  # 200 draws from 5 s all within 2.5 s: odds of about 2**-190
    session = crowd[0]
    session.poll(Carrier(), 0.0)  # collects the open packet
    held = Carrier()
    session.poll(held, 0.0)
    first = session.next_timer()
    server.tick(first - 0.01)
    assert held.deliveries == []
    server.tick(first)
    assert held.deliveries == [[("2", "")]]
    session.post(b"3", first + 0.3)  # the pong
    assert session.next_timer() == pytest.approx(first + 10.3)


def test_a_backlog_over_the_limit_drops_the_session() -> None:
    _server, app, session, _ = polling_session(EngineSettings(max_backlog=200))
    for _ in range(18):  # 11 bytes each, as counted
        session.send("x" * 10)
    assert app.reasons == []
    session.send("x" * 10)
    assert app.reasons == ["too slow"]


def test_upgrade_probe_then_upgrade_moves_the_session() -> None:
    server, app, session, _ = polling_session()
    held = Carrier()
    session.poll(held, 0.1)
    socket = Carrier()
    assert server.open_websocket(session.sid, socket, 0.2) is session
    session.websocket_message(socket, "2probe", 0.2)
    assert socket.deliveries == [[("3", "probe")]]
    assert held.deliveries == [[("6", "")]]  # the held GET is let go, so the client can pause polling
    session.send("queued before the upgrade")
    session.websocket_message(socket, "5", 0.3)
    assert session.transport == "websocket"
    assert socket.deliveries[-1] == [("4", "queued before the upgrade")]
    session.websocket_message(socket, "4over the socket", 0.4)
    assert app.messages == ["over the socket"]
    with pytest.raises(EngineError):
        session.poll(Carrier(), 0.5)
    session.websocket_gone(socket)
    assert app.reasons == ["transport close"]


def test_a_get_that_arrives_after_the_probe_is_answered_at_once() -> None:
    """The browser's race: a GET sent just before the probe's answer reached it. The client upgrades only
    once that GET returns, so holding it until the next ping (25 s) held the upgrade and every event the
    page emitted meanwhile (a `room` join in the tutorial's page)."""
    server, app, session, _ = polling_session()
    socket = Carrier()
    server.open_websocket(session.sid, socket, 0.1)
    before = Carrier()
    session.poll(before, 0.15)  # a WebSocket is open but has not probed: a GET is held as ever
    assert before.deliveries == []
    session.websocket_message(socket, "2probe", 0.2)
    assert before.deliveries == [[("6", "")]]
    late = Carrier()
    session.poll(late, 0.25)
    assert late.deliveries == [[("6", "")]] and session.backlog == 0
    session.websocket_message(socket, "5", 0.3)
    assert session.transport == "websocket" and socket.deliveries == [[("3", "probe")]]
    session.send("after the upgrade")
    assert socket.deliveries[-1] == [("4", "after the upgrade")]


def test_a_failed_probe_lets_gets_be_held_again() -> None:
    server, app, session, _ = polling_session()
    socket = Carrier()
    server.open_websocket(session.sid, socket, 0.1)
    session.websocket_message(socket, "2probe", 0.2)
    session.websocket_gone(socket)  # the upgrade failed: the session stays on polling
    session.poll(Carrier(), 0.3)  # collects the NOOP the probe queued
    held = Carrier()
    session.poll(held, 0.4)
    assert held.deliveries == []
    session.send("later")
    assert held.deliveries == [[("4", "later")]]


def test_a_probe_not_followed_by_the_upgrade_is_closed_after_the_upgrade_timeout() -> None:
    """Until then GETs return at once (the client is about to upgrade); after it, the WebSocket is closed
    and GETs are held again, so a client whose upgrade never comes does not poll in a loop."""
    server, app, session, _ = polling_session(EngineSettings(upgrade_timeout=10.0))
    socket = Carrier()
    server.open_websocket(session.sid, socket, 1.0)
    session.websocket_message(socket, "2probe", 1.0)
    session.poll(Carrier(), 1.1)  # collects the probe's NOOP
    quick = Carrier()
    session.poll(quick, 5.0)
    assert quick.deliveries == [[("6", "")]]
    server.tick(10.9)
    assert not socket.closed
    server.tick(11.0)
    assert socket.closed and session.closed is None and session.transport == "polling"
    held = Carrier()
    session.poll(held, 11.1)
    assert held.deliveries == []
    session.websocket_message(socket, "5", 11.2)  # too late: that WebSocket no longer belongs to the session
    assert session.transport == "polling"


def test_probes_repeated_without_a_held_get_queue_one_noop() -> None:
    """A probe with no GET held queues a NOOP so the next GET returns at once; a client repeating the probe
    (each is answered, as the JavaScript server does) must not grow the queue past its limit unnoticed."""
    server, app, session, _ = polling_session(EngineSettings(max_backlog=200))
    socket = Carrier()
    server.open_websocket(session.sid, socket, 0.1)
    for _ in range(10_000):
        session.websocket_message(socket, "2probe", 0.2)
    assert len(socket.deliveries) == 10_000 and socket.deliveries[-1] == [("3", "probe")]
    assert session.backlog == 1 and app.reasons == []
    held = Carrier()
    session.poll(held, 0.3)
    assert held.deliveries == [[("6", "")]]
    session.send("after")  # a real packet queued meanwhile makes the next GET return; no NOOP is added to it
    session.websocket_message(socket, "2probe", 0.4)
    assert session.backlog == len("after") + 1
    session.websocket_message(socket, "5", 0.5)  # the upgrade: what was queued goes over the WebSocket
    assert socket.deliveries[-1] == [("4", "after")] and session.backlog == 0


def test_the_upgrade_drops_a_queued_noop_and_its_count() -> None:
    server, app, session, _ = polling_session()
    socket = Carrier()
    server.open_websocket(session.sid, socket, 0.1)
    session.websocket_message(socket, "2probe", 0.2)  # no GET held: a NOOP waits for the next one
    assert session.backlog == 1
    session.websocket_message(socket, "5", 0.3)
    assert session.backlog == 0 and socket.deliveries == [[("3", "probe")]]


def test_a_websocket_only_session_gets_its_open_packet_on_the_socket() -> None:
    app = App()
    server = EngineServer(app)
    socket = Carrier()
    session = server.open_websocket(None, socket, 0.0)
    [[(kind, data)]] = socket.deliveries
    assert kind == "0"
    assert json.loads(data)["upgrades"] == []
    assert session.transport == "websocket"


def test_a_second_probe_is_refused() -> None:
    server, _app, session, _ = polling_session()
    server.open_websocket(session.sid, Carrier(), 0.1)
    with pytest.raises(EngineError):
        server.open_websocket(session.sid, Carrier(), 0.1)


def test_close_all_tells_every_client() -> None:
    server, app, session, _ = polling_session()
    held = Carrier()
    session.poll(held, 0.1)
    server.close_all()
    assert held.deliveries == [[("1", "")]]
    assert app.reasons == ["server shutting down"]


def test_closing_with_packets_waiting_sends_them_then_the_close_alone() -> None:
    """A held GET gets what waits; the close packet goes alone in the next response, then the session ends."""
    server, app, session, _ = polling_session()
    held = Carrier()
    session.poll(held, 0.1)
    server.hold_output()
    session.send("42bye")
    session.close("server shutting down")
    server.release_output()
    assert held.deliveries == [[("4", "42bye")]]
    assert app.reasons == []
    assert server.session(session.sid, 0.2) is session
    session.post(b"4too late", 0.2)
    assert app.messages == []
    last = Carrier()
    session.poll(last, 0.3)
    assert last.deliveries == [[("1", "")]]
    assert app.reasons == ["server shutting down"]
    assert session.sid not in server.sessions


def test_closing_between_polls_keeps_the_packets_for_the_next_get() -> None:
    """No GET held: the next GET collects the packets, the one after it the close."""
    server, app, session, _ = polling_session()
    session.send("41")
    session.close("idle timeout")
    session.send("4after the close")
    first, second = Carrier(), Carrier()
    session.poll(first, 0.5)
    session.poll(second, 0.6)
    assert first.deliveries == [[("4", "41")]]
    assert second.deliveries == [[("1", "")]]
    assert app.reasons == ["idle timeout"]


def test_a_closed_session_whose_client_never_polls_again_ends_after_the_close_timeout() -> None:
    """The last packets wait close_timeout seconds; then the session is forgotten."""
    server, app, session, _ = polling_session(EngineSettings(close_timeout=2.0))
    server.now = 1.0
    session.send("41")
    session.close("idle timeout")
    server.tick(2.9)
    assert app.reasons == []
    server.tick(3.1)
    assert app.reasons == ["idle timeout"]
    with pytest.raises(EngineError):
        server.session(session.sid, 3.2)


def test_send_many_answers_a_held_get_with_all_the_messages_in_order() -> None:
    """Messages sent together go out together, after what was queued before them."""
    server, app, session, _ = polling_session()
    session.send("first")
    held = Carrier()
    session.poll(held, 0.1)
    assert held.deliveries == [[("4", "first")]]
    session.send_many(["a", "b", "c"])
    later = Carrier()
    session.poll(later, 0.2)
    assert later.deliveries == [[("4", "a"), ("4", "b"), ("4", "c")]]


def test_send_many_counts_toward_the_backlog_limit() -> None:
    """A client that does not poll again is dropped as too slow once send_many passes max_backlog."""
    server, app, session, _ = polling_session(EngineSettings(max_backlog=150))
    session.send_many(["x" * 60, "y" * 60])
    assert app.reasons == []
    session.send_many(["z" * 60])
    assert app.reasons == ["too slow"]


class FramingCarrier(Carrier):
    """A WebSocket carrier that records the messages it is handed straight."""

    def __init__(self) -> None:
        super().__init__()
        self.straight: list[list[str]] = []

    def deliver_messages(self, messages: list[str]) -> None:
        self.straight.append(list(messages))


def test_send_many_on_an_open_websocket_goes_straight_to_it() -> None:
    """Nothing queued: the messages go to the WebSocket carrier at once, in one call."""
    app = App()
    server = EngineServer(app)
    carrier = FramingCarrier()
    session = server.open_websocket(None, carrier, 0.0)
    session.send_many(["4a", "4b"])
    assert carrier.straight == [["4a", "4b"]]
    assert [kind for kind, _ in carrier.deliveries[0]] == ["0"]  # the open packet went the usual way


def test_a_websocket_upgrade_answer_and_its_open_packet_are_one_write() -> None:
    """The 101 answer and the new session's open packet leave in one write (one send())."""
    from socketlab.engineio_http import EngineConnection

    writes: list[bytes] = []
    ends: list[str] = []
    connection = EngineConnection(EngineServer(App()), writes.append, ends.append, lambda origin, host: True)
    connection.receive(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0,
    )
    assert ends == [] and len(writes) == 1
    head, _, frame = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert frame[0] == 0x81 and frame[2:4] == b"0{"  # one unmasked text frame: the open packet
    assert json.loads(frame[3:])["upgrades"] == []


def _upgraded_connection(app: App) -> tuple[Any, list[bytes], list[str]]:
    from socketlab.engineio_http import EngineConnection

    writes: list[bytes] = []
    ends: list[str] = []
    connection = EngineConnection(EngineServer(app), writes.append, ends.append, lambda origin, host: True)
    connection.receive(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0,
    )
    assert ends == [] and writes[0].startswith(b"HTTP/1.1 101 ")
    return connection, writes, ends


def _client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


@pytest.mark.parametrize("split", [1, 2, 5])
def test_a_fragmented_websocket_message_is_one_message(split: int) -> None:
    """RFC 6455 lets a client send a message in fragments (a ping may come between them): the session gets
    the message whole, even when a fragment ends inside a UTF-8 character."""
    app = App()
    connection, writes, ends = _upgraded_connection(app)
    text = '4["chat message","café ☕"]'.encode()
    inside = text.index("é".encode()) + 1  # between the two bytes of é
    cuts = sorted({inside, *(len(text) * n // split for n in range(1, split))})
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    wire = _client_frame(Opcode.TEXT, pieces[0], fin=False)
    wire += _client_frame(Opcode.PING, b"between")
    for n, piece in enumerate(pieces[1:], 1):
        wire += _client_frame(Opcode.CONT, piece, fin=n == len(pieces) - 1)
    wire += _client_frame(Opcode.TEXT, b"4second")
    connection.receive(wire, 0.1)
    assert app.messages == ['["chat message","café ☕"]', "second"]
    assert ends == [] and connection.ended is None
    binary = _client_frame(Opcode.BINARY, b"\x00\x01", fin=False) + _client_frame(Opcode.CONT, b"\x02")
    connection.receive(binary, 0.2)
    assert app.messages[-1] == b"\x00\x01\x02"


def test_sessions_beyond_max_sessions_are_refused_503_until_one_ends() -> None:
    """A handshake costs no connection (one kept-alive connection can ask for any number): past
    max_sessions it is answered 503 'server full', over polling and over WebSocket alike."""
    app = App()
    server = EngineServer(app, EngineSettings(max_sessions=2))
    server.handshake("polling", 0.0)
    first = server.open_websocket(None, Carrier(), 0.0)
    for attempt in (lambda: server.handshake("polling", 0.1), lambda: server.open_websocket(None, Carrier(), 0.1)):
        with pytest.raises(EngineError) as caught:
            attempt()
        assert (caught.value.status, caught.value.body()) == (503, b'{"code":3,"message":"server full"}')
    assert len(server.sessions) == 2 and len(app.sessions) == 2
    first.close("bye")
    assert server.handshake("polling", 0.2).sid in server.sessions


def test_a_full_engine_answers_the_upgrade_in_http() -> None:
    """A WebSocket-only handshake to a full server gets the 503 before any 101 (a client can tell why)."""
    from socketlab.engineio_http import EngineConnection

    server = EngineServer(App(), EngineSettings(max_sessions=0))
    writes: list[bytes] = []
    connection = EngineConnection(server, writes.append, lambda reason: None, lambda origin, host: True)
    connection.receive(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0,
    )
    assert writes[0].startswith(b"HTTP/1.1 503 ") and writes[0].endswith(b'{"code":3,"message":"server full"}')
    assert connection.refused == (503, "server full") and server.sessions == {}


def test_empty_fragments_hold_nothing() -> None:
    """websockets bounds a message's bytes, not its frames: 100,000 empty fragments keep no list of them."""
    app = App()
    connection, _writes, ends = _upgraded_connection(app)
    wire = _client_frame(Opcode.TEXT, b"4", fin=False) + _client_frame(Opcode.CONT, b"", fin=False) * 100_000
    connection.receive(wire, 0.1)
    assert connection._fragments is not None and bytes(connection._fragments[1]) == b"4"
    connection.receive(_client_frame(Opcode.CONT, b"whole"), 0.2)
    assert app.messages == ["whole"] and ends == []


def test_one_connection_may_hold_only_a_few_polling_sessions() -> None:
    """Handshakes on one kept-alive connection: a client has one session (two while it reconnects); past
    MAX_SESSIONS_PER_CONNECTION open at once the next is refused, so one connection cannot take them all."""
    from socketlab.engineio_http import MAX_SESSIONS_PER_CONNECTION, EngineConnection

    server = EngineServer(App())
    writes: list[bytes] = []
    connection = EngineConnection(server, writes.append, lambda reason: None, lambda origin, host: True)
    request = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"
    for n in range(MAX_SESSIONS_PER_CONNECTION + 1):
        connection.receive(request, 0.1 * n)
    assert [write[:12] for write in writes] == [b"HTTP/1.1 200"] * MAX_SESSIONS_PER_CONNECTION + [b"HTTP/1.1 400"]
    assert writes[-1].endswith(b'{"code":3,"message":"more than 4 sessions on one connection"}')
    assert len(server.sessions) == MAX_SESSIONS_PER_CONNECTION and connection.ended is None
    next(iter(server.sessions.values())).close("gone")
    server.tick(10.0)  # its close timeout passes: it is over
    connection.receive(request, 10.0)
    assert writes[-1].startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "frame, reason",
    [
        (_client_frame(Opcode.TEXT, b"4" + b"x" * 1_000_000), "message too big"),
        (_client_frame(Opcode.TEXT, b"4caf\xc3"), "invalid UTF-8"),
        (_client_frame(Opcode.CONT, b"stray"), "protocol error"),
        (_client_frame(Opcode.CLOSE, b"\x03\xe8"), "transport close"),  # the client closed: no failure of ours
    ],
)
def test_a_websocket_the_server_failed_ends_its_session_with_the_reason(frame: bytes, reason: str) -> None:
    """The session's end says why the server closed the WebSocket (the chat logs it as the departure's reason)."""
    app = App()
    connection, _writes, _ends = _upgraded_connection(app)
    connection.receive(frame, 0.1)
    assert app.reasons == [reason]
