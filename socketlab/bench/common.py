"""What every chat relay scenario of ``socketlab bench chat`` shares: the server under test
(:class:`OwnServer`, :class:`Targets`), how clients connect and settle (:class:`ClientKind`,
:func:`open_clients`, :func:`drain_until_quiet`), and the CPU and memory readings of a process.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from socketlab.bench.joins import confirm_joins
from socketlab.bench.transfer import SOCKETLAB, listening_port
from socketlab.bench.wire import ROOM, BenchClient, receive

#: A run ends this long after the last copy arrived, if copies are still missing.
QUIET_END = 2.0
#: Before the first message, wait until the server has been quiet this long (joins settle).
SETTLE_QUIET = 0.3
SETTLE_LIMIT = 10.0

Progress = Callable[[str], None]


def rss_kib(pid: int | Sequence[int]) -> int:
    """Resident memory of *pid* (or the sum over several) in KiB (Linux), 0 when unknown."""
    if not isinstance(pid, int):
        return sum(rss_kib(one) for one in pid)
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | Sequence[int] | None = None) -> float:
    """CPU time (user + system) used so far by *pid* (or the sum over several), or by this process."""
    return sum(cpu_times(pid))


def cpu_times(pid: int | Sequence[int] | None = None) -> tuple[float, float]:
    """CPU time used so far by *pid* (or the sum over several), or by this process: (user, system) seconds.

    System time is the kernel's work for the process (its sends, receives and waits), user time its own code.
    """
    if pid is not None and not isinstance(pid, int):
        times = [cpu_times(one) for one in pid]
        return sum(user for user, _ in times), sum(system for _, system in times)
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


class OwnServer:
    """A ``socketlab chat serve`` subprocess on a free port (and a free web port with *web*)."""

    def __init__(self, extra: list[str] | None = None, web: bool = False) -> None:
        self.proc = subprocess.Popen(
            SOCKETLAB + ["chat", "serve", "--port", "0", "-q", *(["--web", "0"] if web else []), *(extra or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.port = listening_port(self.proc, "socketlab chat serve")
        self.web_port = listening_port(self.proc, "socketlab chat serve --web", "Web chat on") if web else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class ClientKind:
    """How the benchmark's clients talk to the server: lines over TCP, in WebSocket messages, or as
    Socket.IO ``chat message`` events in *room* (over WebSocket: *web* too); TLS or not."""

    web: bool = False
    tls: ssl.SSLContext | None = None
    socketio: bool = False
    room: str = ROOM


PLAIN = ClientKind()


@dataclass(frozen=True)
class Targets:
    """The servers clients connect to, round-robin: client *i* of a call goes to ``addresses[(start + i) % n]``."""

    addresses: tuple[tuple[str, int], ...]
    start: int = 0

    @classmethod
    def of(cls, target: "tuple[str, int] | Targets") -> "Targets":
        return target if isinstance(target, Targets) else cls((target,))

    def shifted(self, count: int) -> "Targets":
        """The same servers, for clients numbered after *count* more."""
        return Targets(self.addresses, self.start + count)

    def pick(self, index: int) -> tuple[str, int]:
        return self.addresses[(self.start + index) % len(self.addresses)]

    @property
    def first(self) -> tuple[str, int]:
        return self.addresses[0]


def open_clients(
    target: "tuple[str, int] | Targets", count: int, rcvbuf: int | None = None, kind: ClientKind = PLAIN
) -> list[Any]:
    """Connect *count* clients of *kind* (round-robin over several targets); stops early (returning fewer) when refused.

    Socket.IO clients are returned once they are in their room (see
    :mod:`socketlab.bench.joins`); those that are not within its limit are
    closed and left out.
    """
    targets = Targets.of(target)
    socks: list[Any] = []
    for index in range(count):
        address = targets.pick(index)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:  # out of file descriptors: the caller reports how many connected
            break
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)
            sock.connect(address)
            room = kind.room if kind.socketio else None
            client = BenchClient(sock, address, kind.web, kind.tls, room) if kind != PLAIN else sock
        except OSError:
            sock.close()
            break
        sock.setblocking(False)
        socks.append(client)
    return confirm_joins(socks) if kind.socketio else socks


def read_ready(sock: socket.socket, size: int) -> bytes | None:
    """One non-blocking recv(): the bytes, None if nothing is ready, b"" if closed or failed."""
    try:
        return receive(sock, size) if isinstance(sock, socket.socket) else sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def close_with_reset(sock: socket.socket) -> None:
    """Close *sock* with an RST (SO_LINGER 0), as a client's kernel does when its network went away: no goodbye."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # closed already, or not a socket that lingers
        pass
    sock.close()


def why_not(address: tuple[str, int]) -> str:
    """': <reason>' when one more connection to *address* fails now, else ''."""
    from socketlab.errors import AddressError
    from socketlab.tcp import connect

    try:
        connect(*address, timeout=5).close()
    except AddressError as error:
        return f" ({error})"
    return ""


def drain_until_quiet(socks: list[Any], quiet: float, limit: float) -> int:
    """Read and discard until nothing arrived for *quiet* seconds; return open sockets."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    closed = set()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        events = selector.select(quiet)
        if not events:
            break
        for key, _ in events:
            if read_ready(key.fileobj, 1 << 16) == b"":  # type: ignore[arg-type]
                selector.unregister(key.fileobj)
                closed.add(key.fileobj)
    selector.close()
    return len(socks) - len(closed)


def as_dict(result: Any) -> dict[str, Any]:
    return asdict(result)
