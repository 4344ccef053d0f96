"""The chat server: listeners, threads and transports around the chat core.

Design, and why:

- :class:`~socketlab.chat.service.ChatService` is the core: the sans-IO hub,
  its one lock, and delivery to each member's transport in the same lock
  hold, so every member of a room sees the room's lines in one order. It
  knows members only as transports (*send these bytes*, *close with this
  reason*); this module plugs transports into it.
- The accept thread (an :class:`~socketlab.serving.Acceptor`) takes TCP clients, and, with
  ``web``, browsers on a second listener. TCP clients accepted in one
  wake-up are welcomed together (a crowd joining costs one send per member);
  a browser joins once its WebSocket handshake is done.
- One :class:`~socketlab.chat.reader.ReaderLoop` thread reads every
  connection, whatever its transport: :class:`LineConnection` (lines over
  TCP) or :class:`~socketlab.chat.web.WebConnection` (lines in WebSocket text
  messages). No thread per client.
- Bytes go out without ever blocking: each :class:`Outbox` offers data to
  the kernel at once; only what it does not take waits, bounded by
  ``max_backlog``, for the one :class:`BacklogWriter` thread, which also
  runs the timers (idle clients, keepalive pings, handshake deadlines). A
  client that never reads fills only its own backlog and is dropped as
  ``too slow``; nobody else waits.

Loggers: ``socketlab.chat`` (lifecycle), ``socketlab.chat.clients``
(connects, joins, nick changes, departures), ``socketlab.chat.messages``
(message text, at DEBUG), ``socketlab.chat.web`` (refused web requests).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from socketlab.addresses import format_address
from socketlab.chat.config import DEFAULT_MAX_BACKLOG, ChatConfig
from socketlab.chat.connection import Connection, LineConnection
from socketlab.chat.flood import FloodGate
from socketlab.chat.outbox import BacklogWriter, Outbox, TlsOutbox
from socketlab.chat.protocol import ChatHub
from socketlab.chat.reader import FLUSH_TIMEOUT, ReaderLoop
from socketlab.chat.service import ChatCore, ChatService

from socketlab.chat.socketio_chat import SocketIOChat
from socketlab.chat.web import WebConnection, WebSession, WebSite, load_pages
from socketlab.collector import ArrivalFreezer
from socketlab.engineio import EngineSettings
from socketlab.socketio import SocketIOServer
from socketlab.static import StaticFolder
from socketlab.serving import Acceptor, AcceptingServer, allow_clients, listen, listen_backlog, open_listener, somaxconn
from socketlab.unix import UnixAddress
from socketlab.text import plural
from socketlab.timers import Deadlines
from socketlab.tls import TlsLayer

if TYPE_CHECKING:
    from socketlab.metrics import ChatMetrics

#: Timers run per hold of the lock in a sweep (a few milliseconds of work at most).
SWEEP_SLICE = 256
#: The longest time between sweeps: often, so that timers coming due together are run in small batches.
SWEEP_EVERY = 0.25
#: Seconds shutdown waits for long-polling clients to fetch their goodbye: a live one polls again at once.
POLL_GOODBYE_TIMEOUT = 0.5

logger = logging.getLogger("socketlab.chat")
web_log = logging.getLogger("socketlab.chat.web")
client_log = logging.getLogger("socketlab.chat.clients")


__all__ = ["ChatServer", "DEFAULT_MAX_BACKLOG", "FLUSH_TIMEOUT", "Outbox"]


class ChatServer(AcceptingServer):
    """Line-based chat with rooms over TCP, and over WebSocket with ``web`` (see docs/protocol.md).

    ``ChatServer(("127.0.0.1", 0), room_size=2)`` binds at once; run
    ``serve_forever()`` on a thread and stop with ``shutdown()`` or a ``with``
    block. Raises AddressError when an address cannot be bound. Given a
    :class:`~socketlab.unix.UnixAddress`, line clients connect to that UNIX
    socket file instead of a TCP port (access rules and max_per_ip do not
    apply to them; the web listener, if any, stays TCP).

    Its settings are a :class:`~socketlab.chat.config.ChatConfig` (limits,
    web, TLS, cluster; each documented there), given whole as *config*, or
    as keyword arguments over the defaults, or both (the keywords win):
    ``ChatServer(address, config, max_rate=20)``. With ``redis`` it joins a
    cluster and raises ClusterError when it cannot. ``web_site`` replaces
    the page and WebSocket settings (tests); ``logger`` receives the
    lifecycle log.
    """

    too_many_message = b"! too many connections from your address\n"

    full_message = b"! server full\n"
    #: Web connections in their HTTP request (or TLS handshake) beyond the clients the server takes: more
    #: wait in the kernel's listen queue until one is done, so a reconnect storm is served, not refused.
    max_pending_web: int = 256

    def __init__(
        self,
        address: tuple[str, int] | UnixAddress,
        config: ChatConfig | None = None,
        *,
        web_site: WebSite | None = None,
        logger: logging.Logger = logger,
        **settings: Any,
    ) -> None:
        config = (config or ChatConfig()).replace(**settings)
        self.config = config
        # -- before anything is opened: room for max_clients (OpenFilesError), the metrics extra --
        if config.reuse_port and not config.redis:
            raise ValueError("reuse_port needs redis: servers sharing a port without one cluster would split the chat")
        allow_clients(config.max_clients, extra=self.max_pending_web if config.web is not None else 0)
        if config.metrics is not None:
            from socketlab.metrics import ChatMetrics  # needs prometheus_client (the metrics extra)
        self.max_line = max_line = config.max_line
        self.max_backlog = config.max_backlog
        self.idle_timeout = config.idle_timeout or None
        self.tls_context = tls = config.tls
        self.handshake_timeout = config.handshake_timeout
        self.max_rate = config.max_rate
        web = config.web
        hub = ChatHub(
            room_size=config.room_size,
            max_line=max_line,
            announce_limit=config.announce_limit,
            announce_rate=config.announce_rate,
        )
        self.service: ChatCore
        if config.redis:
            from socketlab.chat.cluster import ClusterService

            self.service = ClusterService(hub, config.redis, config.cluster)
        else:
            self.service = ChatService(hub)
        self.service.start()
        self.hub = self.service.hub
        self.lock = self.service.lock
        if web is not None and web_site is None:
            web_site = WebSite(
                load_pages(),
                folder=StaticFolder(config.web_root) if config.web_root is not None else None,
                origins=config.web_origins,
                scheme="https" if tls else "http",
                max_line=max_line,
                max_message=max(65536, 4 * max_line),
            )
        self.web_site = web_site if web is not None else None
        #: Connections not in the hub yet (a TLS or WebSocket handshake under way).
        self._handshaking: set[Connection] = set()
        self._web_members: set[WebConnection] = set()
        #: Web connections that carry Socket.IO (Engine.IO requests or its WebSocket).
        self._engine_conns: set[WebConnection] = set()
        #: Connections whose timers (handshake deadline, keepalive) are due next, and members by idle
        #: deadline: a sweep takes out only what is due, whatever the number of members (chat lock).
        self._timers: Deadlines[Connection] = Deadlines()
        self._idle: Deadlines[Any] = Deadlines()
        self.socketio: SocketIOServer | None = None
        self.socketio_chat: SocketIOChat | None = None
        self.web_socket: socket.socket | None = None
        self._web_address: Any = None
        self.logger = logger
        self.max_clients = config.max_clients
        #: Keeps the collector from walking members that are all alive (see socketlab.collector).
        self.freezer = ArrivalFreezer()
        #: Accepts on both listeners, screens, counts members toward max_clients.
        self.acceptor = Acceptor(
            max_clients=config.max_clients,
            logger=logger,
            access=config.access,
            max_per_ip=config.max_per_ip,
            blocking=False,
            full_message=self.full_message,
            too_many_message=self.too_many_message,
        )
        # -- metrics: bound now, counting every refusal from here on (it becomes the refusal log) --
        self.metrics: ChatMetrics | None = None
        if config.metrics is not None:
            try:
                self.metrics = ChatMetrics(self, config.metrics)
            except Exception:
                self.acceptor.close()
                self.service.stop()
                raise
        self.refusal_log = self.acceptor.refusal_log
        if self.web_site is not None and config.socketio:
            self._serve_socketio(self.web_site, config)
        self._closed = False
        #: Connections the kernel queues before accept(): all of max_clients at once (a reconnect storm).
        self.listen_backlog = listen_backlog(config.max_clients)
        try:
            self.socket = listen(address, self.listen_backlog, reuse_port=config.reuse_port)
        except Exception:
            self.acceptor.close()
            if self.metrics is not None:
                self.metrics.close()
            self.service.stop()
            raise
        self.server_address = self.socket.getsockname()
        self.acceptor.add_listener(self.socket, self.start_connections, admit=True)
        self.writer = BacklogWriter(self.lock, self._tick(), self.sweep)
        self.reader = ReaderLoop(self)
        if hasattr(self.service, "resume_reading"):  # a cluster's core may ask for a client not to be read for a while
            self.service.resume_reading = self.reader.resume_reading
        if self.web_site is not None and self.web_site.refusals is None:
            self.web_site.refusals = self.refusal_log  # rate-limited, like every refusal
        if web is not None:
            try:
                self.web_socket = open_listener(*web, backlog=self.listen_backlog, reuse_port=config.reuse_port)
            except Exception:
                self.server_close()
                self.reader.stop()
                self.writer.stop()
                if self.metrics is not None:
                    self.metrics.close()
                self.service.stop()
                raise
            self._web_address = self.web_socket.getsockname()
            self.acceptor.add_listener(self.web_socket, self.start_web_connections, room=self._web_room)

    def _serve_socketio(self, site: WebSite, config: ChatConfig) -> None:
        """Answer Socket.IO at the site's ``/socket.io/``: its members join the same hub."""
        settings = EngineSettings(
            ping_interval=config.socketio_ping_interval,
            ping_timeout=config.socketio_ping_timeout,
            max_backlog=config.max_backlog,
            # A handshake takes no seat: sessions are bounded apart, with room for every member and as many
            # handshakes again (a full server still answers those with Socket.IO's own 'server full').
            max_sessions=2 * config.max_clients,
        )
        self.socketio = SocketIOServer(settings, connect_timeout=config.socketio_connect_timeout)
        self.socketio_chat = SocketIOChat(self.service, self.acceptor, config.max_line, config.max_rate)
        self.socketio_chat.on_joined = lambda transport: self._members_arrived([transport])
        self.socketio.of("/", self.socketio_chat)
        site.engine = self.socketio.engine
        site.engine_started = self._engine_started
        site.engine_settle = self.socketio_chat.settle

    @property
    def web_address(self) -> Any:
        """The web listener's real address (port 0 resolved), or None without ``web``."""
        return self._web_address

    def _tick(self) -> float | None:
        """How often the timers run: often enough for the shortest of them."""
        periods = []
        if self.idle_timeout:
            periods.append(self.idle_timeout / 4)
        if self.tls_context is not None:
            periods.append(self.handshake_timeout / 4)
        if self.web_site is not None:
            site = self.web_site
            periods += [site.head_timeout / 4, site.ping_interval / 4, site.ping_timeout / 4]
            if self.socketio is not None:
                engine = self.socketio.engine.settings
                periods += [engine.ping_interval / 4, engine.ping_timeout / 4, self.socketio.connect_timeout / 4]
        return min([SWEEP_EVERY, *periods]) if periods else None

    # -- for the caller (and AcceptingServer's address_text, connection_count, serve_forever, with) --

    def shutdown(self) -> None:
        """Tell every client the server is going, flush, close them all and stop the threads (idempotent).

        The listeners take connections while the goodbye is flushed: a Socket.IO long-polling client
        between two polls opens its next GET on a new connection, and that GET carries its goodbye.
        Then they are closed before the connections are: a client connecting later is refused, not
        left waiting.
        """
        self.say_goodbye()
        self.acceptor.stop()
        self.acceptor.close_listeners()
        self.close_sockets()
        self._wait_for_reader(time.monotonic() + FLUSH_TIMEOUT)
        first, self._closed = not self._closed, True
        if first:
            self.refusal_log.flush()
            self.logger.info("Server closed")
        self.writer.stop()
        self.service.stop()
        if self.metrics is not None:
            self.metrics.close()

    def server_close(self) -> None:
        """Close the listeners (and any connection still open)."""
        self.acceptor.close()
        if self.connection_count:
            self.close_connections()

    def on_listening(self) -> None:
        self.writer.start()
        self.reader.start()
        self.logger.info("Server is listening on %s%s", self.address_text, " (TLS)" if self.tls_context else "")
        if self.web_socket is not None:
            scheme = "https" if self.tls_context else "http"
            self.logger.info("Web chat on %s://%s/", scheme, format_address(self.web_address))
        cluster = getattr(self.service, "cluster", None)
        if cluster is not None:
            # Servers sharing a port (--reuse-port) share an address: their process tells them apart in logs.
            name = f"{self.address_text} (pid {os.getpid()})" if self.config.reuse_port else self.address_text
            self.service.named(name)  # type: ignore[attr-defined]
            self.logger.info("Joined cluster %s as %s", cluster, name)
        # -- the operator's view: metrics, and a listen backlog the kernel caps --
        if self.metrics is not None:
            self.metrics.start()
            self.logger.info("Metrics on %s", self.metrics.url)
        cap = somaxconn()
        if cap is not None and cap < self.listen_backlog:
            self.logger.info(
                "The kernel queues at most %d connections before accept (net.core.somaxconn): "
                "for %d clients connecting at once, raise it (sysctl -w net.core.somaxconn=%d)",
                cap,
                self.max_clients,
                self.listen_backlog,
            )

    # -- TCP clients ----------------------------------------------------------

    def start_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """Welcome TCP clients accepted together and hand them to the reader thread.

        Over TLS they join the hub once their handshake is done (join_late()).
        """
        if self.tls_context is not None:
            deadline = time.monotonic() + self.handshake_timeout
            conns: list[Connection] = []
            for sock, address in accepted:
                tls = TlsLayer(self.tls_context, server_side=True)
                outbox = self._outbox(sock, tls)
                conns.append(LineConnection(sock, format_address(address), outbox, self.max_line, tls, deadline))
            with self.lock:
                self._handshaking.update(conns)
                for conn in conns:
                    self._watch(conn)
            self.reader.add(self._gated(conns))
            self.freezer.arrived(len(accepted))
            return
        conns = [LineConnection(sock, format_address(address), self._outbox(sock), self.max_line) for sock, address in accepted]
        self.reader.add(self._gated(conns), join=True)  # welcomed by the reader thread: accepting goes on
        self.freezer.arrived(len(accepted))

    def _gated(self, conns: list[Connection]) -> list[Connection]:
        """*conns* with their flood gates, if the server limits clients."""
        if self.max_rate > 0:
            now = time.monotonic()
            for conn in conns:
                conn.gate = FloodGate(self.max_rate, now)
        return conns

    def _join(self, conns: list[Connection]) -> bool:
        """Put *conns* in the hub and start reading them; False if they were refused."""
        try:
            members = self.service.join(conns)
        except Exception as error:  # a bug in the hub: refuse these clients, keep serving
            self.logger.error("Cannot welcome %d new client(s): %s: %s", len(conns), type(error).__name__, error)
            for conn in conns:
                self.reader.abandon(conn)
            return False
        if members is None:  # shutting down, or (in a cluster) the backend is away: they were told
            for conn in conns:
                self.reader.finish(conn)
            return False
        for conn, member in zip(conns, members, strict=True):
            conn.joined(member)
        self._members_arrived(conns)
        return True

    def _members_arrived(self, transports: Sequence[Any]) -> None:
        """New members, of any transport: their idle timers; what their handshakes and joins built is frozen."""
        self._watch_idle(transports)
        self.freezer.built()

    # -- web clients ------------------------------------------------------------

    def start_web_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """Start reading web clients' HTTP requests (they join the hub after the upgrade)."""
        assert self.web_site is not None
        now = time.monotonic()
        conns: list[Connection] = []
        with self.lock:  # the acceptor took no more than _web_room() allowed
            for sock, address in accepted:
                conn = self._web_connection(sock, format_address(address), now)
                self._handshaking.add(conn)
                self._watch(conn)
                conns.append(conn)
        if conns:
            self.reader.add(self._gated(conns))
        self.freezer.arrived(len(accepted))

    def _web_connection(self, sock: socket.socket, peer: str, now: float) -> WebConnection:
        assert self.web_site is not None
        # No Nagle on the web port, as Node's WebSocket and HTTP servers have it: an answer that goes out while
        # the previous one is unacknowledged would otherwise wait for the client's delayed ACK, 40 ms. In the
        # churn benchmark beside 5,000 Socket.IO members, a new member's connect, room join and first line took
        # about 50 ms with Nagle on, 2 ms with it off.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = WebSession(self.web_site, now)
        if self.tls_context is None:
            return WebConnection(sock, peer, self._outbox(sock), session, self.lock)
        tls = TlsLayer(self.tls_context, server_side=True)
        return WebConnection(sock, peer, self._outbox(sock, tls), session, self.lock, tls, now + self.handshake_timeout)

    def _outbox(self, sock: socket.socket, tls: TlsLayer | None = None) -> Outbox:
        """A new client's outbox, encrypting with *tls* if given."""
        if tls is None:
            return Outbox(sock, self.max_backlog, self.writer)
        return TlsOutbox(sock, self.max_backlog, self.writer, tls)

    def _web_room(self) -> int:
        """How many more web connections may start their request now (accept thread).

        Requests in flight are bounded by the clients the server takes (each will be one) plus
        max_pending_web (pages, refusals), and by time (the head timeout), not by a small count:
        a crowd of honest clients after a restart starts at once instead of waiting in the listen
        queue, where a full queue drops connection attempts that the clients retry seconds later.
        """
        return self.max_clients + self.max_pending_web - self.acceptor.count - len(self._handshaking)

    def join_arrivals(self, conns: list[Connection]) -> bool:
        """TCP clients accepted together, handed to the reader thread to join (reader thread)."""
        return self._join(conns)

    def join_late(self, conn: Connection) -> None:
        """A client finished its handshake (TLS, WebSocket): make it a member, or refuse it (reader thread).

        A browser is counted toward max_clients before it stops counting as a request in flight, so
        the web listener's room (_web_room) never sees it as neither. Its outbox, held since the
        upgrade, sends the answer and the welcome (or the refusal) together.
        """
        try:
            self._join_late(conn)
        finally:
            with self.lock:
                conn.outbox.release()

    def _join_late(self, conn: Connection) -> None:
        web = isinstance(conn, WebConnection)
        seated = web and self.acceptor.register(conn.sock)
        with self.lock:
            self._handshaking.discard(conn)
        self.acceptor.resume()
        if not web:  # a TCP client over TLS, counted when accepted
            if self._join([conn]):
                client_log.debug("TLS %s with %s", conn.tls.version if conn.tls else "", conn.peer)
            return
        assert isinstance(conn, WebConnection)
        if not seated:
            self.refusal_log.log(
                logging.WARNING, "Refused %s: server is full (%s)", conn.peer, plural(self.max_clients, "client")
            )
            self._refuse(conn, "server full", self.full_message)
            return
        with self.lock:
            self._web_members.add(conn)
            self._watch(conn)  # its keepalive
        if not self._join([conn]):
            self._refuse(conn, "server shutting down" if self.service.shutting_down else "chat backend unavailable", b"")

    def _engine_started(self, conn: WebConnection) -> None:
        """*conn* turned out to carry Socket.IO (lock held): its sessions' timers run it from now on.

        Its clients count toward max_clients by their sessions (a seat each), not by connections:
        a polling client holds two at times. The connections are bounded on their own.
        """
        self._handshaking.discard(conn)
        self.acceptor.resume()
        if len(self._engine_conns) >= 2 * self.max_clients + self.max_pending_web:
            self.refusal_log.log(logging.WARNING, "Refused Socket.IO connection from %s: too many open", conn.peer)
            conn.outbox.end("too many connections")
            return
        self._engine_conns.add(conn)
        self._watch(conn)
        # What its first request built (a WebSocket's protocol, a session) is frozen now: in a crowd, its chat
        # join comes a round trip later, and meanwhile the collector walked thousands of them (measured:
        # 3-6 full collections of 25-116 ms in a 19,000-member Socket.IO storm, none finding garbage).
        self.freezer.built()

    def _watch(self, conn: Connection) -> None:
        """Run *conn*'s timers when they next have something to do (lock held)."""
        when = conn.next_tick()
        if when is None:
            self._timers.cancel(conn)
        else:
            self._timers.schedule(conn, when)

    def _watch_idle(self, transports: Sequence[Any]) -> None:
        """With --idle-timeout, check *transports* (new members) once they may have idled that long."""
        if self.idle_timeout:
            expires = time.monotonic() + self.idle_timeout
            with self.lock:
                for transport in transports:
                    self._idle.schedule(transport, expires)

    def _refuse(self, conn: WebConnection, reason: str, line: bytes) -> None:
        with self.lock:
            if line:
                conn.send(line)
            conn.goodbye(reason)
            conn.session.ended = reason

    # -- for the reader and writer threads --------------------------------------

    def connection_closed(self, conn: Connection) -> None:
        """*conn* is closed: it no longer counts anywhere."""
        self.acceptor.forget(conn.sock)
        self.freezer.departed()
        with self.lock:
            self._timers.cancel(conn)
            self._idle.cancel(conn)
            if conn in self._handshaking:
                self._handshaking.discard(conn)
                self.acceptor.resume()
            if isinstance(conn, WebConnection):
                self._web_members.discard(conn)
                self._engine_conns.discard(conn)
                conn.session.connection_lost("closed")
        if self.socketio_chat is not None:
            self.socketio_chat.settle()

    def sweep(self) -> None:
        """The timers that are due: overdue handshakes, quiet browsers pinged, idle clients dropped.

        Only what is due is looked at (a timer wheel): the work follows the timers that fire, not the
        number of members. An idle deadline that fires for a member active since is moved on. The lock is
        taken for SWEEP_SLICE timers at a time, so that thousands coming due together (the members of a
        storm reach their keepalive together) never hold the reader up for long.
        """
        now = time.monotonic()
        idle = self.idle_timeout
        idle_out: set[Any] = set()

        def timers_slice() -> bool:
            due = self._timers.due(now, SWEEP_SLICE)
            for conn in due:
                conn.tick(now)
                self._watch(conn)
            if not idle:
                return len(due) == SWEEP_SLICE
            expired = self._idle.due(now, SWEEP_SLICE)
            for transport in expired:
                expires = transport.last_active + idle
                if transport.departed:
                    continue
                if expires <= now:
                    idle_out.add(transport)
                else:
                    self._idle.schedule(transport, expires)
            return len(due) == SWEEP_SLICE or len(expired) == SWEEP_SLICE

        self._in_slices(timers_slice, len(self._timers) + len(self._idle))
        if idle_out:  # rare: only then are the members looked through
            self.service.close_members(idle_out.__contains__, "idle timeout", f"! idle for {idle:g} s, disconnecting\n".encode())
        if self.socketio is not None and self.socketio_chat is not None:
            socketio = self.socketio
            self._in_slices(lambda: socketio.tick(now, SWEEP_SLICE), len(socketio.engine.sessions))
            with self.lock:
                self.socketio_chat.tick(now)
            self.socketio_chat.settle()

    def _in_slices(self, run_slice: Callable[[], bool], timers: int) -> None:
        """Call *run_slice* (SWEEP_SLICE due timers, lock held; True: more may be due) until it says no
        more, letting the lock go in between -- at most enough times for *timers*: a timer put back at a
        time already past (a tick that found nothing to do yet) waits for the next sweep instead of
        coming due again and again."""
        for _ in range(timers // SWEEP_SLICE + 1):
            with self.lock:
                more = run_slice()
            if not more:
                return
            time.sleep(0)  # the reader may have waited for the lock: let it in

    # -- lifecycle ----------------------------------------------------------------

    def close_connections(self) -> None:
        """Tell everyone the server is going, flush for up to 2 s, then close."""
        self.say_goodbye()
        self.close_sockets()

    def say_goodbye(self) -> None:
        """Tell everyone the server is going (once), and wait up to 2 s for it to be sent."""
        engine = self.socketio.engine if self.socketio is not None else None
        if engine is not None:
            with self.lock:  # the notice, the DISCONNECT and the close travel together
                engine.hold_output()
        if self.service.shut_down():
            if engine is not None and self.socketio_chat is not None:
                with self.lock:  # sessions not (yet) in the chat are told too
                    engine.close_all()
                    engine.release_output()
                self.socketio_chat.settle()
            now = time.monotonic()
            deadline, polls_deadline = now + FLUSH_TIMEOUT, now + POLL_GOODBYE_TIMEOUT
            while (now := time.monotonic()) < deadline and self._backlog_bytes(sessions=now < polls_deadline):
                time.sleep(0.01)  # deadline loop: the writer thread drains meanwhile

    def close_sockets(self) -> None:
        """End every connection (the reader sees each end and closes it)."""
        with self.lock:
            handshaking = [conn.sock for conn in (*self._handshaking, *self._engine_conns)]
        for sock in [*handshaking, *self.acceptor.sockets()]:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the reader sees each end and closes it
            except OSError:
                pass

    def _wait_for_reader(self, deadline: float) -> None:
        """Wait until the reader thread has closed every connection, then stop it."""
        while self.reader.count and time.monotonic() < deadline:
            time.sleep(0.01)  # deadline loop: the reader thread closes them meanwhile
        self.reader.stop()

    def _backlog_bytes(self, sessions: bool = False) -> int:
        """Bytes still owed to clients: members' backlogs (and, with *sessions*, what Engine.IO sessions hold
        for a next poll, which a client that is gone never makes)."""
        transports = self.service.local_transports()
        with self.lock:
            waiting = sum(transport.backlog for transport in transports)
            if sessions and self.socketio is not None:  # told goodbye; their members have left the chat already
                waiting += sum(session.backlog for session in self.socketio.engine.sessions.values())
            return waiting + sum(conn.outbox.size for conn in self._engine_conns)
