"""The chat core's delivery step, without sockets: non-blocking sends and backlogs."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from socketlab.chat.protocol import Member, Room
from socketlab.chat.outbox import Outbox
from socketlab.chat.service import ChatService
from socketlab.chat.web import WebConnection, WebSession, WebSite


class RecordingSocket:
    """Takes at most *accept* bytes per send() and records what it took."""

    def __init__(self, accept: int = 1 << 30) -> None:
        self.accept = accept
        self.sends: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        taken = bytes(data[: self.accept])
        self.sends.append(taken)
        return len(taken)


class RecordingWriter:
    def __init__(self) -> None:
        self.watched: list[Outbox] = []

    def watch(self, outbox: Outbox) -> None:
        self.watched.append(outbox)

    def unwatch(self, outbox: Outbox) -> None:
        if outbox in self.watched:
            self.watched.remove(outbox)


def member(name: str, sock: RecordingSocket, writer: RecordingWriter, limit: int = 1 << 20) -> Member:
    outbox = Outbox(sock, limit, writer)  # type: ignore[arg-type]
    return Member(0, name, Room("lobby"), SimpleNamespace(outbox=outbox, send=outbox.write))


def test_what_the_kernel_does_not_take_waits_in_the_backlog_in_order() -> None:
    """A partial send leaves the rest in the backlog; later lines queue behind it, never around it."""
    writer = RecordingWriter()
    slow_sock, fast_sock = RecordingSocket(accept=5), RecordingSocket()
    slow, fast = member("slow", slow_sock, writer), member("fast", fast_sock, writer)
    ChatService.deliver([([slow, fast], b"first\n")])
    ChatService.deliver([([slow, fast], b"second\n")])
    assert slow_sock.sends == [b"first"]
    assert fast_sock.sends == [b"first\n", b"second\n"]
    box = slow.transport.outbox
    assert writer.watched == [box]
    assert b"".join(box.chunks) == b"\nsecond\n"
    ChatService.deliver([([slow, fast], b"third\n"), ([fast], b"x\n")])
    assert slow_sock.sends == [b"first"]  # queued behind the backlog, not sent around it
    assert b"".join(box.chunks) == b"\nsecond\nthird\n"
    assert fast_sock.sends[-1] == b"third\nx\n"  # one step's deliveries: one send per receiver
    slow_sock.accept = 100
    box.flush()
    assert slow_sock.sends[-1] == b"\nsecond\nthird\n"
    assert box.size == 0 and writer.watched == []
    ChatService.deliver([([slow], b"fourth\n")])  # drained: straight to the kernel again
    assert slow_sock.sends[-1] == b"fourth\n" and box.size == 0


def test_a_receiver_over_its_backlog_limit_is_dropped_as_too_slow() -> None:
    """More waiting than max_backlog: the outbox closes as "too slow" and holds nothing."""
    writer = RecordingWriter()
    stuck = RecordingSocket(accept=0)
    stuck.shutdown = lambda how: None  # type: ignore[attr-defined]
    slow = member("slow", stuck, writer, limit=10)
    ChatService.deliver([([slow], b"12345\n"), ([slow], b"67890\n")])
    box = slow.transport.outbox
    assert box.closed and box.reason == "too slow"
    assert box.size == 0
    sends = list(stuck.sends)
    ChatService.deliver([([slow], b"later\n")])  # closed: nothing is sent or kept
    assert stuck.sends == sends and box.size == 0


def test_end_waits_for_the_backlog_then_shuts_the_socket_and_takes_nothing_more() -> None:
    """end() with a backlog: later writes are refused at once, the backlog still goes out, then the socket shuts."""
    writer = RecordingWriter()
    sock = RecordingSocket(accept=3)
    shut: list[int] = []
    sock.shutdown = shut.append  # type: ignore[attr-defined]
    box = Outbox(sock, 1 << 20, writer)  # type: ignore[arg-type]
    box.write(b"last line\n")
    box.end("bye")
    box.write(b"after the goodbye\n")
    assert not shut and box.size == len(b"last line\n") - 3 and not box.closed
    sock.accept = 100
    box.flush()
    assert b"".join(sock.sends) == b"last line\n"
    assert box.closed and box.reason == "bye" and shut and writer.watched == []
    box.write(b"too late\n")
    assert b"".join(sock.sends) == b"last line\n"


def test_held_writes_go_out_in_one_send_on_release() -> None:
    """hold() keeps writes back (a WebSocket's upgrade answer waits for its welcome); release() sends them
    with one send(), what the kernel leaves becoming the backlog."""
    writer = RecordingWriter()
    sock = RecordingSocket(accept=8)
    box = Outbox(sock, 1 << 20, writer)  # type: ignore[arg-type]
    box.hold()
    box.write(b"answer\r\n")
    box.write(b"welcome\n")
    assert sock.sends == []
    box.release()
    assert sock.sends == [b"answer\r\n"]  # one send() of both; the kernel took 8 bytes
    assert b"".join(box.chunks) == b"welcome\n" and writer.watched == [box]
    sock.accept = 100
    box.flush()
    assert sock.sends[-1] == b"welcome\n" and not box.closed
    box.release()  # released already: nothing more
    assert len(sock.sends) == 2


def test_a_held_answer_is_not_a_backlog_the_kernel_may_take_it_whole() -> None:
    """While held, writes are one read's answer, not a backlog: past the limit they are kept, and on release
    the kernel takes them (only what it leaves is held to the limit)."""
    writer = RecordingWriter()
    sock = RecordingSocket(accept=1 << 20)
    box = Outbox(sock, 1024, writer)  # type: ignore[arg-type]
    box.hold()
    box.write(b"x" * 1000)
    box.write(b"y" * 1000)
    assert not box.closed
    box.release()
    assert sock.sends == [b"x" * 1000 + b"y" * 1000] and not box.closed and box.idle


def test_an_end_while_held_sends_what_was_kept_then_ends() -> None:
    """A goodbye (a refusal, shutdown) on a held outbox releases it: what was kept goes first, in one
    send(), then the end, once it is out; nothing is left held should the release never come."""
    writer = RecordingWriter()
    sock = RecordingSocket(accept=8)
    shut: list[int] = []
    sock.shutdown = shut.append  # type: ignore[attr-defined]
    box = Outbox(sock, 1 << 20, writer)  # type: ignore[arg-type]
    box.hold()
    box.write(b"answer\r\n")
    box.write(b"server full\n")
    box.end("server full")
    assert sock.sends == [b"answer\r\n"] and not box.held  # one send() of both; the kernel took 8 bytes
    assert b"".join(box.chunks) == b"server full\n" and not shut
    box.write(b"after the goodbye\n")
    sock.accept = 100
    box.flush()
    assert sock.sends[-1] == b"server full\n" and box.closed and box.reason == "server full" and shut
    box.release()  # released already: nothing more
    assert len(sock.sends) == 2


def test_release_without_a_hold_or_after_a_failure_sends_nothing() -> None:
    writer = RecordingWriter()
    sock = RecordingSocket()
    sock.shutdown = lambda how: None  # type: ignore[attr-defined]
    box = Outbox(sock, 1 << 20, writer)  # type: ignore[arg-type]
    box.release()
    box.write(b"at once\n")
    assert sock.sends == [b"at once\n"]
    box.hold()
    box.write(b"held\n")
    box.fail("connection reset")
    box.release()
    assert sock.sends == [b"at once\n"] and box.closed


def web_connection(sock: RecordingSocket) -> tuple[WebConnection, Outbox]:
    box = Outbox(sock, 1 << 20, RecordingWriter())  # type: ignore[arg-type]
    session = WebSession(WebSite({"/": (b"page", "text/plain")}), 0.0)
    return WebConnection(sock, "peer", box, session, threading.Lock()), box  # type: ignore[arg-type]


def test_a_websocket_upgrade_waits_for_the_welcome_and_both_go_out_in_one_send() -> None:
    sock = RecordingSocket()
    conn, box = web_connection(sock)
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8080/ws"))
    client.send_request(client.connect())
    assert conn.data_received(b"".join(client.data_to_send())) == []
    assert conn.ready_to_join() and box.held and sock.sends == []
    conn.send(b"* welcome\n")  # what joining the hub writes
    box.release()  # what the server's join_late() ends with
    [sent] = sock.sends
    client.receive_data(sent)
    answer, welcome = client.events_received()
    assert answer.status_code == 101 and welcome.data == b"* welcome\n"  # type: ignore[union-attr]


def test_a_page_is_answered_at_once() -> None:
    sock = RecordingSocket()
    sock.shutdown = lambda how: None  # type: ignore[attr-defined]
    conn, box = web_connection(sock)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    assert not box.held and sock.sends and sock.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
