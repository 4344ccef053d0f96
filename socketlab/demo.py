"""``socketlab demo``: the tutorial, run on loopback with a narrated transcript.

Each part starts its server in this process on a free port, drives clients
step by step and waits for each server event before narrating the next step,
so the transcript reads in the same order every time.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import queue
import threading
from typing import Any, Callable, Iterator

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
            echo("  -- the server's 'connection' event: a client arrived, and it sends its welcome --")
            log.expect(echo, "Client connected")
            reader = sock.makefile("rb")
            welcome = reader.readline().decode()
            echo(f"  [client] Get message from Server: {welcome.rstrip()}")
            echo("  [client] sends 'Hello Socket Server' and ends its side (socket.end())")
            sock.sendall(b"Hello Socket Server\n")
            sock.shutdown(socket.SHUT_WR)
            echo("  -- the server's 'data' event, then 'end': the client will send nothing more --")
            log.expect(echo, "Client disconnected")
            rest = reader.read()
            more = f"after {len(rest)} more bytes" if rest else "the server ended its side too"
            echo(f"  [client] Disconnected from Server ({more}: the client's 'close' event)")
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
            self.label = renamed(self.label, line)


def renamed(label: str, line: str) -> str:
    """A client's label after it heard *line*: its new name once the server confirms it.

    Labels are ``NAME`` or ``KIND NAME`` (``browser user1``); the name is the last word.
    """
    kind, _, name = label.rpartition(" ")
    prefix = f"* {name} is now known as "
    if line.startswith(prefix):
        return f"{kind} {line[len(prefix) :]}".lstrip()
    return label


@contextlib.contextmanager
def narrated_clients(log: ServerLog) -> Iterator[None]:
    """Narrate the chat's client events (joins, renames, departures) through *log* meanwhile."""
    clients_logger = logging.getLogger("socketlab.chat.clients")
    clients_logger.addHandler(log)
    saved = clients_logger.propagate, clients_logger.level
    clients_logger.propagate = False
    clients_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        clients_logger.removeHandler(log)
        clients_logger.propagate, level = saved
        clients_logger.setLevel(level)


@contextlib.contextmanager
def running_chat(echo: Echo, title: str, name: str, **options: Any) -> Iterator[tuple[Any, ServerLog]]:
    """A chat server with rooms of two, narrated from its start to its close (the part shuts it down)."""
    from socketlab.chat.server import ChatServer

    echo("")
    echo(f"== {title} ==")
    logger, log = demo_logger(name)
    with narrated_clients(log), ChatServer(("127.0.0.1", 0), room_size=2, logger=logger, **options) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        log.expect(echo, "Server is listening")
        if "web" in options:
            log.expect(echo, "Web chat on")
        yield server, log
        log.expect(echo, "Server closed")
        thread.join()


def chat_part(echo: Echo) -> None:
    """Chat: three clients, a broadcast, then a room of two that refuses a third."""
    with running_chat(echo, "Chat: a broadcast server with rooms of at most two", "chat") as (server, log):
        port = server.server_address[1]
        people: list[DemoChatter] = []
        echo("  -- each client is welcomed under a name of the server's; the others hear it arrive --")
        for number in (1, 2, 3):
            person = DemoChatter(echo, f"user{number}", port)
            log.expect(echo, "Client connected")
            person.hears()
            for earlier in people:
                earlier.hears()
            people.append(person)
        alice, bob, carol = people
        for person, name in zip(people, ("alice", "bob", "carol"), strict=True):
            person.say(f"/nick {name}", log, f"{person.label} is now known as")
            for everyone in people:
                everyone.hears()
        echo("  -- a message reaches everyone else in the room, not its sender --")
        alice.say("Hello everyone")
        bob.hears()
        carol.hears()
        echo("  -- alice and bob move to room1, which holds two (the tutorial's socket.join(room)) --")
        alice.say("/join room1", log, "alice left lobby and joined room1")
        alice.hears()
        bob.hears()
        carol.hears()
        bob.say("/join room1", log, "bob left lobby and joined room1")
        bob.hears()
        alice.hears()
        carol.hears()
        echo("  -- a third is refused: the tutorial's result 'failed' --")
        carol.say("/join room1")
        carol.hears()
        echo("  -- messages in room1 stay in room1 (the tutorial's io.to(room).emit) --")
        bob.say("just the two of us")
        alice.hears()
        carol.say("/who")
        carol.hears()
        server.shutdown()
        for person in people:
            person.hears()
            person.client.close()


class DemoBrowser:
    """A WebSocket client, as the chat page uses, whose every line is narrated."""

    def __init__(self, echo: Echo, label: str, port: int) -> None:
        from websockets.sync.client import connect
        from websockets.typing import Origin

        self.echo = echo
        self.label = label
        self._stack = contextlib.ExitStack()
        own_page = Origin(f"http://127.0.0.1:{port}")
        opening = connect(f"ws://127.0.0.1:{port}/ws", origin=own_page, open_timeout=STEP_TIMEOUT)
        self.ws = self._stack.enter_context(opening)
        self._lines: list[str] = []

    def say(self, text: str, log: ServerLog | None = None, server_says: str = "") -> None:
        self.echo(f"  [{self.label}] > {text}")
        self.ws.send(text)
        if log is not None:
            log.expect(self.echo, server_says)

    def hears(self, count: int = 1) -> None:
        for _ in range(count):
            if not self._lines:
                message = self.ws.recv(timeout=STEP_TIMEOUT)
                self._lines = str(message).splitlines()
            line = self._lines.pop(0)
            self.echo(f"  [{self.label}] {line}")
            self.label = renamed(self.label, line)

    def closed(self) -> None:
        """Wait for the server's close and narrate its code."""
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.recv(timeout=STEP_TIMEOUT)
        except ConnectionClosed:
            pass
        code = self.ws.close_code
        self.echo(f"  [{self.label}] connection closed by the server with code {code}")
        self._stack.close()


def web_part(echo: Echo) -> None:
    """Web: a browser's WebSocket and a terminal in one room of two."""
    title = "Web: a browser (WebSocket) and terminals in the same rooms"
    with running_chat(echo, title, "web", web=("127.0.0.1", 0)) as (server, log):
        echo("  -- the page at / opens a WebSocket to /ws; each text message carries chat lines --")
        dana = DemoBrowser(echo, "browser user1", server.web_address[1])
        log.expect(echo, "Client connected")
        dana.hears()
        erin = DemoChatter(echo, "terminal user2", server.server_address[1])
        log.expect(echo, "Client connected")
        erin.hears()
        dana.hears()
        dana.say("/nick dana", log, "user1 is now known as")
        dana.hears()
        erin.hears()
        dana.say("/join chess", log, "dana left lobby and joined chess")
        dana.hears()
        erin.hears()
        erin.say("/nick erin", log, "user2 is now known as")
        erin.hears()
        erin.say("/join chess", log, "erin left lobby and joined chess")
        erin.hears()
        dana.hears()
        echo("  -- one room, one order, whichever transport a member uses --")
        dana.say("hello from the browser")
        erin.hears()
        erin.say("hello from the terminal")
        dana.hears()
        frank = DemoBrowser(echo, "browser user3", server.web_address[1])
        log.expect(echo, "Client connected")
        frank.hears()
        frank.say("/join chess")
        frank.hears()
        server.shutdown()
        for browser in (dana, frank):
            browser.hears()
            browser.closed()
        erin.hears()
        erin.client.close()


class DemoSocketIO:
    """A Socket.IO client over WebSocket, as the tutorial's page is one; every event is narrated.

    The packets are socketlab's own Socket.IO codec; the WebSocket is websockets' client.
    """

    def __init__(self, echo: Echo, label: str, port: int) -> None:
        from websockets.sync.client import connect

        self.echo = echo
        self.label = label
        self._stack = contextlib.ExitStack()
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        self.ws = self._stack.enter_context(connect(url, open_timeout=STEP_TIMEOUT))
        self._receive()  # the Engine.IO open packet
        self.ws.send("40")  # CONNECT to the main namespace
        self._receive()  # its answer, with the client's sid

    def emit(self, event: str, *args: str) -> None:
        from socketlab.socketio import EVENT, Packet, encode

        self.echo(f"  [{self.label}] emit {event!r} {', '.join(repr(arg) for arg in args)}")
        for message in encode(Packet(EVENT, "/", [event, *args])):
            self.ws.send("4" + str(message))

    def hears(self, count: int = 1) -> None:
        """Narrate the next *count* events."""
        from socketlab.socketio import EVENT, decode

        heard = 0
        while heard < count:
            message = self._receive()
            if message.startswith("4") and message[1:2] == str(EVENT):
                event, *args = decode(message[1:]).data
                self.echo(f"  [{self.label}] on {event!r} {', '.join(repr(arg) for arg in args)}")
                heard += 1

    def _receive(self) -> str:
        while True:
            message = str(self.ws.recv(timeout=STEP_TIMEOUT))
            if message != "2":
                return message
            self.ws.send("3")  # the server's ping, answered

    def close(self) -> None:
        self._stack.close()


def socketio_part(echo: Echo) -> None:
    """Socket.IO: the tutorial's own events, room and chat message, beside a terminal."""
    title = "Socket.IO: the tutorial's events on the same chat"
    with running_chat(echo, title, "socketio", web=("127.0.0.1", 0)) as (server, log):
        echo("  -- Socket.IO clients connect at /socket.io/ on the web port, as the tutorial's page does --")
        page = DemoSocketIO(echo, "socket.io user1", server.web_address[1])
        log.expect(echo, "Client connected")
        page.hears()
        page.emit("room", "chess")
        log.expect(echo, "user1 left lobby and joined chess")
        page.hears()
        terminal = DemoChatter(echo, "terminal user2", server.server_address[1])
        log.expect(echo, "Client connected")
        terminal.hears()
        terminal.say("/join chess", log, "user2 left lobby and joined chess")
        terminal.hears()
        page.hears()
        echo("  -- 'chat message' reaches the whole room, the sender too, as io.to(room).emit does --")
        page.emit("chat message", "hello from socket.io")
        page.hears()
        terminal.hears()
        terminal.say("hello from a terminal")
        page.hears()
        third = DemoSocketIO(echo, "socket.io user3", server.web_address[1])
        log.expect(echo, "Client connected")
        third.hears()
        echo("  -- a third member: the tutorial's 'result' 'failed' (and an error event saying why) --")
        third.emit("room", "chess")
        third.hears(2)
        server.shutdown()
        for client in (page, third):
            client.hears()
            client.close()
        terminal.hears()
        terminal.client.close()


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


NEXT_STEPS = """
== What to try next ==
  socketlab chat serve --room-size 2 --web 8080    # then open http://127.0.0.1:8080/ in two tabs
  socketlab chat connect --name alice --room chess # a terminal member of the same chat
  socketlab tcp-server --echo --welcome ''         # an echo service; send it a file with tcp-client
  socketlab udp-recv --count 1                     # datagrams: this in one terminal,
  socketlab udp-send Hello                         #   this in another
  socketlab bench chat                             # how fast the chat relays, on this machine
  Every command has --help with examples; docs/tutorial.md walks through the same steps."""


def run_demo(echo: Echo) -> None:
    """Run every part of the demo, writing the transcript through *echo*."""
    tcp_part(echo)
    chat_part(echo)
    web_part(echo)
    socketio_part(echo)
    udp_part(echo)
    for line in NEXT_STEPS.splitlines():
        echo(line)
