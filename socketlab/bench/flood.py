"""The chat under abuse: what ordinary members and newcomers feel while others flood.

Two measurements for ``socketlab bench chat --scenario flood``:

- :func:`run_abuse`: ``abusers`` clients, from their own address (127.0.0.2
  by default), each connecting ``pace`` times a second and sending junk flat
  out -- random bytes, 70 KB lines, commands, escape sequences -- then
  leaving, every other one with a reset. Meanwhile two members in a room of
  their own chat at a person's pace, and a newcomer connects every half
  second. Reports the members' round trips, the slowest welcome, and how
  many newcomers were refused.
- :func:`flooding_client`: one client sending ordinary lines flat out, run
  beside a fanout measurement (see :func:`socketlab.bench.chat.run_fanout`).

Abusers and flooders run in processes of their own: the measuring side
shares no interpreter lock with them. Traffic goes to loopback only, and
every loop ends by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from socketlab.bench.common import close_with_reset
from socketlab.bench.tally import percentile
from socketlab.errors import BenchError

#: Korean text wrapped in a colour escape, a title escape and a right-to-left override.
TRICKY_TEXT = "\x1b[31m안녕하세요 \u202eevil\u202c \x1b]0;pwn\x07 채팅방\x1b[0m\n".encode()


def abuse_script(rng: random.Random) -> list[bytes]:
    """One abuser's visit, as the writes it makes: junk, commands, a long unterminated line, tricky text."""
    writes = [rng.randbytes(rng.randint(1, 65536)) for _ in range(rng.randint(1, 30))]
    writes.append(b"\n/join r%d\n" % rng.randint(0, 999))  # mostly a room of its own: no notices reach it
    writes.append(b"/nick " + rng.randbytes(rng.randint(1, 40)).replace(b"\n", b"") + b"\n")
    writes.append(b"x" * rng.randint(4000, 70000))  # no newline: the next write continues it
    writes.append(b"\n" + TRICKY_TEXT * rng.randint(1, 20))
    writes.append(b"/msg user1 " + b"z" * rng.randint(1, 3000) + b"\n/who\n/rooms\n")
    return writes


#: The two members' pace: each says this many lines a second (under the default --max-rate 20).
MEMBER_RATE = 10.0
#: A newcomer connects this often during the abuse.
NEWCOMER_EVERY = 0.5


@dataclass
class AbuseResult:
    abusers: int
    seconds: float
    abuser_connections: int
    abuser_bytes: int
    round_trips: int
    round_trip_ms: dict[str, float] = field(default_factory=dict)
    newcomers: int = 0
    newcomers_refused: int = 0
    slowest_welcome_ms: float = 0.0
    #: The server's resident memory before the abuse and at its peak (sampled every half second), if its PID is known.
    server_rss_kib: dict[str, int] = field(default_factory=dict)


def _abuse(address: tuple[str, int], count: int, seconds: float, pace: float, source: str, link: Any) -> None:
    """Child process: *count* abuser threads for *seconds*; sends (bytes, connections) back."""
    end = time.monotonic() + seconds
    sent, connections = [0], [0]
    lock = threading.Lock()

    def abuse(seed: int) -> None:
        rng = random.Random(seed)
        due = time.monotonic()
        while time.monotonic() < end:
            due += 1 / pace
            time.sleep(max(0.0, due - time.monotonic()))  # pacing, not synchronisation
            try:
                sock = socket.create_connection(address, timeout=0.5, source_address=(source, 0))
            except OSError:
                continue
            total = 0
            try:
                for data in abuse_script(rng):
                    sock.sendall(data)
                    total += len(data)
                sock.setblocking(False)
                while sock.recv(65536):  # read whatever has come back, then go
                    pass
            except OSError:
                pass
            close_with_reset(sock) if seed % 2 else sock.close()
            with lock:
                sent[0] += total
                connections[0] += 1

    threads = [threading.Thread(target=abuse, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5)
    link.send((sent[0], connections[0]))
    link.close()
    os._exit(0)


class Member:
    """An ordinary chat member (blocking socket, line reader)."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise ConnectionError("the server closed the connection")
        return raw.decode("utf-8", "replace").rstrip("\n")

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def wait_for(self, ending: str, limit: int = 10000) -> None:
        """Read until a line ending with *ending* (other lines -- spam, notices -- are skipped)."""
        for _ in range(limit):
            if self.line().endswith(ending):
                return
        raise BenchError(f"{ending!r} never arrived")

    def close(self) -> None:
        self.sock.close()


def _join(address: tuple[str, int], room: str) -> tuple[Member, Member]:
    first, second = Member(address), Member(address)
    for member in (first, second):
        member.wait_for("(type /help)")
        member.say(f"/join {room}")
        member.wait_for(f"you are in {room}")
    return first, second


def run_abuse(
    address: tuple[str, int],
    *,
    abusers: int = 40,
    seconds: float = 20.0,
    pace: float = 30.0,
    source: str = "127.0.0.2",
    server_pid: Any = None,
) -> AbuseResult:
    """Flood the chat at *address* with *abusers* for *seconds*; measure two members, the newcomers and
    (given *server_pid*, one PID or several) the server's memory."""
    from socketlab.bench.chat import rss_kib

    alice, bob = _join(address, "calm")
    rss_before = peak_rss = rss_kib(server_pid) if server_pid else 0
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_abuse, args=(address, abusers, seconds, pace, source, child), daemon=True)
    process.start()
    child.close()
    times: list[float] = []
    welcomes: list[float] = []
    refused = 0
    start = next_line = next_newcomer = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            next_line += 1 / (2 * MEMBER_RATE)
            time.sleep(max(0.0, next_line - time.monotonic()))  # a person's pace
            speaker, listener = (alice, bob) if len(times) % 2 else (bob, alice)
            text = f"ping {len(times)}"
            sent = time.monotonic()
            speaker.say(text)
            listener.wait_for(f"> {text}")
            times.append(time.monotonic() - sent)
            if time.monotonic() >= next_newcomer:
                next_newcomer += NEWCOMER_EVERY
                began = time.monotonic()
                newcomer = Member(address)
                first = newcomer.line()
                if first.startswith("* welcome"):
                    welcomes.append(time.monotonic() - began)
                else:
                    refused += 1
                newcomer.close()
                if server_pid:
                    peak_rss = max(peak_rss, rss_kib(server_pid))
        if not parent.poll(seconds + 10):
            raise BenchError("the abusers did not report")
        sent_bytes, connections = parent.recv()
    finally:
        process.join(1)
        if process.is_alive():
            process.kill()
        alice.close()
        bob.close()
    times.sort()
    return AbuseResult(
        abusers=abusers,
        seconds=seconds,
        abuser_connections=connections,
        abuser_bytes=sent_bytes,
        round_trips=len(times),
        round_trip_ms={name: round(percentile(times, q) * 1000, 3) for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        newcomers=len(welcomes) + refused,
        newcomers_refused=refused,
        slowest_welcome_ms=round(max(welcomes, default=0.0) * 1000, 3),
        server_rss_kib={"before": rss_before, "peak": peak_rss} if server_pid else {},
    )


def _flood(address: tuple[str, int], seconds: float, link: Any) -> None:
    """Child process: one client sending ordinary chat lines flat out for *seconds*."""
    sock = socket.create_connection(address, timeout=5)
    sock.settimeout(0.5)
    burst = b"".join(b"flood line %d, nothing to see\n" % i for i in range(500))
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        try:
            sent += sock.send(burst)
        except socket.timeout:
            continue
        except OSError:
            break
    sock.close()
    link.send(sent)
    link.close()
    os._exit(0)


def flooding_client(address: tuple[str, int], seconds: float) -> tuple[Any, Any]:
    """Start one flat-out sender in a process of its own; returns (process, link) -- its link reports bytes sent."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_flood, args=(address, seconds, child), daemon=True)
    process.start()
    child.close()
    return process, parent
