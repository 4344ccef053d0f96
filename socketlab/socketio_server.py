"""A Socket.IO service on a port of its own: the sans-IO layers over sockets.

A service in a few lines::

    from socketlab.socketio import SocketIOServer
    from socketlab.socketio_server import SocketIOService

    sio = SocketIOServer()

    @sio.of("/").on("message")
    def message(client, *args):
        client.emit("message-back", *args)
        return args                     # the ack, when the client asked for one

    with SocketIOService(("127.0.0.1", 3000), sio) as service:
        service.serve_until_signal()    # Ctrl-C; or serve_forever() on a thread and shutdown() from another

:class:`SocketIOService` answers Engine.IO at ``/socket.io/`` -- long-polling, the
upgrade to WebSocket, WebSocket alone -- and 404 at any other path;
:meth:`~SocketIOService.mount` serves more applications at other paths (a bare
:class:`~socketlab.engineio.EngineServer` too). It is assembled from the parts the
chat server is made of, with no thread per client:

- an :class:`~socketlab.serving.Acceptor` accepts (non-blocking sockets, counted
  toward ``max_clients``; the next one is answered 503);
- one reader thread waits on every connection (a selector and a
  :class:`~socketlab.serving.Waker`) and feeds each one's
  :class:`~socketlab.engineio_http.EngineConnection`, which reads its HTTP
  requests or its WebSocket;
- every byte out goes through the connection's bounded
  :class:`~socketlab.chat.outbox.Outbox`: sent at once when the kernel takes it,
  the rest by the one :class:`~socketlab.chat.outbox.BacklogWriter` thread, which
  also runs the timers (heartbeats, connect and request timeouts) ten times per
  shortest period;
- with ``tls=`` (an :class:`ssl.SSLContext`), each connection has a
  :class:`~socketlab.tls.TlsLayer`: TLS sans-IO, run by the reader.

Every call into the Socket.IO and Engine.IO objects holds :attr:`SocketIOService.lock`.
Handlers run with it held -- events on the reader thread, timers (a ping timeout's
``disconnect``) on the writer's -- so they must not block; code on another thread that
emits takes it: ``with service.lock: namespace.emit("news", text)``.

Limits: request heads (``max_head``) and their time (``head_timeout``), bodies and
WebSocket messages (the engine's ``max_payload``), what waits for a client (the
engine's ``max_backlog`` per session, twice that per connection), ``max_clients``
connections, and twice as many sessions per mounted engine (its ``max_sessions``,
unless set). Loggers: ``socketlab.socketio.server`` (listening, closed, refused
requests, a few a second at most), ``socketlab.socketio`` (handlers' errors).
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Union

from socketlab.addresses import format_address
from socketlab.chat.outbox import BacklogWriter, Outbox, TlsOutbox, reason_for
from socketlab.engineio import EngineServer
from socketlab.engineio_http import EngineConnection
from socketlab.http import response
from socketlab.serving import Acceptor, AcceptingServer, Waker, close_quietly, open_listener, run_until_signal
from socketlab.socketio import SocketIOServer
from socketlab.tls import TlsError, TlsLayer

#: The service's logger unless one is given: listening, closed, refused requests (a few a second at most).
service_log = logging.getLogger("socketlab.socketio.server")

#: What answers Engine.IO at a path: Socket.IO, or a bare Engine.IO application.
Mountable = Union[SocketIOServer, EngineServer]

#: Connections served at once (a polling client holds one or two); the next one is answered 503 and closed.
MAX_CLIENTS = 1000
#: Seconds a connection has for its TLS handshake and each request head, and may stay idle between requests.
HEAD_TIMEOUT = 10.0
#: Longest request head (request line and headers), as the chat's web listener allows.
MAX_HEAD = 8192
#: Bytes read per recv(): a whole 1 MB payload in a few reads, one buffer for everyone (one reader thread).
READ_SIZE = 65536
#: The timers run this many times per shortest period (a ping is sent late by a tenth of its timeout at most:
#: a client polling with pongs loses little of its time), but at least once a second and at most every 10 ms.
TIMER_STEPS = 10
#: Seconds shutdown() lets what clients are owed (the DISCONNECT, the close) drain before it closes them.
FLUSH_TIMEOUT = 0.5
#: The answer to a connection beyond max_clients.
FULL_RESPONSE = response(503, b'{"code":3,"message":"Server is full"}', [("Content-Type", "application/json")], close=True)


class _Connection:
    """One accepted connection: its socket, outbox, TLS layer and Engine.IO side (used under the service lock)."""

    __slots__ = ("sock", "peer", "outbox", "tls", "engine", "deadline", "served", "closed")

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        outbox: Outbox,
        tls: TlsLayer | None,
        deadline: float,
        engine: Callable[[Outbox, str, Callable[[str], None]], EngineConnection],
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.outbox = outbox
        self.tls = tls
        #: Made by *engine* (outbox, peer, end): it writes to the outbox and calls end() when it is over.
        self.engine = engine(outbox, peer, self.end)
        #: When the next request head (or the TLS handshake) must have arrived by, between requests.
        self.deadline = deadline
        #: The engine's count of answers when the deadline was last set.
        self.served = 0
        #: Closed by the reader (idempotent).
        self.closed = False

    def end(self, reason: str) -> None:
        """Close once what was written is sent (TLS's close_notify last)."""
        if self.tls is not None and not self.outbox.closed:
            self.outbox.write_raw(self.tls.close())
        self.outbox.end(reason)

    def tick(self, now: float, head_timeout: float) -> None:
        """The request deadline (lock held): a connection that let it pass is ended."""
        engine = self.engine
        if engine.ended is not None:  # e.g. a WebSocket closing handshake under way: no reply waited for long
            if not self.outbox.closed and self.outbox.ending is None:
                self.end(engine.ended)
        elif engine.websocket is not None:  # Engine.IO's heartbeat watches it
            return
        elif engine.holding or engine.served != self.served:  # an answer given (or pending): a new wait starts
            self.served = engine.served
            self.deadline = now + head_timeout
        elif now > self.deadline:
            if self.tls is not None and not self.tls.handshake_done:
                reason = "TLS handshake timeout"
            else:
                reason = "request head timeout" if engine.busy else "keep-alive timeout"
            engine.connection_lost(reason)
            self.end(reason)


class _Reader:
    """The one thread that reads every connection of a service (others hand connections over with add())."""

    #: Seconds stop() waits for the thread.
    stop_timeout: float = 2.0

    def __init__(self, service: "SocketIOService") -> None:
        self.service = service
        self._selector = selectors.DefaultSelector()
        self._waker = Waker()
        self._waker.register(self._selector)
        #: Handed over by the acceptor's thread; registered by the reader thread, the only one using the selector.
        self._arriving: deque[_Connection] = deque()
        self._running = True
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="socketio-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, conns: list[_Connection]) -> None:
        """Start reading *conns* (any thread)."""
        self._arriving.extend(conns)
        self._waker.wake()

    def stop(self, conns: list[_Connection]) -> None:
        """Stop the thread, then close *conns* (what was still open); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        self._waker.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.stop_timeout)
        for conn in conns:
            self.close(conn, "server shutting down")
        self._selector.close()
        self._waker.close()

    def _run(self) -> None:
        while self._running:
            try:
                events = self._selector.select()
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            self._waker.drain_if_among(events)  # first: a wake-up while the queue is looked at stays pending
            while self._arriving:
                conn = self._arriving.popleft()
                try:
                    self._selector.register(conn.sock, selectors.EVENT_READ, conn)
                except (KeyError, ValueError, OSError):  # closed before it was ever watched
                    self.close(conn, "closed")
            for key, _mask in events:
                conn = key.data
                if conn is not None and not conn.closed:
                    try:
                        self._readable(conn)
                    except Exception:  # one client must never take the reader down
                        self.service.logger.exception("Error serving %s", conn.peer)
                        self.close(conn, "server error")

    def _readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(conn, conn.outbox.reason or reason_for(error))
            return
        if not data:
            self.close(conn, conn.outbox.reason or "disconnected")
            return
        reason = self.service._received(conn, data)
        if reason is not None:
            self.close(conn, reason)

    def close(self, conn: _Connection, reason: str) -> None:
        """Close *conn* for good (idempotent)."""
        if conn.closed:
            return
        conn.closed = True
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.service._connection_closed(conn, reason)


class SocketIOService(AcceptingServer):
    """A :class:`~socketlab.socketio.SocketIOServer` served on its own address (see the module docstring).

    *address* is ``(host, port)`` or a port on 127.0.0.1; port 0 picks a free port
    (``server_address`` has it). *origins*: pages of other origins allowed to use the
    service besides its own (``"*"``: any); clients that send no Origin (scripts, not
    browsers) are always allowed. *no_delay* sets TCP_NODELAY on every connection, as Node's
    HTTP server does: Socket.IO writes small frames, often two at once (an event and its
    ack, a packet and its attachments), and with Nagle's algorithm the second waits for the
    client's delayed ACK -- measured here over WebSocket, an event answered with an event
    and an ack: 0.7 ms with it, 44 ms without.

    For the caller: ``server_address``, ``address_text``, ``lock``, ``mount()``,
    ``serve_forever()``, ``serve_until_signal()``, ``shutdown()`` (idempotent, from any
    thread but serve_forever's), ``server_close()``, ``connection_count``, a ``with`` block.

    Class variables that may be overridden: ``max_clients``, ``head_timeout``,
    ``max_head``, ``flush_timeout``.
    """

    max_clients: int = MAX_CLIENTS
    head_timeout: float = HEAD_TIMEOUT
    max_head: int = MAX_HEAD
    flush_timeout: float = FLUSH_TIMEOUT

    def __init__(
        self,
        address: tuple[str, int] | int,
        sio: SocketIOServer,
        *,
        path: str = "/socket.io/",
        tls: ssl.SSLContext | None = None,
        origins: Iterable[str] = (),
        max_clients: int | None = None,
        no_delay: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        host, port = ("127.0.0.1", address) if isinstance(address, int) else address
        self.sio = sio
        self.logger = logger if logger is not None else service_log
        self.tls_context = tls
        self.origins = frozenset(origins)
        self.no_delay = no_delay
        if max_clients is not None:
            self.max_clients = max_clients
        #: Serialises every call into the Socket.IO and Engine.IO objects, and every connection's output.
        self.lock = threading.Lock()
        self._apps: dict[str, Mountable] = {}
        #: Path prefix -> Engine.IO server, as every EngineConnection routes by it (changed under the lock).
        self._routes: dict[str, EngineServer] = {}
        self._conns: set[_Connection] = set()
        self._listening = False
        self._closed = False
        self._stopped = False
        self._state_lock = threading.Lock()
        self.mount(path, sio)
        self.acceptor = Acceptor(
            max_clients=self.max_clients, logger=self.logger, blocking=False, full_message=b"" if tls else FULL_RESPONSE
        )
        self.refusal_log = self.acceptor.refusal_log
        try:
            self.socket = open_listener(host, port)
        except Exception:
            self.acceptor.close()
            raise
        self.server_address = self.socket.getsockname()
        self.acceptor.add_listener(self.socket, self._start_connections, admit=True)
        self.writer = BacklogWriter(self.lock, None, self._sweep)
        self.reader = _Reader(self)

    # -- for the caller --------------------------------------------------------------

    def mount(self, path: str, app: Mountable) -> None:
        """Answer Engine.IO requests under *path* (``/engine.io/``) with *app*: a SocketIOServer, or a bare EngineServer.

        Call it before serve_forever() (its timers set how often they run). Raises ValueError for a
        path that does not start and end with ``/``, RuntimeError once serving.
        """
        if not (path.startswith("/") and path.endswith("/")):
            raise ValueError(f"a mount path starts and ends with '/': {path!r}")
        if self._listening:
            raise RuntimeError("mount() before serve_forever()")
        engine = app.engine if isinstance(app, SocketIOServer) else app
        if engine.settings.max_sessions is None:  # sessions are bounded as connections are (twice: handshakes)
            engine.settings.max_sessions = 2 * self.max_clients
        with self.lock:
            self._apps[path] = app
            self._routes[path] = engine

    def serve_until_signal(self) -> None:
        """Serve on a background thread until SIGINT (Ctrl-C) or SIGTERM, then shut down (main thread only)."""
        run_until_signal(self)

    def shutdown(self) -> None:
        """Tell every client the server is going, close every connection and stop the threads.

        Socket.IO clients get a DISCONNECT and their sessions a close packet, flushed for up to
        ``flush_timeout`` seconds. Idempotent; call it from any thread but serve_forever()'s.
        """
        self.acceptor.stop()
        # A client that connects from now on (a long-poll's next request) is refused, not left waiting.
        self.acceptor.close_listeners()
        with self._state_lock:
            first, self._closed = not self._closed, True
        if first and self._listening:
            self._say_goodbye()
        self._stop_threads()
        if first:
            self.refusal_log.flush()
            self.logger.info("Socket.IO service closed")

    def server_close(self) -> None:
        """Close the listener (and any connection still open)."""
        self.acceptor.close()
        self._stop_threads()

    # -- AcceptingServer's hooks ---------------------------------------------------------

    def on_listening(self) -> None:
        self._listening = True
        self.writer.tick = self._tick_period()
        self.writer.start()
        self.reader.start()
        self.logger.info("Socket.IO service listening on %s%s", self.address_text, " (TLS)" if self.tls_context else "")

    # -- connections -------------------------------------------------------------------

    def _start_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """The acceptor's hand-over: each connection gets its outbox and Engine.IO side, then the reader reads it."""
        deadline = time.monotonic() + self.head_timeout
        limit = 2 * max(engine.settings.max_backlog for engine in self._routes.values())
        conns = []
        for sock, address in accepted:
            peer = format_address(address)
            if self.no_delay:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            tls = TlsLayer(self.tls_context, server_side=True) if self.tls_context is not None else None
            outbox = Outbox(sock, limit, self.writer) if tls is None else TlsOutbox(sock, limit, self.writer, tls)
            conns.append(_Connection(sock, peer, outbox, tls, deadline, self._engine_connection))
        with self.lock:
            self._conns.update(conns)
        self.reader.add(conns)

    def _engine_connection(self, outbox: Outbox, peer: str, end: Callable[[str], None]) -> EngineConnection:
        """A connection's Engine.IO side: requests routed by path, answers written to *outbox*."""
        main = self._routes[next(iter(self._routes))]
        return EngineConnection(main, outbox.write, end, self._allowed_origin, peer, self.max_head, routes=self._routes)

    def _allowed_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a page from *origin* may use the service (None: no Origin, not a browser)."""
        if origin is None or "*" in self.origins or origin in self.origins:
            return True
        return origin == f"{'https' if self.tls_context else 'http'}://{host}"

    def _received(self, conn: _Connection, data: bytes) -> str | None:
        """Bytes from *conn* (reader thread): a reason to close it now, or None."""
        now = time.monotonic()
        engine = conn.engine
        refused = engine.refused
        failure = None
        with self.lock:
            if conn.tls is not None:
                try:
                    data = conn.tls.receive(data)
                except TlsError as error:
                    data, failure = b"", str(error)
                conn.outbox.write_raw(conn.tls.outgoing())
            if data:
                engine.receive(data, now)
            if failure is None and conn.tls is not None and conn.tls.peer_closed:  # close_notify: the client ended
                engine.receive_eof()
                conn.end("disconnected")
        if failure is not None:
            self.refusal_log.log(logging.INFO, "TLS failed with %s: %s", conn.peer, failure)
            return "TLS error"
        if engine.refused is not refused and engine.refused is not None:
            status, why = engine.refused
            self.refusal_log.log(logging.INFO, "Refused %s: %s %s (%s)", conn.peer, status, why, engine.last_request[:200])
        return None

    def _connection_closed(self, conn: _Connection, reason: str) -> None:
        """*conn* is closed (reader thread, or the one stopping it): its session learns so; it no longer counts."""
        with self.lock:
            self._conns.discard(conn)
            conn.outbox.close()
            conn.engine.connection_lost(reason)
        self.acceptor.forget(conn.sock)
        close_quietly(conn.sock)

    # -- timers and shutdown --------------------------------------------------------------

    def _tick_period(self) -> float:
        """How often the timers run: TIMER_STEPS times per shortest period, between 10 ms and a second."""
        periods = [self.head_timeout]
        for app in self._apps.values():
            settings = (app.engine if isinstance(app, SocketIOServer) else app).settings
            periods += [settings.ping_interval, settings.ping_timeout, settings.close_timeout]
            if isinstance(app, SocketIOServer):
                periods.append(app.connect_timeout)
        return min(1.0, max(0.01, min(periods) / TIMER_STEPS))

    def _sweep(self) -> None:
        """The timers (writer thread): heartbeats, connect timeouts, request deadlines."""
        now = time.monotonic()
        with self.lock:
            for app in self._apps.values():
                try:
                    app.tick(now)
                except Exception:  # a handler's bug (a disconnect handler, an Engine.IO app): the timers go on
                    self.logger.exception("Error in the Socket.IO timers")
            for conn in list(self._conns):
                conn.tick(now, self.head_timeout)

    def _say_goodbye(self) -> None:
        """Disconnect every client and close every session, then let it all drain for up to flush_timeout."""
        engines = list(self._routes.values())
        with self.lock:
            for engine in engines:  # a polling client's DISCONNECTs leave in one response
                engine.hold_output()
            try:
                for app in self._apps.values():
                    app.close_all("server shutting down")
            finally:
                for engine in engines:
                    engine.release_output()
        deadline = time.monotonic() + self.flush_timeout
        while time.monotonic() < deadline and self._backlog():
            time.sleep(0.01)  # deadline loop: the writer thread drains meanwhile

    def _backlog(self) -> int:
        with self.lock:
            return sum(conn.outbox.size for conn in self._conns)

    def _stop_threads(self) -> None:
        """Stop the reader (closing every connection) and the writer (idempotent)."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # the client sees the end now, not when the reader gets to it
            except OSError:
                pass
        self.reader.stop(conns)
        self.writer.stop()
        with self.lock:  # sessions still waiting for a client to collect their close: nobody will come now
            for engine in self._routes.values():
                try:
                    engine.drop_all("server shutting down")
                except Exception:
                    self.logger.exception("Error closing the Socket.IO sessions")
