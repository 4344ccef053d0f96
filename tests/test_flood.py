"""Flood control: a client over its budget is read later, loses nothing, and slows nobody else."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Iterator

import pytest

from socketlab.bench.flood import run_abuse
from socketlab.chat.flood import DEFAULT_BYTE_RATE, NOTICE_INTERVAL, FloodGate
from socketlab.chat.server import ChatServer
from socketlab.lines import LineTooLong
from support import TIMEOUT, CliServer, serving, wait_until

pytestmark = pytest.mark.timeout(60)


# -- the gate, sans-IO ---------------------------------------------------------


def test_a_burst_of_twice_the_rate_passes_at_once_the_rest_is_held_in_order() -> None:
    """Rate 10: 20 lines pass at once, the 21st onwards wait, nothing is dropped or reordered."""
    gate = FloodGate(10, now=0.0)
    lines = [b"%d" % i for i in range(50)]
    assert gate.admit(lines, size=100, now=0.0) == lines[:20]
    assert list(gate.held) == lines[20:]
    assert gate.resume_at(0.0) == pytest.approx(0.1)


def test_a_rate_under_half_a_line_a_second_still_lets_lines_through() -> None:
    """--max-rate 0.25: a burst of twice the rate would be half a line, which no line fits (the held ones
    waited forever, and the reader was told to resume at math.inf); the burst is one line at least."""
    gate = FloodGate(0.25, now=0.0)
    assert gate.admit([b"a", b"b"], size=4, now=0.0) == [b"a"]
    assert gate.resume_at(0.0) == pytest.approx(4.0)
    assert gate.release(4.0) == [b"b"]


def test_held_lines_come_out_at_the_rate() -> None:
    """After 0.35 s at 10 lines/s, three more lines are released, in order."""
    gate = FloodGate(10, now=0.0)
    lines = [b"%d" % i for i in range(25)]
    gate.admit(lines, size=75, now=0.0)
    assert gate.release(0.35) == lines[20:23]
    assert gate.resume_at(0.35) == pytest.approx(0.4)
    assert gate.release(10.0) == lines[23:]
    assert gate.resume_at(10.0) is None and not gate.held


def test_bytes_without_newlines_run_up_a_debt_that_pauses_reading() -> None:
    """8 MiB/s with a 16 MiB burst: 24 MiB at once means 1 s without reading."""
    gate = FloodGate(10, now=0.0)
    assert gate.budget.rate == DEFAULT_BYTE_RATE == 8 * 1024 * 1024
    assert gate.admit([LineTooLong(4096)], size=3 * DEFAULT_BYTE_RATE, now=0.0) == [LineTooLong(4096)]
    assert gate.resume_at(0.0) == pytest.approx(1.0)
    assert gate.resume_at(1.0) is None


def test_the_budget_refills_only_up_to_the_burst() -> None:
    """An hour of silence still allows only twice the rate at once."""
    gate = FloodGate(5, now=0.0)
    lines = [b"x"] * 40
    assert len(gate.admit(lines, size=80, now=3600.0)) == 10


def test_a_held_back_client_is_told_when_first_held_then_at_most_every_notice_interval() -> None:
    gate = FloodGate(10, now=0.0)
    gate.admit([b"a"] * 25, size=50, now=0.0)
    assert gate.notice_due(0.0)
    assert gate.notice() == b"! sending too fast: 5 lines held back, let through at 10 a second\n"
    assert not gate.notice_due(0.5)
    assert not gate.notice_due(0.0 + NOTICE_INTERVAL - 0.01)
    assert gate.notice_due(NOTICE_INTERVAL)
    gate.release(10.0)
    assert gate.notice() == b"! sending too fast: 0 lines held back, let through at 10 a second\n"


def test_a_gate_needs_a_positive_rate() -> None:
    """Rate 0 means no gate at all, not a gate that never opens."""
    with pytest.raises(ValueError):
        FloodGate(0, now=0.0)


# -- the server ------------------------------------------------------------------


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        raw = self.file.readline()
        assert raw, "connection closed"
        return raw.decode().rstrip("\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def limited() -> Iterator[ChatServer]:
    with serving(ChatServer(("127.0.0.1", 0), max_rate=100)) as server:
        yield server


def join_room(port: int, room: str, count: int) -> list[Client]:
    clients = [Client(port) for _ in range(count)]
    for client in clients:
        while not client.line().startswith("* welcome"):
            pass
        client.send(f"/join {room}\n".encode())
        while client.line() != f"* you are in {room}":
            pass
    for index, client in enumerate(clients):
        for _ in range(count - 1 - index):
            client.line()  # "* userN joined ROOM" for each later member
    return clients


def round_trip(a: Client, b: Client, text: str) -> float:
    """Seconds for *text* from *a* to reach *b* (skipping other lines b gets meanwhile, e.g. /msg spam)."""
    start = time.monotonic()
    a.send(f"{text}\n".encode())
    for _ in range(1000):
        line = b.line()
        if line.endswith(f"> {text}"):
            return time.monotonic() - start
        assert text not in line, line
    raise AssertionError(f"{text!r} never arrived")


def test_a_flooder_loses_nothing_and_is_slowed_to_its_rate(limited: ChatServer) -> None:
    """300 lines at once at 100 lines/s (burst 200): all 300 arrive in order, the last after about 1 s."""
    flooder, reader = join_room(limited.server_address[1], "flood", 2)
    start = time.monotonic()
    flooder.send(b"".join(b"line %d\n" % i for i in range(300)))
    got = [reader.line() for _ in range(300)]
    elapsed = time.monotonic() - start
    assert got == [f"<user1> line {i}" for i in range(300)]
    assert 0.8 < elapsed < 5, elapsed


def test_others_chat_undelayed_while_a_client_floods(limited: ChatServer) -> None:
    """While one client pours lines and bytes, two others in their own room still round-trip fast."""
    port = limited.server_address[1]
    (flooder,) = join_room(port, "noise", 1)
    alice, bob = join_room(port, "quiet", 2)
    stop = threading.Event()

    def flood() -> None:
        junk = b"x" * 70000 + b"\n" + b"".join(b"spam %d\n" % i for i in range(2000))
        try:
            while not stop.is_set():
                flooder.send(junk)
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        times = [round_trip(alice, bob, f"hi {i}") for i in range(50)]
    finally:
        stop.set()
        flooder.sock.shutdown(socket.SHUT_RDWR)  # wakes the flood thread's blocked sendall()
        thread.join(TIMEOUT)
        flooder.close()
    assert not thread.is_alive()
    assert max(times) < 0.25, times
    assert statistics.median(times) < 0.05, times


def test_abusers_do_not_keep_newcomers_out_or_slow_the_room() -> None:
    """Six abusers from 127.0.0.2 for 3 s -- 180 connections a second, random bytes, 70 KB lines,
    commands, escapes, half of them leaving with a reset -- while every newcomer is welcomed within
    1 s and two members chatting at a person's pace see p99 < 50 ms (the bench's flood scenario, smaller)."""
    # The server in a process of its own, as people run it; run_abuse forks the abusers.
    with CliServer("chat", "serve", "--port", "0", "-q", "--max-clients", "200") as server:
        result = run_abuse(("127.0.0.1", server.port), abusers=6, seconds=3.0)
    assert result.abuser_bytes > 10_000_000 and result.abuser_connections > 300, result  # the abuse was real
    assert result.round_trips > 40, result
    assert result.round_trip_ms["p99"] < 50, result
    assert result.newcomers >= 5 and result.newcomers_refused == 0, result
    assert result.slowest_welcome_ms < 1000, result


def test_a_client_held_back_by_its_rate_is_not_idle() -> None:
    """A flooder whose held lines outlast --idle-timeout is not dropped as idle while they are released
    (a silent member is, meanwhile)."""
    with serving(ChatServer(("127.0.0.1", 0), max_rate=2, idle_timeout=1.0)) as server:
        flooder, silent = join_room(server.server_address[1], "slow", 2)
        flooder.send(b"".join(b"line %d\n" % i for i in range(12)))  # 4 at once, then 2 a second: 4 s
        wait_until(lambda: [m.name for m in server.hub.members] == ["user1"], what="the silent member dropped")
        deadline = time.monotonic() + 1.5  # an observation window past the idle timeout, not a sync
        while time.monotonic() < deadline:
            assert [m.name for m in server.hub.members] == ["user1"], "the flooder was dropped as idle"
            time.sleep(0.05)
        flooder.sock.settimeout(0.1)
        try:
            early = flooder.sock.recv(4096)
        except TimeoutError:
            early = b""
        assert b"! idle for" not in early, early
        silent.close()


def _flood_and_leave(port: int, room: str, data: bytes) -> None:
    """A flooder that joins *room*, pours *data* in (as far as the server takes it) and closes.

    Having read everything, it closes with a FIN, not a reset: the FIN waits in its kernel behind the
    bytes the server has not read yet, so the server cannot see the departure by waiting for it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(f"/join {room}\n".encode())
    received = b""
    while f"* you are in {room}\n".encode() not in received:
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        received += chunk
    sock.settimeout(0.3)
    try:
        sock.sendall(data)
    except TimeoutError:
        pass  # the server stopped reading: flood control
    sock.close()


def test_departed_flooders_free_their_slots_while_their_lines_are_held() -> None:
    """Flooders that left with lines held (and megabytes unread) do not keep a newcomer out."""
    flood = b"x\n" * 2_000_000  # 100,000 s of lines at 20 a second
    with serving(ChatServer(("127.0.0.1", 0), max_rate=20, max_clients=4)) as server:
        port = server.server_address[1]
        for index in range(4):
            _flood_and_leave(port, f"own{index}", flood)  # a room of its own: no notices reach it
        left = time.monotonic()
        wait_until(lambda: server.connection_count == 0, what="the departed flooders' slots freed")
        assert time.monotonic() - left < 1.5  # NOTICE_INTERVAL, and a round trip
        newcomer = Client(port)
        assert newcomer.line().startswith("* welcome")
        newcomer.close()


def test_a_client_that_only_ended_its_side_keeps_its_held_lines() -> None:
    """A flooder that sends 600 lines and half-closes at once loses none of them: all reach the room, in order."""
    with serving(ChatServer(("127.0.0.1", 0), max_rate=100)) as server:
        sender, listener = join_room(server.server_address[1], "half", 2)
        sender.send(b"".join(b"line %d\n" % i for i in range(600)))  # 200 at once, then 100 a second
        sender.sock.shutdown(socket.SHUT_WR)
        got = [listener.line() for _ in range(600)]
        assert got == [f"<user1> line {i}" for i in range(600)]
        assert listener.line() == "* user1 left half (disconnected)"
        sender.close()
        listener.close()
