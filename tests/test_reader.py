"""The reader loop alone, over socketpair(): a stand-in host, a real hub, no listener."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Iterator

import pytest

from socketlab.access import RateLimitedLog
from socketlab.chat.connection import Connection, LineConnection
from socketlab.chat.outbox import BacklogWriter, Outbox
from socketlab.chat.protocol import ChatHub
from socketlab.chat.reader import ReaderLoop
from socketlab.chat.service import ChatService
from support import TIMEOUT, wait_until

pytestmark = pytest.mark.timeout(30)

logger = logging.getLogger("socketlab.chat")


class Host:
    """The least a reader loop needs of a server."""

    idle_timeout = None

    def __init__(self) -> None:
        self.service = ChatService(ChatHub())
        self.logger = logger
        self.refusal_log = RateLimitedLog(logger)
        self.closed: list[Connection] = []

    def join_late(self, conn: Connection) -> None:
        raise AssertionError("plain line clients join at once")

    def join_arrivals(self, conns: list[Connection]) -> bool:
        members = self.service.join(conns)
        assert members is not None
        for conn, member in zip(conns, members, strict=True):
            conn.joined(member)
        return True

    def connection_closed(self, conn: Connection) -> None:
        self.closed.append(conn)


class WatchingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that notes which thread registers each file."""

    def __init__(self) -> None:
        super().__init__()
        self.registered_by: list[str] = []

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        self.registered_by.append(threading.current_thread().name)
        return super().register(fileobj, events, data)


@pytest.fixture
def loop(monkeypatch) -> Iterator[tuple[Host, ReaderLoop, WatchingSelector]]:
    host = Host()
    selector = WatchingSelector()
    monkeypatch.setattr(selectors, "DefaultSelector", lambda: selector)
    reader = ReaderLoop(host)
    monkeypatch.undo()
    writer = BacklogWriter(host.service.lock, None, lambda: None)
    writer.start()
    reader.start()
    reader.writer = writer  # type: ignore[attr-defined]
    try:
        yield host, reader, selector
    finally:
        reader.stop()
        writer.stop()


def member(host: Host, reader: ReaderLoop) -> tuple[socket.socket, LineConnection]:
    """A joined line client on one end of a socketpair; the test holds the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(TIMEOUT)
    conn = LineConnection(ours, f"pair{ours.fileno()}", Outbox(ours, 1 << 20, reader.writer), 4096)  # type: ignore[attr-defined]
    members = host.service.join([conn])
    assert members is not None
    conn.joined(members[0])
    reader.add([conn])
    return theirs, conn


def read_lines(sock: socket.socket, count: int) -> list[str]:
    """Exactly *count* lines (read a byte at a time: nothing beyond them is consumed)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(1)
        assert chunk, "closed"
        data += chunk
    return data.decode().splitlines()


def test_lines_are_relayed_and_connections_counted_and_closed(loop) -> None:
    host, reader, _selector = loop
    alice, _ = member(host, reader)
    bob, _ = member(host, reader)
    assert reader.count == 2
    assert read_lines(alice, 2) == ["* welcome user1, you are in lobby (type /help)", "* user2 joined lobby"]
    assert read_lines(bob, 1) == ["* welcome user2, you are in lobby (type /help)"]
    alice.sendall(b"hello\nand ")
    alice.sendall(b"more\n")
    assert read_lines(bob, 2) == ["<user1> hello", "<user1> and more"]
    alice.close()
    assert read_lines(bob, 1) == ["* user1 left lobby (disconnected)"]
    wait_until(lambda: reader.count == 1, what="alice's connection finished")
    assert [conn.peer for conn in host.closed] == [host.closed[0].peer] and len(host.closed) == 1
    bob.close()


def test_only_the_reader_thread_registers_sockets(loop) -> None:
    """Connections added from other threads are registered by the reader thread, through the waker."""
    host, reader, selector = loop
    before = len(selector.registered_by)
    peers: list[socket.socket] = []
    threads = [threading.Thread(target=lambda: peers.append(member(host, reader)[0]), name=f"adder{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    wait_until(lambda: len(selector.registered_by) == before + 4, what="four registrations")
    assert set(selector.registered_by[before:]) == {"chat-reader"}
    assert reader.count == 4
    for peer in peers:
        peer.close()


def test_stop_leaves_the_selector_to_a_reader_that_does_not_stop(loop, caplog) -> None:
    """A reader stuck past stop_timeout keeps its selector and connections: nothing is closed under it."""
    host, reader, selector = loop
    peer, conn = member(host, reader)
    release = threading.Event()
    stuck = threading.Event()

    def blocking_flush() -> None:
        stuck.set()
        release.wait(TIMEOUT)

    host.service.flush = blocking_flush  # type: ignore[method-assign]
    peer.sendall(b"wake up\n")
    assert stuck.wait(TIMEOUT)
    reader.stop_timeout = 0.2
    with caplog.at_level("ERROR", logger="socketlab.chat"):
        reader.stop()
    assert "did not stop within 0.2 s; leaving 1 connections open" in caplog.text
    assert selector.get_map() is not None  # a closed selector has no map
    assert conn.sock.fileno() != -1
    release.set()
    wait_until(lambda: not reader._thread.is_alive(), what="the reader thread ended")
    peer.close()


def test_a_join_that_fails_closes_its_clients_and_the_reader_goes_on(loop, caplog) -> None:
    """Clients handed over to join (add(..., join=True)) whose join raises are closed with an error logged;
    the reader thread survives and serves the next ones."""
    host, reader, _selector = loop
    calls: list[int] = []
    working = host.join_arrivals

    def failing_once(conns: list[Connection]) -> bool:
        calls.append(len(conns))
        if len(calls) == 1:
            raise RuntimeError("a bug in the welcome")
        return working(conns)

    host.join_arrivals = failing_once  # type: ignore[method-assign]
    pairs = [socket.socketpair() for _ in range(3)]
    for ours, theirs in pairs:
        ours.setblocking(False)
        theirs.settimeout(TIMEOUT)
    conns = [LineConnection(ours, f"pair{ours.fileno()}", Outbox(ours, 1 << 20, reader.writer), 4096) for ours, _ in pairs]  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="socketlab.chat"):
        reader.add(conns[:2], join=True)
        for _, theirs in pairs[:2]:
            assert theirs.recv(100) == b""  # closed, not welcomed
        reader.add(conns[2:], join=True)
        assert read_lines(pairs[2][1], 1)[0].startswith("* welcome user")
    assert calls == [2, 1]
    assert "Cannot welcome 2 new client(s): RuntimeError: a bug in the welcome" in caplog.text
    for _ours, theirs in pairs:
        theirs.close()


def test_a_batch_handed_over_while_the_waker_is_drained_is_welcomed(loop) -> None:
    """A hand-over that lands between the reader's wake-up and its drain of the waker is served at once.

    The race, made certain: the first drain hands over a second batch just before it reads the
    waker, so that batch's wake-up is absorbed by that very drain. A reader that looks at its
    queues before draining would then sleep in select() with the batch unseen.
    """
    host, reader, _selector = loop
    pairs = [socket.socketpair() for _ in range(2)]
    for ours, theirs in pairs:
        ours.setblocking(False)
        theirs.settimeout(TIMEOUT)
    first, second = [
        [LineConnection(ours, f"pair{ours.fileno()}", Outbox(ours, 1 << 20, reader.writer), 4096)]  # type: ignore[attr-defined]
        for ours, _ in pairs
    ]
    waker = reader._waker
    real_drain = waker.drain
    handed_over = threading.Event()

    def drain_with_a_hand_over_in_the_way() -> None:
        if not handed_over.is_set():
            handed_over.set()
            reader.add(second, join=True)
        real_drain()

    waker.drain = drain_with_a_hand_over_in_the_way  # type: ignore[method-assign]
    reader.add(first, join=True)
    assert handed_over.wait(TIMEOUT)
    pairs[1][1].settimeout(2.0)  # served in the same wake-up, not after the next event
    assert read_lines(pairs[1][1], 1)[0].startswith("* welcome user")
    assert read_lines(pairs[0][1], 1)[0].startswith("* welcome user")
    for _ours, theirs in pairs:
        theirs.close()
