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
        host, port = "127.0.0.1", server.server_address[1]
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


class DemoChatter:
    """A chat client whose every line, sent or received, is narrated."""

    def __init__(self, echo: Echo, label: str, port: int) -> None:
        from socketlab.chat.client import ChatClient

        self.echo = echo
        self.label = label
        self.client = ChatClient.connect("127.0.0.1", port)
        self.client.sock.settimeout(STEP_TIMEOUT)
        self._lines = self.client.lines()

    def say(self, text: str, log: ServerLog | None = None, server_says: str = "") -> None:
        """Send *text*; with *log*, narrate the server up to *server_says*."""
        self.echo(f"  [{self.label}] > {text}")
        self.client.send_line(text)
        if log is not None:
            log.expect(self.echo, server_says)

    def hears(self, count: int = 1) -> None:
        for _ in range(count):
            line = next(self._lines, None)
            if line is None:
                raise RuntimeError(f"demo: {self.label} was disconnected")
            self.echo(f"  [{self.label}] {line}")


def chat_part(echo: Echo) -> None:
    """Chat: three clients, a broadcast, then a room of two that refuses a third."""
    from socketlab.chat.server import ChatServer

    echo("")
    echo("== Chat: a broadcast server with rooms of at most two ==")
    logger, log = demo_logger("chat")
    clients_logger = logging.getLogger("socketlab.chat.clients")
    clients_logger.addHandler(log)
    saved = clients_logger.propagate, clients_logger.level
    clients_logger.propagate = False
    clients_logger.setLevel(logging.INFO)
    try:
        with ChatServer(("127.0.0.1", 0), room_size=2, logger=logger) as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            log.expect(echo, "Server is listening")
            port = server.server_address[1]
            people: list[DemoChatter] = []
            for name in ("alice", "bob", "carol"):
                person = DemoChatter(echo, name, port)
                log.expect(echo, "Client connected")
                person.hears()
                for earlier in people:
                    earlier.hears()
                people.append(person)
            alice, bob, carol = people
            for number, person in enumerate(people, 1):
                person.say(f"/nick {person.label}", log, f"user{number} is now known as")
                for everyone in people:
                    everyone.hears()
            echo("  -- a message reaches everyone else in the room, not its sender --")
            alice.say("Hello everyone")
            bob.hears()
            carol.hears()
            echo("  -- alice and bob move to room1, which holds two --")
            alice.say("/join room1", log, "alice left lobby and joined room1")
            alice.hears()
            bob.hears()
            carol.hears()
            bob.say("/join room1", log, "bob left lobby and joined room1")
            bob.hears()
            alice.hears()
            carol.hears()
            carol.say("/join room1")
            carol.hears()
            echo("  -- messages in room1 stay in room1 --")
            bob.say("just the two of us")
            alice.hears()
            carol.say("/who")
            carol.hears()
            server.shutdown()
            for person in people:
                person.hears()
                person.client.close()
            log.expect(echo, "Server closed")
            thread.join()
    finally:
        clients_logger.removeHandler(log)
        clients_logger.propagate, level = saved
        clients_logger.setLevel(level)


def udp_part(echo: Echo) -> None:
    """UDP: a receiver bound to a port, a sender that sends one datagram and closes."""
    from socketlab.udp import DatagramReceiver, send_datagrams

    echo("")
    echo("== UDP: datagrams, no connection ==")
    logger, log = demo_logger("udp")
    with DatagramReceiver(("127.0.0.1", 0), max_datagrams=1, logger=logger) as receiver:
        thread = threading.Thread(target=receiver.serve_forever, daemon=True)
        thread.start()
        log.expect(echo, "Listening for UDP")
        port = receiver.server_address[1]
        echo(f"  [sender] sends 'Hello UDP Server' to 127.0.0.1:{port} and closes (no connection, no receipt)")
        report = send_datagrams("127.0.0.1", port, [b"Hello UDP Server"])
        echo(f"  [sender] {report.describe(f'127.0.0.1:{port}')}")
        log.expect(echo, "Get message from client")
        thread.join(STEP_TIMEOUT)
        receiver.on_close()
        log.expect(echo, "Receiver closed")


def run_demo(echo: Echo) -> None:
    """Run every part of the demo, writing the transcript through *echo*."""
    tcp_part(echo)
    chat_part(echo)
    udp_part(echo)
