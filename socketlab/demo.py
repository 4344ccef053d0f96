"""``socketlab demo``: the tutorial, run on loopback with a narrated transcript.

Each part starts its server in this process on a free port, drives clients
step by step and waits for each server event before narrating the next step,
so the transcript reads in the same order every time.
"""

from __future__ import annotations

import logging
import socket
import queue
import threading
from typing import Callable

from socketlab.addresses import format_address

Echo = Callable[[str], None]

#: How long the demo waits for any one event before giving up.
STEP_TIMEOUT = 5.0


class ServerLog(logging.Handler):
    """Collects a server's log messages so the demo can narrate them in order."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: queue.Queue[str] = queue.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.put(record.getMessage())

    def expect(self, echo: Echo, prefix: str) -> str:
        """Narrate server messages up to the first one starting with *prefix*."""
        while True:
            try:
                message = self.messages.get(timeout=STEP_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"demo: the server never logged {prefix!r}") from None
            echo(f"  [server] {message}")
            if message.startswith(prefix):
                return message


def demo_logger(name: str) -> tuple[logging.Logger, ServerLog]:
    """A private logger whose messages go only to a ServerLog."""
    logger = logging.getLogger(f"socketlab.demo.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    collector = ServerLog()
    logger.handlers[:] = [collector]
    return logger, collector


def tcp_part(echo: Echo) -> None:
    """TCP: the welcome server and a client that sends one line and ends."""
    from socketlab.tcp import WelcomeServer, connect

    echo("== TCP: a welcome server and a client ==")
    logger, log = demo_logger("tcp")
    with WelcomeServer(("127.0.0.1", 0), logger=logger) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        log.expect(echo, "Server is listening")
        host, port = server.server_address[:2]
        with connect(host, port) as sock:
            echo(f"  [client] Connected to Server {format_address((host, port))}")
            log.expect(echo, "Client connected")
            reader = sock.makefile("rb")
            welcome = reader.readline().decode()
            echo(f"  [client] Get message from Server: {welcome.rstrip()}")
            echo("  [client] sends 'Hello Socket Server' and ends its side (socket.end())")
            sock.sendall(b"Hello Socket Server\n")
            sock.shutdown(socket.SHUT_WR)
            log.expect(echo, "Client disconnected")
            rest = reader.read()
            echo(f"  [client] Disconnected from Server ({len(rest)} more bytes)")
        server.shutdown()
        log.expect(echo, "Server closed")
        thread.join()


def run_demo(echo: Echo) -> None:
    """Run every part of the demo, writing the transcript through *echo*."""
    tcp_part(echo)
