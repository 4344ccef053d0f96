"""A real redis-server for the cluster tests: a subprocess in a temporary directory, persistence off."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from support import TIMEOUT, wait_until

REDIS_SERVER = shutil.which("redis-server")

#: Longest Unix socket path Linux accepts (sun_path holds 108 bytes, NUL included).
MAX_SOCKET_PATH = 107


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` on a Unix socket in *directory* (and on a TCP port with ``tcp=True``).

    ``url`` is the ``unix://`` URL, ``tcp_url`` the ``redis://`` one. ``start()``
    waits until it answers PING; ``stop()`` ends it (its data goes with it:
    no RDB, no AOF), and ``start()`` again brings it back empty at the same
    Unix socket; ``pause()`` and ``resume()`` freeze and thaw it (SIGSTOP, SIGCONT).
    """

    def __init__(self, directory: Path, tcp: bool = False) -> None:
        self.directory = directory
        self.socket_path = str(directory / "redis.sock")
        if len(self.socket_path) > MAX_SOCKET_PATH:
            raise ValueError(f"Unix socket path too long: {self.socket_path}")
        self.url = f"unix://{self.socket_path}"
        self.port = 0
        self.tcp = tcp
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def tcp_url(self) -> str:
        assert self.port, "started without tcp=True"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=TIMEOUT)

    def start(self) -> "RedisServer":
        """Start it; a TCP port taken between picking and binding is picked again."""
        for _attempt in range(5):
            if self.tcp and not self.port:
                self.port = free_port()
            if self._start_once():
                return self
            self.port = 0  # lost the race for the port: pick another
        raise AssertionError(f"redis-server did not start; its log:\n{self.log.read_text()}")

    def _start_once(self) -> bool:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
        ]
        self.proc = launch(args, self.client(), "redis-server")
        return self.proc is not None

    def stop(self) -> None:
        """End the server (SIGCONT first, in case it was paused) and wait for it."""
        proc, self.proc = self.proc, None
        end(proc)

    def listeners(self, channel: str) -> int:
        """Subscribers of the sharded *channel* (PUBSUB SHARDNUMSUB)."""
        client = self.client()
        try:
            return int(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])
        finally:
            client.close()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def launch(args: list[str], probe: Any, what: str) -> subprocess.Popen[bytes] | None:
    """Start ``redis-server`` with *args* and wait until *probe* (a client, closed here) answers PING;
    None when it exited instead (its port taken: the caller picks another)."""
    import redis

    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if proc.poll() is not None:
            return True  # it exited: decided below
        try:
            return bool(probe.ping())
        except (redis.RedisError, OSError):
            return False

    try:
        wait_until(answers, what=f"{what} to answer PING")
    except BaseException:
        end(proc)
        raise
    finally:
        probe.close()
    return None if proc.poll() is not None else proc


def end(proc: subprocess.Popen[bytes] | None) -> None:
    """End *proc* (SIGCONT first, in case it was paused) and wait for it; killed if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(TIMEOUT)
