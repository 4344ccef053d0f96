"""The stock JavaScript socket.io client (socket.io-client for Node) against the chat's Socket.IO.

Needs node and ``npm ci --prefix tests/js`` (``.ci/run`` does both when node is there);
skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest

from support import TIMEOUT, LineReader, Peer, wait_until

JS = pathlib.Path(__file__).parent / "js"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not (JS / "node_modules" / "socket.io-client").is_dir(), reason="run `npm ci --prefix tests/js` first"),
]


class JsMember:
    """tests/js/member.js in a subprocess: commands in, one JSON line per happening out."""

    def __init__(self, port: int, transports: str = "") -> None:
        assert NODE is not None
        args = [NODE, str(JS / "member.js"), f"http://127.0.0.1:{port}"] + ([transports] if transports else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = LineReader(self.proc.stdout)
        self.connected = self.next()

    def next(self) -> dict[str, Any]:
        return json.loads(self.out.wait_for(r"^\{").string)

    def until(self, wanted: dict[str, Any]) -> list[dict[str, Any]]:
        """Happenings up to and including *wanted*."""
        seen = []
        while True:
            happening = self.next()
            seen.append(happening)
            if happening == wanted:
                return seen

    def emit(self, name: str, *args: Any, ack: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"emit": name, "args": list(args), "ack": ack}).encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)


@pytest.fixture
def js_members() -> Any:
    opened: list[JsMember] = []

    def start(port: int, transports: str = "") -> JsMember:
        member = JsMember(port, transports)
        opened.append(member)
        return member

    yield start
    for member in opened:
        member.close()


@pytest.mark.parametrize("transports", ["", "websocket", "polling"])
def test_the_js_client_joins_a_room_with_a_terminal(web_chat, js_members, transports) -> None:
    """Each way the JS client connects: it joins r1 (ack "ok"), talks with a TCP member of r1 both
    ways, hears itself as io.to(room).emit does, and the default connection upgrades to WebSocket."""
    server = web_chat(room_size=2)
    member = js_members(server.web_address[1], transports)
    # By default it opens with polling and upgrades, sometimes before its "connect" event fires.
    assert member.connected == {"connect": True, "transport": transports or member.connected["transport"]}
    seen = member.until({"event": "notice", "args": ["welcome user1, you are in lobby (type /help)"]})
    if not transports and member.connected["transport"] == "polling" and {"upgrade": "websocket"} not in seen:
        seen = member.until({"upgrade": "websocket"})  # the upgrade may also come before the welcome
    member.emit("room", "r1", ack=True)
    assert member.until({"ack": ["ok"]})[0] == {"event": "notice", "args": ["you are in r1"]}
    tcp = Peer(server.server_address[1])
    tcp.until("* welcome user2, you are in lobby (type /help)")
    tcp.send(b"/join r1\n")
    tcp.until("* you are in r1")
    member.until({"event": "notice", "args": ["user2 joined r1"]})
    member.emit("chat message", "안녕 from node")
    assert member.next() == {"event": "chat message", "args": ["<user1> 안녕 from node"]}
    assert tcp.line() == "<user1> 안녕 from node"
    tcp.send(b"hello node\n")
    assert member.next() == {"event": "chat message", "args": ["<user2> hello node"]}
    tcp.close()
    assert seen


def test_a_third_js_client_is_refused_a_room_of_two(web_chat, js_members) -> None:
    """The tutorial's cap: two JS clients join r1; the third hears `result` `failed` and stays in the lobby."""
    server = web_chat(room_size=2)
    members = [js_members(server.web_address[1], "websocket") for _ in range(3)]
    for member in members[:2]:
        member.emit("room", "r1", ack=True)
        member.until({"ack": ["ok"]})
    members[2].emit("room", "r1", ack=True)
    seen = members[2].until({"ack": ["failed"]})
    assert {"event": "result", "args": ["failed"]} in seen
    assert {"event": "error", "args": ["room r1 is full (2/2)"]} in seen
    members[2].emit("chat message", "still in the lobby")
    assert members[2].until({"event": "chat message", "args": ["<user3> still in the lobby"]})
    members[0].emit("chat message", "two of us")
    for member in members[:2]:
        member.until({"event": "chat message", "args": ["<user1> two of us"]})


def test_shutdown_disconnects_the_js_client(web_chat, js_members) -> None:
    """On shutdown the JS client hears the notice, then the server's DISCONNECT ('io server disconnect').

    The polling client is told through its pending GET: shutdown waits until it has one (a client
    between two polls at that moment finds the listener closed, and reports a transport error).
    """
    server = web_chat()
    polling, websocket = js_members(server.web_address[1], "polling"), js_members(server.web_address[1], "websocket")
    for member in (polling, websocket):
        member.next()
    assert polling.until({"event": "notice", "args": ["user2 joined lobby"]})

    def poll_pending() -> bool:
        with server.lock:
            return any(conn.session.engine is not None and conn.session.engine.holding for conn in server._engine_conns)

    wait_until(poll_pending, what="the polling client's next GET")
    server.shutdown()
    for member in (polling, websocket):
        seen = member.until({"disconnect": "io server disconnect"})
        assert {"event": "notice", "args": ["server shutting down"]} in seen
        assert member.proc.wait(TIMEOUT) == 0
