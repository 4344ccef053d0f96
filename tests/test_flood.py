"""Flood control: a client over its budget is read later, loses nothing, and slows nobody else."""

from __future__ import annotations

import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from socketlab.chat.flood import DEFAULT_BYTE_RATE, FloodGate
from socketlab.chat.server import ChatServer
from socketlab.lines import LineTooLong
from support import TIMEOUT, CliServer, serving

pytestmark = pytest.mark.timeout(60)


# -- the gate, sans-IO ---------------------------------------------------------


def test_a_burst_of_twice_the_rate_passes_at_once_the_rest_is_held_in_order() -> None:
    """Rate 10: 20 lines pass at once, the 21st onwards wait, nothing is dropped or reordered."""
    gate = FloodGate(10, now=0.0)
    lines = [b"%d" % i for i in range(50)]
    assert gate.admit(lines, size=100, now=0.0) == lines[:20]
    assert list(gate.held) == lines[20:]
    assert gate.resume_at(0.0) == pytest.approx(0.1)


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

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

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
    flooder, = join_room(port, "noise", 1)
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


#: Abusers, run in a process of their own, from 127.0.0.2: connect, send junk flat out (random
#: bytes, 70 KB lines, commands, escape sequences), leave -- odd-numbered ones with a reset -- and
#: come back, 30 times a second each.
ABUSERS = r"""
import os, random, socket, struct, sys, threading, time
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
payloads = [os.urandom(4096), b"y" * 70000 + b"\n", b"/nick x\n/join a\n/who\n/rooms\n" * 50,
            b"\x1b[2J\x1b]0;pwn\x07\n" * 100, b"/msg user1 " + b"z" * 3000 + b"\n"]
end = time.monotonic() + seconds
sent, connections = [0], [0]
def abuse(seed):
    rng = random.Random(seed)
    due = time.monotonic()
    while time.monotonic() < end:
        due += 1 / 30  # 30 connections a second each, the pace of the flood this models
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.5, source_address=("127.0.0.2", 0))
            connections[0] += 1
            for _ in range(rng.randint(1, 20)):
                data = rng.choice(payloads)
                sock.sendall(data)
                sent[0] += len(data)
            if seed % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass
threads = [threading.Thread(target=abuse, args=(i,)) for i in range(count)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(sent[0], connections[0])
"""


def test_abusers_do_not_keep_newcomers_out_or_slow_the_room() -> None:
    """Six abusers for 3 s -- 180 connections a second, random bytes, 70 KB lines, commands,
    escapes, half of them leaving with a reset -- while newcomers are welcomed within 1 s and two
    members chat with p99 < 50 ms."""
    # The server and the abusers in processes of their own, as in life: no GIL shared with the measurement.
    with CliServer("chat", "serve", "--port", "0", "-q", "--max-clients", "200") as server:
        port = server.port
        alice, bob = join_room(port, "calm", 2)
        abusers = subprocess.Popen([sys.executable, "-c", ABUSERS, str(port), "6", "3"], stdout=subprocess.PIPE)
        try:
            times: list[float] = []
            welcomes: list[float] = []
            next_ping = time.monotonic()
            while abusers.poll() is None:
                # A person's pace, under the default 20 lines/s: each of the two says 10 lines a second.
                next_ping += 0.05
                time.sleep(max(0.0, next_ping - time.monotonic()))
                speaker, listener = (alice, bob) if len(times) % 2 else (bob, alice)
                times.append(round_trip(speaker, listener, f"ping {len(times)}"))
                if len(times) % 20 == 0:
                    start = time.monotonic()
                    newcomer = Client(port)
                    assert newcomer.line().startswith("* welcome"), "a newcomer was refused"
                    welcomes.append(time.monotonic() - start)
                    newcomer.close()
            sent, connections = map(int, abusers.communicate(timeout=TIMEOUT)[0].split())
        finally:
            if abusers.poll() is None:
                abusers.kill()
        assert sent > 10_000_000 and connections > 500, (sent, connections)  # the abuse was real
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        assert len(times) > 50, len(times)
        assert p99 < 0.05, (p99, times[-5:])
        assert welcomes and max(welcomes) < 1.0, welcomes
