"""A chat server's numbers for Prometheus: ``chat serve --metrics [HOST:]PORT``.

Design, and why:

- Nothing on the hot path. The chat core's counters (lines and bytes in and
  out, joins, departures, clients dropped as too slow) are plain integers
  that :class:`~socketlab.chat.service.ChatService` adds to under the lock it
  already holds at each event; everything else (members by transport, rooms,
  clients held by flood control, backlogs, the cluster's lag) is the server's
  own state. :class:`ChatCollector` -- a prometheus_client ``Collector`` on a
  registry of its own, never the process-wide one -- reads all of it when
  Prometheus scrapes, in one short hold of the chat lock (a list of the
  members, taken at C speed) plus, with ``--redis``, one Redis round trip.
- Refusals happen in several modules, and every one of them is logged
  through the acceptor's rate-limited refusal log; :class:`RefusalCounts`
  is that log, counting each refusal by its reason (the message it logs)
  before the rate limit, and whether or not the log level shows it.
- The HTTP side is prometheus_client's WSGI app on the standard library's
  ``wsgiref`` server with a thread per scrape (at most :data:`MAX_SCRAPES` at
  once, each given :data:`SCRAPE_TIMEOUT` seconds), on a thread of its own.
  It listens where it is told, 127.0.0.1 by default (docs/security.md says
  what it reveals and how to expose it safely).

For the chat server: ``ChatMetrics(server, (host, port))`` binds (raises
AddressError), ``start()``, ``close()`` (idempotent), ``address``.
Importing this module needs the ``metrics`` extra (``prometheus_client``).

Logger: ``socketlab.metrics`` (errors while collecting or serving).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from socketlab.access import RateLimitedLog
from socketlab.addresses import bind_error, format_address, resolve
from socketlab.chat.outbox import Outbox
from socketlab.chat.protocol import LOBBY
from socketlab.serving import serve_both_families

if TYPE_CHECKING:
    from socketlab.chat.server import ChatServer

logger = logging.getLogger("socketlab.metrics")

#: Scrapes served at once; a connection beyond them is closed at once (the port is meant for Prometheus).
MAX_SCRAPES = 8
#: Seconds a scrape's connection may take to send its request and read the answer.
SCRAPE_TIMEOUT = 10.0
#: How often the metrics thread checks for close(): close() returns within this.
POLL_INTERVAL = 0.1

#: What each refusal logged through the refusal log means, by the message it logs (see RefusalCounts).
REFUSAL_REASONS = {
    "Refused %s: server is full (%s)": "server_full",
    "Refused %s: not allowed": "not_allowed",
    "Refused %s: %s from that address already": "max_per_ip",
    "Refused Socket.IO connection from %s: too many open": "socketio_connections",
    "Refused web request from %s: %s (%s)": "bad_web_request",
    "TLS %s failed with %s: %s": "tls_failed",
    "TLS handshake failed with %s: %s": "tls_failed",
}
#: Every reason, each exported from the start (at 0) so that a dashboard's series exist before the first refusal.
REASONS = (*dict.fromkeys(REFUSAL_REASONS.values()), "other")


class RefusalCounts(RateLimitedLog):
    """The refusal log, counting refusals by reason as it logs them (thread-safe).

    Counted before the rate limit and the log level: a flood is counted whole,
    a quiet log (``-q``) counts too. A message it does not know counts as ``other``.
    """

    def __init__(self, logger: logging.Logger, *, what: str = "refused connections") -> None:
        super().__init__(logger, what=what)
        self._counts_lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def log(self, level: int, msg: str, *args: object, now: float | None = None) -> bool:
        reason = REFUSAL_REASONS.get(msg, "other")
        with self._counts_lock:
            self._counts[reason] += 1
        return super().log(level, msg, *args, now=now)

    def counts(self) -> dict[str, int]:
        """Refusals so far by reason, every reason in :data:`REASONS` included."""
        with self._counts_lock:
            return {reason: self._counts[reason] for reason in REASONS} | dict(self._counts)


@dataclass
class ChatFigures:
    """What one scrape read of a chat server (None: not known here, e.g. a core without the counter)."""

    #: Members on this server by transport: tcp (or unix), websocket, socketio.
    members: dict[str, int] = field(default_factory=dict)
    #: Rooms with members, the lobby when anyone is in it; in a cluster, the cluster's.
    rooms: int = 0
    #: Connections (and Socket.IO sessions) counted toward max_clients, and max_clients.
    connections: int = 0
    max_clients: int = 0
    held: int = 0
    backlog_bytes: int = 0
    backlog_clients: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    lines_received: int | None = None
    bytes_received: int | None = None
    lines_delivered: int | None = None
    bytes_delivered: int | None = None
    joins: int | None = None
    departures: int | None = None
    dropped_too_slow: int | None = None
    #: With --redis: members on every server of the cluster, rooms this server listens to, its steps
    #: not yet in Redis and how long the oldest has waited (None: not known now).
    cluster_members: int | None = None
    cluster_listening: int | None = None
    cluster_unpublished: int | None = None
    cluster_lag_seconds: float | None = None


#: ChatService's counters, by the name ChatFigures and the core give them.
_COUNTERS = ("lines_received", "bytes_received", "lines_delivered", "bytes_delivered", "joins", "departures", "dropped_too_slow")


def read_figures(server: ChatServer, refusals: RefusalCounts | None = None) -> ChatFigures:
    """Read *server*'s state and counters now (any thread but the chat's own; takes the chat lock briefly)."""
    service = server.service
    writer = server.writer
    in_cluster = getattr(service, "cluster", None) is not None
    with service.lock:
        members: list[Any] = list(service.view.members.values()) if in_cluster else service.hub.members  # type: ignore[attr-defined]
        if in_cluster:
            room_count = 0  # the cluster's own figures say (_read_cluster)
        else:
            rooms = service.hub.rooms
            room_count = len(rooms) - (0 if rooms[LOBBY].members else 1)
        counters = [getattr(service, name, None) for name in _COUNTERS]
        watched = writer._selector.get_map()  # only backlogs are watched (outbox.py); None once closed
        outboxes = [key.data for key in watched.values() if isinstance(key.data, Outbox)] if watched is not None else []
        backlog = sum(outbox.size for outbox in outboxes)
    figures = ChatFigures(rooms=room_count, backlog_bytes=backlog, backlog_clients=len(outboxes))
    for name, value in zip(_COUNTERS, counters, strict=True):
        setattr(figures, name, value)
    figures.members = _by_transport(members, line_label="unix" if server.socket.family == socket.AF_UNIX else "tcp")
    figures.connections = server.connection_count
    figures.max_clients = server.max_clients
    figures.held = server.reader.held_count
    if server.socketio_chat is not None:
        figures.held += server.socketio_chat.held_count
    if refusals is not None:
        figures.refusals = refusals.counts()
    if in_cluster:
        _read_cluster(service, figures)
    return figures


def _transport_labels() -> dict[type, str]:
    from socketlab.chat.connection import LineConnection
    from socketlab.chat.socketio_chat import SocketIOMember
    from socketlab.chat.web import WebConnection

    return {LineConnection: "line", WebConnection: "websocket", SocketIOMember: "socketio"}


def _by_transport(members: list[Any], line_label: str) -> dict[str, int]:
    """This server's members by transport label (a cluster's other servers' members have none here)."""
    labels = _transport_labels()
    counts = {line_label: 0, "websocket": 0, "socketio": 0}
    for kind, count in Counter(map(type, map(attrgetter("transport"), members))).items():
        label = next((labels[cls] for cls in kind.__mro__ if cls in labels), None)
        if label is not None:
            counts[line_label if label == "line" else label] += count
    return counts


def _read_cluster(service: Any, figures: ChatFigures) -> None:
    """The cluster's figures, as its core reports them (one Redis round trip); left out when Redis is away."""
    try:
        cluster = service.figures()
    except service.backend.errors as error:
        logger.debug("Cannot read the cluster's figures: %s", error)
        return
    figures.rooms = int(cluster["rooms"])
    figures.cluster_members = int(cluster["members"])
    figures.cluster_listening = int(cluster["listening"])
    figures.cluster_unpublished = int(cluster["unpublished"])
    figures.cluster_lag_seconds = float(cluster["lag_seconds"])


class ChatCollector(Collector):
    """Metric families of one chat server, read at scrape time (see the module docstring)."""

    def __init__(self, server: ChatServer, refusals: RefusalCounts | None = None) -> None:
        self.server = server
        self.refusals = refusals

    def collect(self) -> Iterator[Metric]:
        try:
            figures = read_figures(self.server, self.refusals)
        except Exception as error:  # a scrape must never take the server down, nor print a traceback
            logger.error("Cannot read the chat server's metrics: %s: %s", type(error).__name__, error)
            logger.debug("Traceback", exc_info=True)
            return
        yield from families(figures)


def families(figures: ChatFigures) -> Iterator[Metric]:
    """The metric families for *figures* (their names and help are docs/security.md's list)."""
    members = GaugeMetricFamily(
        "socketlab_chat_members", "Members in the chat on this server, by transport.", labels=["transport"]
    )
    for transport, count in figures.members.items():
        members.add_metric([transport], count)
    yield members
    yield GaugeMetricFamily(
        "socketlab_chat_rooms", "Rooms with members (the lobby when anyone is in it); in a cluster, the cluster's.", figures.rooms
    )
    yield GaugeMetricFamily(
        "socketlab_chat_connections", "Connections and Socket.IO sessions counted toward max clients.", figures.connections
    )
    yield GaugeMetricFamily("socketlab_chat_max_clients", "Clients served at once at most (--max-clients).", figures.max_clients)
    yield GaugeMetricFamily(
        "socketlab_chat_flood_held_clients", "Clients held back by flood control (--max-rate) now.", figures.held
    )
    yield GaugeMetricFamily(
        "socketlab_chat_backlog_bytes",
        "Bytes waiting in clients' outboxes for their sockets to take them.",
        figures.backlog_bytes,
    )
    yield GaugeMetricFamily(
        "socketlab_chat_backlog_clients", "Clients with bytes waiting in their outbox.", figures.backlog_clients
    )
    refusals = CounterMetricFamily("socketlab_chat_refusals", "Connections and requests refused, by reason.", labels=["reason"])
    for reason, count in figures.refusals.items():
        refusals.add_metric([reason], count)
    yield refusals
    counters = (
        ("lines_received", "socketlab_chat_lines_received", "Lines members sent (commands and too-long lines included)."),
        ("bytes_received", "socketlab_chat_received_bytes", "Bytes of the lines members sent (a line end counts one)."),
        (
            "lines_delivered",
            "socketlab_chat_lines_delivered",
            "Copies of lines handed to members (chat lines, notices and replies; a line to N members counts N).",
        ),
        ("bytes_delivered", "socketlab_chat_delivered_bytes", "Bytes of the lines handed to members (framing excluded)."),
        ("joins", "socketlab_chat_joins", "Clients that joined the chat."),
        ("departures", "socketlab_chat_departures", "Members that left the chat, for any reason."),
        ("dropped_too_slow", "socketlab_chat_dropped_too_slow", "Members dropped because their backlog overflowed."),
    )
    for attribute, name, text in counters:
        value = getattr(figures, attribute)
        if value is not None:
            yield CounterMetricFamily(name, text, value)
    if figures.cluster_members is not None:
        yield GaugeMetricFamily(
            "socketlab_chat_cluster_members", "Members on every server of the cluster.", figures.cluster_members
        )
    if figures.cluster_listening is not None:
        yield GaugeMetricFamily(
            "socketlab_chat_cluster_rooms_listened",
            "Rooms whose channel this server listens to: those its own members are in.",
            figures.cluster_listening,
        )
    if figures.cluster_unpublished is not None:
        yield GaugeMetricFamily(
            "socketlab_chat_cluster_unpublished_events",
            "This server's events (lines, joins, departures) waiting to be written to Redis.",
            figures.cluster_unpublished,
        )
    if figures.cluster_lag_seconds is not None:
        yield GaugeMetricFamily(
            "socketlab_chat_cluster_lag_seconds",
            "How long the oldest of this server's events waiting to be written to Redis has waited.",
            figures.cluster_lag_seconds,
        )


class _ScrapeHandler(WSGIRequestHandler):
    """wsgiref's request handler with a timeout, logging to socketlab.metrics at DEBUG instead of stderr."""

    timeout = SCRAPE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def get_stderr(self) -> Any:
        """Where wsgiref writes the traceback of a request that failed: socketlab.metrics at DEBUG."""
        return _DebugStream()


class _DebugStream:
    """A write-only stream whose text goes to socketlab.metrics at DEBUG."""

    def write(self, text: str) -> None:
        if text.strip():
            logger.debug("%s", text.rstrip())

    def flush(self) -> None:
        pass


class MetricsHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's WSGI app for *registry* on wsgiref's server, a thread per scrape (at most MAX_SCRAPES).

    Binds at once (AddressError names the address); ``serve_forever()`` on a thread of its own,
    ``shutdown()`` from another; ``server_close()``.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        host, port = address
        self.address_family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=True)
        self._scrapes = threading.BoundedSemaphore(MAX_SCRAPES)
        try:
            super().__init__(sockaddr, _ScrapeHandler)
        except OSError as error:
            raise bind_error(host, port, error) from None
        self.set_app(make_wsgi_app(registry))

    def server_bind(self) -> None:
        """Bind as socketserver does ("::" serves IPv4 too), without HTTPServer's reverse DNS lookup of the host."""
        serve_both_families(self.socket)
        socketserver.TCPServer.server_bind(self)
        self.server_name = format_address(self.server_address).rpartition(":")[0]
        self.server_port = self.server_address[1]
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._scrapes.acquire(blocking=False):
            logger.debug("Closed a metrics connection from %s: %d scrapes already", format_address(client_address), MAX_SCRAPES)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._scrapes.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._scrapes.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One DEBUG line (a scraper that timed out or went away), never a printed traceback."""
        error = sys.exc_info()[1]
        logger.debug("Metrics request from %s failed: %s: %s", format_address(client_address), type(error).__name__, error)


class ChatMetrics:
    """A chat server's metrics: refusals counted, a registry with its collector, the HTTP listener.

    Created by the ChatServer (with ``metrics``) right after its acceptor, so that it counts every
    refusal: it puts a :class:`RefusalCounts` in the acceptor's place of refusal log. Binds at
    once (raises AddressError); ``start()`` serves on a thread, ``close()`` stops and joins it.
    """

    def __init__(self, server: ChatServer, address: tuple[str, int]) -> None:
        acceptor = server.acceptor
        self.refusals = RefusalCounts(acceptor.refusal_log.logger, what=acceptor.refusal_log.what)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ChatCollector(server, self.refusals))
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open and allowed files
        self.http = MetricsHTTPServer(address, self.registry)
        acceptor.refusal_log = self.refusals
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def address(self) -> Any:
        """Where the metrics are served (port 0 resolved)."""
        return self.http.server_address

    @property
    def url(self) -> str:
        return f"http://{format_address(self.address)}/metrics"

    def start(self) -> None:
        """Serve scrapes on a thread of its own."""
        self._thread = threading.Thread(target=self.http.serve_forever, args=(POLL_INTERVAL,), name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the listener (idempotent; within POLL_INTERVAL)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.http.shutdown()
            self._thread.join()
        self.http.server_close()
