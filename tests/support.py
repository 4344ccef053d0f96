"""Shared helpers for the tests: one timeout constant, servers, CLI processes."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

#: Every wait in the suite is bounded by this many seconds.
TIMEOUT = 10.0

CLI = [sys.executable, "-m", "socketlab"]


def has_ipv6() -> bool:
    """True when this machine can bind ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """Poll *predicate* until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_cli(
    *args: str, input: bytes | None = None, timeout: float = TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``socketlab ARGS`` to completion and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(CLI + list(args), input=input, capture_output=True, timeout=timeout, env=full_env)


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run *server*.serve_forever() on a thread; always shut down and join."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "serve_forever did not return"


class LineReader:
    """Reads a stream's lines on a thread so tests can wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        except (ValueError, OSError):  # the test closed the stream under the read: it has ended
            pass
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Return the match of the first new line matching regex *pattern*."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matched {pattern!r}; saw {self.seen[-20:]!r}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream ended before {pattern!r}; saw {self.seen[-20:]!r}")
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def rest(self, timeout: float = TIMEOUT) -> list[str]:
        """All remaining lines until the stream ends."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                return out
            self.seen.append(line)
            out.append(line)


class CliServer:
    """A ``socketlab`` server command run as a user runs it, in a subprocess."""

    def __init__(self, *args: str, ready: str = r"listening on (?:.*):(\d+)$", env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            CLI + list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.out = LineReader(self.proc.stdout)
        self.port = int(self.out.wait_for(ready).group(1))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send *sig*; return the exit status and seconds until exit."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        status = self.proc.wait(TIMEOUT)
        return status, time.monotonic() - start

    def __enter__(self) -> "CliServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def recv_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Read from *sock* until the peer closes; fail after *timeout*."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recv_line(sock_file: Any) -> bytes:
    """One line from a socket's makefile('rb'), failing on EOF."""
    line = sock_file.readline()
    assert line, "connection closed while a line was expected"
    return line


class Peer:
    """A raw line client, as nc or telnet would be: bytes in, lines out."""

    def __init__(self, port: int, host: str = "127.0.0.1", rcvbuf: int | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((host, port))
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        """The next line, without its newline; fails on EOF or timeout."""
        raw = self.file.readline()
        assert raw.endswith(b"\n"), f"connection ended; got {raw!r}"
        return raw[:-1].decode()

    def lines(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def until(self, wanted: str) -> list[str]:
        """Lines up to and including *wanted*."""
        seen = []
        while True:
            seen.append(self.line())
            if seen[-1] == wanted:
                return seen

    def rest(self) -> bytes:
        """Everything until the server closes."""
        return self.file.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def rss_kib(pid: int) -> int:
    """Resident memory of process *pid* in KiB (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_until_closed(sock: socket.socket) -> bytes:
    """What arrives until the server closes the connection; a reset counts as a close."""
    sock.settimeout(TIMEOUT)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


class Browser:
    """A chat client on a WebSocket (websockets' sync client connection): lines out as messages, lines in."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pending: list[str] = []

    def send(self, text: str) -> None:
        self.conn.send(text)

    def line(self) -> str:
        """The next line; every message from the server must be whole lines."""
        while not self.pending:
            message = self.conn.recv(timeout=TIMEOUT)
            assert isinstance(message, str) and message.endswith("\n"), repr(message)
            self.pending += message.split("\n")[:-1]
        return self.pending.pop(0)

    def lines(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def until(self, wanted: str) -> list[str]:
        seen = [self.line()]
        while seen[-1] != wanted:
            seen.append(self.line())
        return seen

    def closed(self) -> tuple[list[str], Any]:
        """The lines left, then the close: (lines, the ConnectionClosed raised)."""
        from websockets.exceptions import ConnectionClosed

        lines = self.pending
        self.pending = []
        while True:
            try:
                message = self.conn.recv(timeout=TIMEOUT)
            except ConnectionClosed as closed:
                return lines, closed
            assert isinstance(message, str)
            lines += message.split("\n")[:-1]
