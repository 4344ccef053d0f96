"""The chat server's I/O layer: threads and sockets that move bytes.

Design, and why:

- The accept thread (``ConnectionServer``) welcomes each client and hands it
  to the one :class:`ReaderLoop` thread (clients accepted in one wake-up are
  welcomed together, so a crowd joining costs one send per member, not one
  per member per newcomer), which waits on every client with
  ``epoll``, frames lines with :class:`~socketlab.lines.LineBuffer` and hands
  them to the sans-IO :class:`~socketlab.chat.protocol.ChatHub` under the
  server's one lock. The lock makes the hub's decisions and the hand-off of
  their bytes one step, so every member of a room sees the room's lines in
  the same order.
- Bytes go out without ever blocking: each receiver's data is offered to the
  kernel with ``send(MSG_DONTWAIT)`` right away -- no wake-up of another
  thread for the common case. What the kernel does not take waits in that
  client's :class:`Outbox`, bounded by ``max_backlog``; a single
  :class:`BacklogWriter` thread sends it when the socket becomes writable,
  joining everything pending into one send. A client that never reads fills
  only its own backlog and is dropped as ``too slow``; nobody else waits.
- Idle clients cost no thread: a socket, a few small objects, and a 4 KiB
  read when data comes (reads grow only while data keeps coming).

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
from socketlab.chat.protocol import ChatHub, Delivery, Member, coalesce
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
    sends it. Overflow or a send error closes the outbox and shuts the
    socket down, which the reader loop sees as the client leaving;
    ``reason`` says why.
    """

    __slots__ = ("sock", "limit", "writer", "chunks", "size", "closed", "reason")

    def __init__(self, sock: socket.socket, limit: int, writer: "BacklogWriter") -> None:
        self.sock = sock
        self.limit = limit
        self.writer = writer
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False
        self.reason: str | None = None

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
        else:
            self.chunks = [data[sent:]]
            self.size = len(data) - sent

    def fail(self, reason: str) -> None:
        """Drop the backlog, stop writing, and shut the socket down (the reader loop sees EOF)."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.chunks = []
        self.size = 0
        self.writer.unwatch(self)
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

    __slots__ = (
        "sock", "peer", "outbox", "member", "last_active", "framer", "read_size", "closing", "half_closed", "peer_done"
    )

    def __init__(self, sock: socket.socket, peer: str, outbox: Outbox, max_line: int) -> None:
        self.sock = sock
        self.peer = peer
        self.outbox = outbox
        self.member: Member | None = None
        self.last_active = time.monotonic()
        self.framer = LineBuffer(max_line)
        self.read_size = FIRST_READ
        #: Set when the client has left: when to give up flushing and close.
        self.closing: float | None = None
        self.half_closed = False
        #: The client closed its side while we were still flushing to it.
        self.peer_done = False


class ReaderLoop:
    """One thread that reads every client and runs the hub for what arrives.

    Measured on 2 cores: with a thread per client, messages from four
    senders each woke a different thread and the relay's p99 latency doubled
    compared with one sender; one reader thread, woken by ``epoll``, serves
    all senders alike and holds no stack per idle client.

    A client that leaves is first told everything it is owed: its outbox is
    flushed (by the BacklogWriter), then the server half-closes and reads
    until the client closes, so that no reset destroys the last lines --
    for at most FLUSH_TIMEOUT seconds.
    """

    def __init__(self, server: "ChatServer") -> None:
        self.server = server
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closing: dict[ChatConnection, None] = {}
        self._running = True
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="chat-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, conns: list[ChatConnection]) -> None:
        """Start reading *conns* (any thread)."""
        for conn in conns:
            conn.sock.setblocking(False)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._wake()

    @property
    def count(self) -> int:
        """Connections still open."""
        mapping = self._selector.get_map() if not self._stopped else None
        return len(mapping) - 1 if mapping else 0

    def stop(self) -> None:
        """Stop the thread and close whatever is still open (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._finish(key.data)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        server = self.server
        verbose = message_log.isEnabledFor(logging.DEBUG)
        track_idle = server.idle_timeout is not None
        while self._running:
            try:
                events = self._selector.select(0.05 if self._closing else None)
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            for key, _mask in events:
                conn = key.data
                if conn is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                try:
                    self._readable(conn, verbose, track_idle)
                except Exception as error:  # one client must never take the reader down
                    server.logger.error("Error serving %s: %s: %s", conn.peer, type(error).__name__, error)
                    self.abandon(conn)
            if self._closing:
                self._advance_closing()

    def _readable(self, conn: ChatConnection, verbose: bool, track_idle: bool) -> None:
        try:
            data = conn.sock.recv(conn.read_size if conn.closing is None else MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            if conn.closing is not None:
                self._finish(conn)
            else:
                self._leave(conn, conn.outbox.reason or _reason_for(error))
            return
        if conn.closing is not None:  # the client has left: discard until it closes
            if not data:
                self._finish(conn) if conn.half_closed else self._stop_reading(conn)
            return
        server = self.server
        if not data:
            reason: str | None = conn.outbox.reason or "disconnected"
            items = conn.framer.finish()
            if items and server.receive(conn, items, verbose):
                reason = None
            self._leave(conn, reason)
            return
        if track_idle:
            conn.last_active = time.monotonic()
        if len(data) == conn.read_size and conn.read_size < MAX_READ:
            conn.read_size *= 4
        items = conn.framer.feed(data)
        if items and server.receive(conn, items, verbose):
            self._leave(conn, None)  # a plain /quit

    def abandon(self, conn: ChatConnection) -> None:
        """Close *conn* after an unexpected error, taking it out of the hub too."""
        if conn.closing is None and conn.member is not None:
            try:
                self.server.depart(conn, "server error")
            except Exception:  # the hub itself is failing: closing the socket is all that is left
                pass
        self._finish(conn)

    def _leave(self, conn: ChatConnection, reason: str | None) -> None:
        """The client is gone or going: tell its room, then flush and close."""
        self.server.depart(conn, reason)
        if conn.outbox.reason is not None or reason == "connection reset" or self.server.shutting_down:
            self._finish(conn)
            return
        conn.closing = time.monotonic() + FLUSH_TIMEOUT
        self._closing[conn] = None
        self._advance(conn)

    def _advance_closing(self) -> None:
        for conn in list(self._closing):
            self._advance(conn)

    def _advance(self, conn: ChatConnection) -> None:
        """Half-close once the outbox is flushed; close at the deadline."""
        assert conn.closing is not None
        if time.monotonic() > conn.closing:
            self._finish(conn)
            return
        if not conn.half_closed and not conn.outbox.size:
            conn.half_closed = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._finish(conn)
                return
            if conn.peer_done:
                self._finish(conn)

    def _stop_reading(self, conn: ChatConnection) -> None:
        """EOF while still flushing: wait for the flush without polling the socket."""
        conn.peer_done = True
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _finish(self, conn: ChatConnection) -> None:
        """Close *conn* for good and unregister it everywhere."""
        self._closing.pop(conn, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        with self.server.lock:
            outbox = conn.outbox
            outbox.closed = True
            self.server.writer.unwatch(outbox)
        self.server.forget_connection(conn.sock)
        try:
            conn.sock.close()
        except OSError:
            pass


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
        self.shutting_down = False
        self.writer = BacklogWriter(self)
        self.reader = ReaderLoop(self)
        # No handler class: start_connection() hands connections to the reader thread.
        super().__init__(address, socketserver.BaseRequestHandler, max_clients=max_clients, logger=logger)

    def on_listening(self) -> None:
        self.writer.start()
        self.reader.start()
        super().on_listening()

    def start_connection(self, request: socket.socket, client_address: Any) -> None:
        """Welcome one client and hand it to the reader thread."""
        self.start_connections([(request, client_address)])

    def start_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """Welcome clients accepted together and hand them to the reader thread.

        The hub connects them one by one under one lock hold, and their
        welcomes and join notices go out coalesced: one send per member.
        """
        conns = [
            ChatConnection(sock, format_address(address), Outbox(sock, self.max_backlog, self.writer), self.max_line)
            for sock, address in accepted
        ]
        try:
            with self.lock:
                if self.shutting_down:
                    conns, refused = [], conns
                else:
                    refused = []
                    deliveries: list[Delivery] = []
                    for conn in conns:
                        conn.member, joined = self.hub.connect(conn)
                        deliveries += joined
                    self._deliver(deliveries)
        except Exception as error:  # a bug in the hub: refuse these clients, keep serving
            self.logger.error("Cannot welcome %d new client(s): %s: %s", len(conns), type(error).__name__, error)
            for conn in conns:
                self.reader.abandon(conn)
            return
        for conn in refused:
            self.forget_connection(conn.sock)
            conn.sock.close()
        if client_log.isEnabledFor(logging.INFO):  # before the reader can see a /nick from them
            for conn in conns:
                client_log.info("Client connected %s as %s", conn.peer, conn.member.name)  # type: ignore[union-attr]
        if conns:
            self.reader.add(conns)

    def receive(self, conn: ChatConnection, items: list[Any], verbose: bool) -> bool:
        """Hand *conn*'s lines to the hub and deliver the result; True on /quit."""
        member = conn.member
        assert member is not None
        if verbose:
            for item in items:
                if isinstance(item, bytes):
                    message_log.debug("%s: %s", member.name, display_bytes(item))
        with self.lock:
            if conn.outbox.closed or self.shutting_down:
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

    def depart(self, conn: ChatConnection, reason: str | None) -> None:
        """*conn* has left (*reason*, or None after /quit): tell its room."""
        member = conn.member
        assert member is not None
        with self.lock:
            if self.shutting_down and reason == "disconnected":
                reason = "server shutting down"
            deliveries = self.hub.disconnect(member, reason)
            if not self.shutting_down:
                self._deliver(deliveries)
        client_log.info("Client disconnected %s (%s)", member.name, reason or "quit")

    def end_idle_clients(self, idle: float) -> None:
        """Drop every client silent for more than *idle* seconds."""
        limit = time.monotonic() - idle
        with self.lock:
            for member in self.hub.members:
                conn = member.transport
                if conn.last_active < limit and conn.closing is None:
                    conn.outbox.write(f"! idle for {idle:g} s, disconnecting\n".encode())
                    conn.outbox.fail("idle timeout")

    # -- lifecycle ----------------------------------------------------------

    def close_connections(self) -> None:
        """Tell everyone the server is going, flush for up to 2 s, then close."""
        with self.lock:
            first = not self.shutting_down
            self.shutting_down = True
            if first:
                self._deliver(self.hub.announce("server shutting down"))
        if first:
            deadline = time.monotonic() + FLUSH_TIMEOUT
            while time.monotonic() < deadline and self._backlog_bytes():
                time.sleep(0.01)  # deadline loop: the writer thread drains meanwhile
        super().close_connections()

    def _join_connections(self, deadline: float) -> None:
        """Wait until the reader thread has closed every connection, then stop it."""
        while self.reader.count and time.monotonic() < deadline:
            time.sleep(0.01)  # deadline loop: the reader thread closes them meanwhile
        self.reader.stop()
        super()._join_connections(deadline)

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
        non-blocking send() per receiver. Several deliveries (a command's
        replies and notices, a crowd's joins) are coalesced first, so each
        receiver still gets one send.
        """
        if len(deliveries) > 1:
            deliveries = coalesce(deliveries)
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


