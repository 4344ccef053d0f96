"""The chat server's I/O layer: threads and sockets that move bytes.

Design, and why:

- One reader thread per client (``ChatHandler``) blocks in ``recv()``, frames
  lines with :class:`~socketlab.lines.LineBuffer` and hands them to the
  sans-IO :class:`~socketlab.chat.protocol.ChatHub` under the server's one
  lock. The lock makes the hub's decisions and the hand-off of their bytes one
  step, so every member of a room sees the room's lines in the same order.
- Bytes go out without ever blocking: each receiver's data is offered to the
  kernel with ``send(MSG_DONTWAIT)`` right away -- no wake-up of another
  thread for the common case. What the kernel does not take waits in that
  client's :class:`Outbox`, bounded by ``max_backlog``; a single
  :class:`BacklogWriter` thread sends it when the socket becomes writable,
  joining everything pending into one send. A client that never reads fills
  only its own backlog and is dropped as ``too slow``; nobody else waits.
- Idle clients cost one small-stack thread and a 4 KiB read (reads grow only
  while data keeps coming).

Loggers: ``socketlab.chat`` (lifecycle), ``socketlab.chat.clients``
(connects, joins, nick changes, departures), ``socketlab.chat.messages``
(message text, at DEBUG).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import socketserver
import threading
import time
from typing import Any

from socketlab.addresses import format_address
from socketlab.chat.protocol import ChatHub, Delivery, Member
from socketlab.lines import DEFAULT_MAX_LINE, LineBuffer
from socketlab.serving import ConnectionServer
from socketlab.text import display_bytes

logger = logging.getLogger("socketlab.chat")
client_log = logging.getLogger("socketlab.chat.clients")
message_log = logging.getLogger("socketlab.chat.messages")

#: Default bytes a client may have waiting for it before it is dropped as too slow.
DEFAULT_MAX_BACKLOG = 1024 * 1024
#: How long shutdown (and a departing client) waits for backlogs to drain.
FLUSH_TIMEOUT = 2.0
#: First and largest recv() sizes.
FIRST_READ = 4096
MAX_READ = 65536

_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class Outbox:
    """One client's outgoing bytes. Every method runs under the server lock.

    ``write()`` offers data to the kernel at once when nothing is waiting;
    the rest waits here, at most ``limit`` bytes, until the BacklogWriter
    sends it. Overflow or a send error closes the outbox and wakes the
    client's reader thread with ``shutdown()``; ``reason`` says why.
    """

    __slots__ = ("sock", "limit", "writer", "chunks", "size", "closed", "reason", "drained")

    def __init__(self, sock: socket.socket, limit: int, writer: "BacklogWriter") -> None:
        self.sock = sock
        self.limit = limit
        self.writer = writer
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False
        self.reason: str | None = None
        self.drained: threading.Event | None = None

    def write(self, data: bytes) -> None:
        """Send *data* now if nothing is waiting, else queue it behind the backlog."""
        if self.closed:
            return
        if self.size:
            if self.size + len(data) > self.limit:
                self.fail("too slow")
                return
            self.chunks.append(data)
            self.size += len(data)
            return
        sent = self._send(data)
        if sent is not None and sent < len(data):
            self.backlog(data[sent:])

    def _send(self, data: bytes) -> int | None:
        """One non-blocking send(): bytes taken (0 if none), None if the connection failed."""
        try:
            return self.sock.send(data, _MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as error:
            self.fail(_reason_for(error))
            return None

    def backlog(self, rest: bytes) -> None:
        """Start a backlog with *rest* and have the BacklogWriter send it."""
        if len(rest) > self.limit:
            self.fail("too slow")
            return
        self.chunks.append(rest)
        self.size = len(rest)
        self.writer.watch(self)

    def flush(self) -> None:
        """Send as much of the backlog as the kernel takes now."""
        if self.closed or not self.size:
            return
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        sent = self._send(data)
        if not sent:
            return
        if sent == len(data):
            self.chunks = []
            self.size = 0
            self.writer.unwatch(self)
            if self.drained is not None:
                self.drained.set()
        else:
            self.chunks = [data[sent:]]
            self.size = len(data) - sent

    def fail(self, reason: str) -> None:
        """Drop the backlog, stop writing, and wake the reader thread."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.chunks = []
        self.size = 0
        self.writer.unwatch(self)
        if self.drained is not None:
            self.drained.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _reason_for(error: OSError) -> str:
    if error.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    return error.strerror or str(error)


class BacklogWriter:
    """One thread that sends backlogs when sockets become writable.

    It also ends clients idle for longer than ``idle_timeout`` seconds.
    """

    def __init__(self, server: "ChatServer") -> None:
        self.server = server
        self.lock = server.lock
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="chat-backlog-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, outbox: Outbox) -> None:
        """Send *outbox*'s backlog when its socket is writable (lock held)."""
        try:
            self._selector.register(outbox.sock, selectors.EVENT_WRITE, outbox)
        except (KeyError, ValueError, OSError):
            pass

    def unwatch(self, outbox: Outbox) -> None:
        """Stop watching *outbox* (lock held)."""
        try:
            self._selector.unregister(outbox.sock)
        except (KeyError, ValueError, OSError):
            pass

    def stop(self) -> None:
        self._running = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        idle = self.server.idle_timeout
        tick = min(1.0, idle / 4) if idle else None
        next_sweep = time.monotonic() + (tick or 0)
        while self._running:
            try:
                events = self._selector.select(tick)
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            with self.lock:
                for key, _mask in events:
                    if key.data is not None:
                        key.data.flush()
            for key, _mask in events:
                if key.data is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
            if idle and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + tick  # type: ignore[operator]
                self.server.end_idle_clients(idle)


class ChatConnection:
    """The I/O layer's state for one client."""

    __slots__ = ("sock", "peer", "outbox", "member", "last_active")

    def __init__(self, sock: socket.socket, peer: str, outbox: Outbox) -> None:
        self.sock = sock
        self.peer = peer
        self.outbox = outbox
        self.member: Member | None = None
        self.last_active = time.monotonic()


class ChatHandler(socketserver.BaseRequestHandler):
    """Reads one client's lines and feeds them to the hub until it leaves."""

    server: "ChatServer"

    def handle(self) -> None:
        server = self.server
        sock: socket.socket = self.request
        conn = server.open_connection(sock, format_address(self.client_address))
        if conn is None:
            return
        framer = LineBuffer(server.max_line)
        reason: str | None = "disconnected"
        size = FIRST_READ
        verbose = message_log.isEnabledFor(logging.DEBUG)
        track_idle = server.idle_timeout is not None
        while True:
            try:
                data = sock.recv(size)
            except OSError as error:
                reason = conn.outbox.reason or _reason_for(error)
                break
            if not data:
                reason = conn.outbox.reason or "disconnected"
                items = framer.finish()
                if items and server.receive(conn, items, verbose):
                    reason = None
                break
            if track_idle:
                conn.last_active = time.monotonic()
            if len(data) == size and size < MAX_READ:
                size *= 4
            items = framer.feed(data)
            if items and server.receive(conn, items, verbose):
                reason = None  # a plain /quit
                break
        server.close_connection(conn, reason)


class ChatServer(ConnectionServer):
    """Line-based chat with rooms over TCP (see docs/protocol.md).

    ``ChatServer(("127.0.0.1", 0), room_size=2)`` binds at once; run
    ``serve_forever()`` on a thread and stop with ``shutdown()`` or a ``with``
    block. Raises AddressError when the address cannot be bound.

    Limits: ``max_clients`` connections, ``max_line`` bytes per line,
    ``max_backlog`` bytes waiting per client, ``idle_timeout`` seconds of
    silence (None: no limit).
    """

    full_message = b"! server full\n"
    thread_stack_size = 128 * 1024

    def __init__(
        self,
        address: tuple[str, int],
        *,
        room_size: int = 0,
        max_clients: int | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        idle_timeout: float | None = None,
        logger: logging.Logger = logger,
    ) -> None:
        self.max_line = max_line
        self.max_backlog = max_backlog
        self.idle_timeout = idle_timeout or None
        self.hub = ChatHub(room_size=room_size, max_line=max_line)
        self.lock = threading.Lock()
        self._shutting_down = False
        self.writer = BacklogWriter(self)
        super().__init__(address, ChatHandler, max_clients=max_clients, logger=logger)

    def on_listening(self) -> None:
        self.writer.start()
        super().on_listening()

    # -- called by handler threads ----------------------------------------

    def open_connection(self, sock: socket.socket, peer: str) -> ChatConnection | None:
        """Register a new client with the hub and send its welcome."""
        conn = ChatConnection(sock, peer, Outbox(sock, self.max_backlog, self.writer))
        with self.lock:
            if self._shutting_down:
                return None
            conn.member, deliveries = self.hub.connect(conn)
            self._deliver(deliveries)
        client_log.info("Client connected %s as %s", peer, conn.member.name)
        return conn

    def receive(self, conn: ChatConnection, items: list[Any], verbose: bool) -> bool:
        """Hand *conn*'s lines to the hub and deliver the result; True on /quit."""
        member = conn.member
        assert member is not None
        if verbose:
            for item in items:
                if isinstance(item, bytes):
                    message_log.debug("%s: %s", member.name, display_bytes(item))
        with self.lock:
            if conn.outbox.closed or self._shutting_down:
                return False
            before = (member.name, member.room.name)
            reaction = self.hub.receive(member, items)
            self._deliver(reaction.deliveries)
            after = (member.name, member.room.name)
        if before != after:
            if before[0] != after[0]:
                client_log.info("%s is now known as %s", before[0], after[0])
            if before[1] != after[1]:
                client_log.info("%s left %s and joined %s", after[0], before[1], after[1])
        return reaction.quit

    def close_connection(self, conn: ChatConnection, reason: str | None) -> None:
        """*conn* is leaving: tell its room, flush what it is owed, close."""
        member = conn.member
        assert member is not None
        outbox = conn.outbox
        wait_for: threading.Event | None = None
        with self.lock:
            if self._shutting_down and reason == "disconnected":
                reason = "server shutting down"
            deliveries = self.hub.disconnect(member, reason)
            if not self._shutting_down:
                self._deliver(deliveries)
                if outbox.size and not outbox.closed:
                    wait_for = outbox.drained = threading.Event()
        client_log.info("Client disconnected %s (%s)", member.name, reason or "quit")
        if wait_for is not None:
            wait_for.wait(FLUSH_TIMEOUT)
        with self.lock:
            outbox.closed = True
            self.writer.unwatch(outbox)
        if outbox.reason is None and reason != "connection reset":
            _linger_close(conn.sock)

    def end_idle_clients(self, idle: float) -> None:
        """Drop every client silent for more than *idle* seconds."""
        limit = time.monotonic() - idle
        with self.lock:
            for member in self.hub.members:
                conn = member.transport
                if conn.last_active < limit:
                    conn.outbox.write(f"! idle for {idle:g} s, disconnecting\n".encode())
                    conn.outbox.fail("idle timeout")

    # -- lifecycle ----------------------------------------------------------

    def close_connections(self) -> None:
        """Tell everyone the server is going, flush for up to 2 s, then close."""
        with self.lock:
            first = not self._shutting_down
            self._shutting_down = True
            if first:
                self._deliver(self.hub.announce("server shutting down"))
        if first:
            deadline = time.monotonic() + FLUSH_TIMEOUT
            while time.monotonic() < deadline and self._backlog_bytes():
                time.sleep(0.01)  # deadline loop: the writer thread drains meanwhile
        super().close_connections()

    def shutdown(self) -> None:
        super().shutdown()
        self.writer.stop()

    def _backlog_bytes(self) -> int:
        with self.lock:
            return sum(m.transport.outbox.size for m in self.hub.members)

    @staticmethod
    def _deliver(deliveries: list[Delivery]) -> None:
        """Hand each delivery to its receivers' outboxes (server lock held).

        The hot path of the relay: Outbox.write() inlined for the common
        case -- nothing waiting, the kernel takes it all -- which is one
        non-blocking send() per receiver.
        """
        for members, data in deliveries:
            size = len(data)
            for member in members:
                box = member.transport.outbox
                if box.size or box.closed:
                    box.write(data)
                    continue
                try:
                    sent = box.sock.send(data, _MSG_DONTWAIT)
                except BlockingIOError:
                    box.backlog(data)
                    continue
                except OSError as error:
                    box.fail(_reason_for(error))
                    continue
                if sent != size:
                    box.backlog(data[sent:])


def _linger_close(sock: socket.socket) -> None:
    """End our side after the data already sent, and let the client close.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the last lines on their way to the client; so half-close and
    read what is left (briefly) before the handler's close().
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        while sock.recv(MAX_READ):
            pass
    except OSError:
        pass
