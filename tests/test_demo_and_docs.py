"""``socketlab demo`` and the runnable examples the docs point to."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from support import TIMEOUT, run_cli

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_demo_exits_zero_with_narrated_tcp_transcript() -> None:
    """The demo narrates each side of the TCP exchange in order and exits 0."""
    result = run_cli("demo", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    start = lines.index("== TCP: a welcome server and a client ==")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("== "))
    tcp = [line for line in lines[start:end] if line.strip() and not line.strip().startswith("--")]
    patterns = [
        r"\[server\] Server is listening on 127\.0\.0\.1:\d+",
        r"\[client\] Connected to Server 127\.0\.0\.1:\d+",
        r"\[server\] Client connected 127\.0\.0\.1:\d+",
        r"\[client\] Get message from Server: Welcome to Socket Server",
        r"\[client\] sends 'Hello Socket Server' and ends its side",
        r"\[server\] Get message from client 127\.0\.0\.1:\d+: Hello Socket Server\\n",
        r"\[server\] Client disconnected 127\.0\.0\.1:\d+ \(20 bytes received\)",
        r"\[client\] Disconnected from Server",
        r"\[server\] Server closed",
    ]
    for pattern, line in zip(patterns, tcp[1:], strict=True):
        assert re.search(pattern, line), (pattern, line)


def test_demo_labels_follow_the_server_and_it_ends_with_what_to_try() -> None:
    """A client is labelled with the name the server gave it until the server confirms a rename; the
    Socket.IO part uses the tutorial's events; the transcript ends with commands to try next."""
    result = run_cli("demo", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert "  [user1] > /nick alice" in lines
    assert lines[lines.index("  [user1] > /nick alice") + 2] == "  [user1] * user1 is now known as alice"
    assert "  [alice] > Hello everyone" in lines and not any(line.startswith("  [alice] * welcome") for line in lines)
    start = lines.index("== Socket.IO: the tutorial's events on the same chat ==")
    socketio = lines[start:]
    for expected in (
        "  [socket.io user1] emit 'room' 'chess'",
        "  [socket.io user1] on 'chat message' '<user1> hello from socket.io'",
        "  [terminal user2] <user1> hello from socket.io",
        "  [socket.io user1] on 'chat message' '<user2> hello from a terminal'",
        "  [socket.io user3] on 'result' 'failed'",
    ):
        assert expected in socketio, expected
    assert lines[-8] == "== What to try next =="
    assert "(0 more bytes)" not in result.stdout.decode()


def run_example(name: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_tcp_welcome_example() -> None:
    """docs/examples/tcp_welcome.py prints what each side received."""
    assert run_example("tcp_welcome.py").splitlines() == [
        "server got b'Hello Socket Server\\n' from a client",
        "client got b'Welcome to Socket Server\\n'",
    ]


def test_chat_rooms_example() -> None:
    """docs/examples/chat_rooms.py shows joins, the full room and a room-only message."""
    assert run_example("chat_rooms.py").splitlines() == [
        "user1 reads: * you are in den",
        "user2 reads: * you are in den",
        "user1 reads: * user2 joined den",
        "user3 reads: ! room den is full (2/2)",
        "user1 reads: <user2> only the den hears this",
    ]


def test_demo_chat_part() -> None:
    """The chat part relays to the others, fills room1 with two and refuses the third."""
    result = run_cli("demo", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    chat = lines[
        lines.index("== Chat: a broadcast server with rooms of at most two ==") : lines.index(
            "== Web: a browser (WebSocket) and terminals in the same rooms =="
        )
        - 1
    ]
    hello = chat.index("  [alice] > Hello everyone")
    assert chat[hello + 1 : hello + 3] == ["  [bob] <alice> Hello everyone", "  [carol] <alice> Hello everyone"]
    refused = chat.index("  [carol] > /join room1")
    assert chat[refused + 1] == "  [carol] ! room room1 is full (2/2)"
    private = chat.index("  [bob] > just the two of us")
    assert chat[private + 1] == "  [alice] <bob> just the two of us"
    assert chat[private + 3] == "  [carol] * in lobby: carol"
    assert chat[-1] == "  [server] Server closed"
    assert sum("* server shutting down" in line for line in chat) == 3


def test_demo_udp_part() -> None:
    """The UDP part shows the receiver, the datagram with its sender, and the totals."""
    result = run_cli("demo", timeout=30)
    lines = result.stdout.decode().splitlines()
    udp = lines[lines.index("== UDP: datagrams, no connection ==") :]
    assert re.fullmatch(r"  \[server\] Listening for UDP on 127\.0\.0\.1:\d+", udp[1])
    assert re.fullmatch(r"  \[sender\] Sent 1 datagram \(16 bytes\) to 127\.0\.0\.1:\d+ in .*", udp[3])
    assert re.fullmatch(r"  \[server\] Get message from client 127\.0\.0\.1:\d+: Hello UDP Server", udp[4])
    assert udp[5] == "  [server] Receiver closed: 1 datagram, 16 bytes from 1 sender"


def test_udp_hello_example() -> None:
    """docs/examples/udp_hello.py receives the sender's one datagram and counts it."""
    assert run_example("udp_hello.py").splitlines() == [
        "sender sent 1 datagram of 16 bytes",
        "receiver got b'Hello UDP Server' from 127.0.0.1",
        "1 datagram, 16 bytes from 1 sender",
    ]


def test_demo_web_part_puts_a_websocket_member_in_a_room_with_a_terminal() -> None:
    """The demo's web part: a WebSocket member and a terminal member chat in one room of two,
    a third (WebSocket) member is refused, and shutdown closes browsers with 1001."""
    result = run_cli("demo", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    start = lines.index("== Web: a browser (WebSocket) and terminals in the same rooms ==")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("== "))
    web = lines[start:end]
    expected_in_order = [
        r"\[server\] Web chat on http://127\.0\.0\.1:\d+/$",
        r"\[browser user1\] \* welcome user1, you are in lobby \(type /help\)$",
        r"\[terminal user2\] \* welcome user2, you are in lobby \(type /help\)$",
        r"\[terminal erin\] <dana> hello from the browser$",
        r"\[browser dana\] <erin> hello from the terminal$",
        r"\[browser user3\] ! room chess is full \(2/2\)$",
        r"\[browser dana\] connection closed by the server with code 1001$",
        r"\[server\] Server closed$",
    ]
    position = 0
    for pattern in expected_in_order:
        position = next(i for i in range(position, len(web)) if re.search(pattern, web[i])) + 1
