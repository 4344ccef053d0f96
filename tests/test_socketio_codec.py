"""Socket.IO protocol 5, sans-IO: the packet codec and the server over fake Engine.IO sessions."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from socketlab.engineio import Message
from socketlab.socketio import (
    ACK,
    BINARY_EVENT,
    CONNECT,
    EVENT,
    ConnectionRefused,
    Packet,
    PacketError,
    SocketIOServer,
    decode,
    encode,
)


def test_encode_event_ack_connect() -> None:
    assert encode(Packet(CONNECT, data={"sid": "x"})) == ['0{"sid":"x"}']
    assert encode(Packet(EVENT, data=["chat message", "안녕"])) == ['2["chat message","안녕"]']
    assert encode(Packet(EVENT, "/admin", ["hi"], 12)) == ['2/admin,12["hi"]']
    assert encode(Packet(ACK, data=["ok"], id=3)) == ['33["ok"]']


def test_binary_arguments_become_placeholders_and_attachments() -> None:
    assert encode(Packet(EVENT, data=["file", b"\x00\x01", {"more": b"\x02"}])) == [
        '52-["file",{"_placeholder":true,"num":0},{"more":{"_placeholder":true,"num":1}}]',
        b"\x00\x01",
        b"\x02",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Packet(CONNECT)),
        ('0{"token":"t"}', Packet(CONNECT, data={"token": "t"})),
        ("0/admin,", Packet(CONNECT, "/admin")),
        ("0/admin", Packet(CONNECT, "/admin")),
        ('2["room","r1"]', Packet(EVENT, data=["room", "r1"])),
        ('27["room","r1"]', Packet(EVENT, data=["room", "r1"], id=7)),
        ('3/admin,7["ok"]', Packet(ACK, "/admin", ["ok"], 7)),
        ("1", Packet(1)),
    ],
)
def test_decode(text: str, expected: Packet) -> None:
    assert decode(text) == expected


def test_decode_binary_event_counts_its_attachments() -> None:
    packet = decode('52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert packet.type == BINARY_EVENT
    assert len(packet.attachments) == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9",
        "x",
        '2{"not":"an array"}',
        "2[]",
        "2[1,2]",
        "2[not json",
        '3["no id"]',
        '4{"message":"clients do not send CONNECT_ERROR"}',
        '0"a string"',
        '1["disconnect has no payload"]',
        '5["no count"]',
        '5999-["too many"]',
        '51234567890123456["long id"]',
        '5\u00b2-["chat message",{"_placeholder":true,"num":0}]',  # a digit, but not an ASCII one
        pytest.param("2" + "[" * 100_000 + "]" * 100_000, id="nested deeper than the JSON decoder goes"),
    ],
)
def test_malformed_packets_are_refused(text: str) -> None:
    with pytest.raises(PacketError):
        decode(text)


class FakeSession:
    """An Engine.IO session as the Socket.IO layer sees it: send() and close() recorded."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed: str | None = None
        self.data: object = None
        self.peer = "127.0.0.1:9"
        self.backlog = 0

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def close(self, reason: str = "server closed") -> None:
        self.closed = reason


def connected(server: SocketIOServer, auth: str = "") -> tuple[Any, FakeSession]:
    session = FakeSession()
    server.opened(session)  # type: ignore[arg-type]
    server.received(session, "0" + auth)  # type: ignore[arg-type]
    return session, session


def echo_server() -> SocketIOServer:
    server = SocketIOServer()
    main = server.of("/")

    @main.on("authorize")
    def authorize(client: Any, auth: dict) -> bool:
        return auth.get("token") != "bad"

    @main.on("message")
    def message(client: Any, *args: Any) -> tuple:
        client.emit("message-back", *args)
        return args

    return server


def test_connect_event_ack_and_disconnect() -> None:
    server = echo_server()
    session, _ = connected(server)
    [opened] = session.sent
    assert opened.startswith('0{"sid":"')
    sid = json.loads(opened[1:])["sid"]
    assert sid in server.of("/").clients
    server.received(session, '21["message",1,"two"]')  # type: ignore[arg-type]
    assert session.sent[1:] == ['2["message-back",1,"two"]', '31[1,"two"]']
    server.received(session, "1")  # type: ignore[arg-type]
    assert server.of("/").clients == {}


def test_binary_event_waits_for_its_attachment() -> None:
    server = echo_server()
    session, _ = connected(server)
    server.received(session, '51-["message",{"_placeholder":true,"num":0}]')  # type: ignore[arg-type]
    assert len(session.sent) == 1
    server.received(session, b"\x01\x02")  # type: ignore[arg-type]
    assert session.sent[1:] == ['51-["message-back",{"_placeholder":true,"num":0}]', b"\x01\x02"]


def test_attachments_waiting_for_the_rest_are_bounded_as_one_message_is() -> None:
    """A binary packet's attachments together are at most max_payload bytes: a client that announces 64 and
    sends 63 of 1 MB each is closed at the second, not holding 63 MB until it ends."""
    server = echo_server()
    limit = server.engine.settings.max_payload
    session, _ = connected(server)
    announce = '564-["message",' + ",".join('{"_placeholder":true,"num":%d}' % n for n in range(64)) + "]"
    server.received(session, announce)  # type: ignore[arg-type]
    server.received(session, b"\0" * (limit - 10))  # type: ignore[arg-type]
    assert session.closed is None
    server.received(session, b"\0" * 11)  # type: ignore[arg-type]
    assert session.closed == "parse error"
    within, _ = connected(server)  # up to the limit, they are delivered
    server.received(within, '52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')  # type: ignore[arg-type]
    server.received(within, b"\1" * (limit - 1))  # type: ignore[arg-type]
    server.received(within, b"\2")  # type: ignore[arg-type]
    assert within.closed is None
    assert within.sent[-3:] == [
        '52-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
        b"\1" * (limit - 1),
        b"\2",
    ]


def test_attachments_nested_too_deeply_close_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilding a packet around its attachments recurses: past the interpreter's depth it is a malformed packet,
    not a handler's bug (whose traceback would be logged for every such packet)."""

    def too_deep(data: Any, attachments: list[bytes]) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("socketlab.socketio._reconstruct", too_deep)
    server = echo_server()
    session, _ = connected(server)
    server.received(session, '51-["message",[[{"_placeholder":true,"num":0}]]]')  # type: ignore[arg-type]
    server.received(session, b"\1")  # type: ignore[arg-type]
    assert session.closed == "parse error"


def test_refused_connect_gets_connect_error() -> None:
    server = echo_server()
    session, _ = connected(server, '{"token":"bad"}')
    assert session.sent == ['4{"message":"Connection refused"}']
    assert server.of("/").clients == {}


def test_a_handler_raising_connection_refused_names_its_reason() -> None:
    server = SocketIOServer()
    main = server.of("/")

    @main.on("authorize")
    def authorize(client: Any, auth: dict) -> None:
        raise ConnectionRefused("server full")

    session, _ = connected(server)
    assert session.sent == ['4{"message":"server full"}']


def test_unknown_namespace() -> None:
    server = echo_server()
    session = FakeSession()
    server.opened(session)  # type: ignore[arg-type]
    server.received(session, "0/nowhere,")  # type: ignore[arg-type]
    assert session.sent == ['4/nowhere,{"message":"Invalid namespace"}']


def test_a_malformed_packet_closes_only_that_session() -> None:
    server = echo_server()
    bad, _ = connected(server)
    good, _ = connected(server)
    server.received(bad, "2[not json")  # type: ignore[arg-type]
    assert bad.closed == "parse error"
    assert good.closed is None
    server.received(good, '2["message","still here"]')  # type: ignore[arg-type]
    assert good.sent[-1] == '2["message-back","still here"]'


def test_a_stray_binary_message_closes_the_session() -> None:
    server = echo_server()
    session, _ = connected(server)
    server.received(session, b"\x00")  # type: ignore[arg-type]
    assert session.closed == "parse error"


def test_a_session_that_never_connects_is_closed_after_the_connect_timeout() -> None:
    server = SocketIOServer(connect_timeout=1.0)
    session = FakeSession()
    server.opened(session)  # type: ignore[arg-type]
    server.tick(0.5)
    assert session.closed is None
    server.tick(1.0)
    assert session.closed == "connect timeout"


def test_rooms_and_server_emits_with_acks() -> None:
    server = SocketIOServer()
    main = server.of("/")
    first, _ = connected(server)
    second, _ = connected(server)
    clients = list(main.members())
    clients[0].join("r")
    main.emit("news", "only r", to="r")
    assert first.sent[-1] == '2["news","only r"]'
    assert second.sent[-1].startswith("0")
    answers: list[Any] = []
    clients[1].emit("question", callback=lambda *args: answers.append(args))
    assert second.sent[-1] == '20["question"]'
    server.received(second, '30["yes"]')  # type: ignore[arg-type]
    assert answers == [("yes",)]


def test_sessions_that_never_connect_are_closed_at_their_deadline_and_only_they_are_looked_at() -> None:
    """The connect timeout: each session not in a namespace within connect_timeout is closed; the walk
    stops at the first session not yet due (the sessions wait in the order of their deadlines)."""
    server = SocketIOServer(connect_timeout=10.0)
    server.of("/")
    sessions = []
    for n in range(5):
        server.engine.now = float(n)
        session = FakeSession()
        server.opened(session)  # type: ignore[arg-type]
        sessions.append(session)
    server.received(sessions[1], "0")  # type: ignore[arg-type]  # connected: no deadline any more
    server.tick(12.5)
    assert [session.closed for session in sessions] == ["connect timeout", None, "connect timeout", None, None]
    looked_at: list[object] = []

    class Watching(FakeSession):
        @property
        def data(self) -> object:
            looked_at.append(self)
            return self.__dict__["data"]

        @data.setter
        def data(self, value: object) -> None:
            self.__dict__["data"] = value

    server.engine.now = 20.0
    late = [Watching() for _ in range(100)]
    for session in late:
        server.opened(session)  # type: ignore[arg-type]
    looked_at.clear()
    server.tick(13.5)  # sessions[3] is due, [4] is not: the 100 behind it are not looked at
    assert sessions[3].closed == "connect timeout" and sessions[4].closed is None and looked_at == []


def test_a_refused_connect_leaves_the_connect_deadline_running() -> None:
    """A CONNECT refused (here by the authorize handler) does not take the session off the connect timeout:
    a client that keeps answering pings cannot hold a session without ever joining a namespace."""
    server = echo_server()
    server.connect_timeout = 10.0
    server.engine.now = 0.0
    session = FakeSession()
    server.opened(session)  # type: ignore[arg-type]
    server.received(session, '0{"token":"bad"}')  # type: ignore[arg-type]
    assert session.sent[-1].startswith("4") and session.closed is None  # CONNECT_ERROR
    server.tick(10.5)
    assert session.closed == "connect timeout"


def test_the_connect_timeout_walk_stops_at_its_limit() -> None:
    """A storm's sessions expire together: tick(limit=N) closes N of them and says more are due."""
    server = SocketIOServer(connect_timeout=1.0)
    sessions = []
    for _ in range(5):
        session = FakeSession()
        server.opened(session)  # type: ignore[arg-type]
        sessions.append(session)
    assert server.tick(2.0, limit=3) is True
    assert [session.closed for session in sessions].count("connect timeout") == 3
    server.tick(2.0, limit=3)
    assert all(session.closed == "connect timeout" for session in sessions)


def test_arrays_of_strings_encode_as_the_json_encoder_does() -> None:
    """The chat's events skip the encoder's walk: the text must be the same, escapes and all."""
    reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    rng = random.Random(11)
    characters = ["a", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "😀", "\ud800", "\u2028", "/", " "]
    for _ in range(5000):
        data = ["".join(rng.choice(characters) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(0, 4))]
        assert encode(Packet(EVENT, "/", data)) == ["2" + reference.encode(data)], data
        if data:
            assert decode("2" + reference.encode(data)).data == data


@pytest.mark.parametrize(
    ("text", "data"), [('2 ["a"]', ["a"]), ('2["a"] ', ["a"]), ('2\t["a"]\n', ["a"]), ('2["a","b"]', ["a", "b"])]
)
def test_json_around_whitespace_is_read_as_json_loads_reads_it(text: str, data: list[str]) -> None:
    assert decode(text).data == data


@pytest.mark.parametrize("text", ['2["a"]x', "2[", '2["a"]]', '2["a"] ["b"]'])
def test_json_with_anything_after_its_value_is_refused(text: str) -> None:
    with pytest.raises(PacketError, match="payload is not JSON"):
        decode(text)
