"""The chat's WebSocket transport: the page, the handshake, lines in text messages.

A browser connects to the web address: ``GET /`` (and the page's two static
files) are answered and closed; ``GET /ws`` upgrades to a WebSocket whose
text messages carry the chat's line protocol unchanged -- each message from
the client is one or more lines (the last newline optional), each message to
it one or more whole lines.

:class:`WebSession` is sans-IO: bytes in, chat lines out, bytes to send
queued. The HTTP parsing, the handshake, framing, masking, ping/pong and the
closing handshake are ``websockets``' Sans-I/O :class:`ServerProtocol`;
this module adds routing, the Origin rule, limits (request head size and
time, message size, ping rate, keepalive) and the line framing.
:class:`WebConnection` joins a session to a socket's outbox for the reader loop.
"""

from __future__ import annotations

import codecs
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Sequence

from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from socketlab.chat.connection import Connection
from socketlab.chat.opening import HTTPS_ANSWER
from socketlab.chat.outbox import Outbox
from socketlab.access import TokenBucket
from socketlab.engineio import EngineServer
from socketlab.engineio_http import EngineConnection, release_websocket
from socketlab.lines import Item, LineBuffer
from socketlab.static import CLIENT_FILES, StaticFolder
from socketlab.tls import TlsLayer

logger = logging.getLogger("socketlab.chat.web")
#: websockets' own per-connection log lines stay quiet: this module logs one line per event instead.
_protocol_log = logging.getLogger("socketlab.chat.web.protocol")
_protocol_log.setLevel(logging.CRITICAL + 1)
_protocol_log.propagate = False

#: Longest request head (request line and headers) before the request is refused.
MAX_HEAD = 8192
#: Seconds a client has to send its whole request head.
HEAD_TIMEOUT = 10.0
#: A quiet WebSocket is pinged after this many seconds...
PING_INTERVAL = 20.0
#: ... and closed (1011) when no pong has come this many seconds after the ping.
PING_TIMEOUT = 20.0
#: A connection's first ping comes up to this share of the interval early, at random: a crowd that connected
#: at once and stays quiet is not pinged at once, and then every interval after.
PING_SPREAD = 0.5
#: Pings a client may send per second (a burst of as many) before it is closed (1008).
MAX_PINGS_PER_SECOND = 20.0

#: URL path -> (file in socketlab/chat/static, Content-Type). Nothing else is ever served.
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
_PAGE_HEADERS = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"),
    ("Connection", "close"),
)
#: Headers of a file from the user's own folder (its page is theirs: no Content-Security-Policy of ours).
_FOLDER_HEADERS = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Connection", "close"),
)
#: The answer to a request for the Socket.IO client when there is none to serve.
_NO_CLIENT = (
    "Not found. socketlab does not ship the Socket.IO client: serve a folder that has it\n"
    "(`npm i socket.io` in the folder, then `socketlab chat serve --web PORT --web-root FOLDER`).\n"
)

#: The departure reason of a connection the server closed with this code.
_CLOSE_REASONS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNSUPPORTED_DATA: "binary message",
    CloseCode.INVALID_DATA: "invalid UTF-8",
    CloseCode.POLICY_VIOLATION: "too many pings",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.INTERNAL_ERROR: "keepalive timeout",
}
#: The close code for a departure the server starts, by reason.
_CLOSE_CODES = {
    "server shutting down": CloseCode.GOING_AWAY,
    "server full": CloseCode.TRY_AGAIN_LATER,
}


def load_pages() -> dict[str, tuple[bytes, str]]:
    """The page's files from the package: URL path -> (body, Content-Type)."""
    static = resources.files("socketlab.chat") / "static"
    return {path: (static.joinpath(name).read_bytes(), kind) for path, (name, kind) in PAGES.items()}


@dataclass
class WebSite:
    """What every web connection of one server shares."""

    pages: dict[str, tuple[bytes, str]]
    #: The user's own folder (``--web-root``), served instead of ``pages`` (None: socketlab's page).
    folder: StaticFolder | None = None
    #: Origins allowed besides the page's own (``--web-origin``).
    origins: tuple[str, ...] = ()
    #: "http" (or "https" behind TLS): the scheme of the page's own origin.
    scheme: str = "http"
    #: Largest WebSocket message accepted (bigger ones close with 1009).
    max_message: int = 65536
    max_line: int = 4096
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    #: The first ping's spread (see PING_SPREAD; 0: after exactly ping_interval of quiet).
    ping_spread: float = PING_SPREAD
    head_timeout: float = HEAD_TIMEOUT
    #: Where refused requests are logged: the server's rate-limited log (None: this module's logger).
    refusals: Any = None
    #: Engine.IO (Socket.IO) sessions, answered at ``engine_paths`` (None: not served).
    engine: EngineServer | None = None
    engine_paths: tuple[str, ...] = ("/socket.io/",)
    #: Called (lock held) with a connection that turned out to carry Engine.IO, not the page or /ws.
    engine_started: Any = None
    #: Called (lock not held) after Engine.IO input, to run what it asked of the chat.
    engine_settle: Any = None
    #: The last text frame made and the bytes it holds (used under the chat lock).
    _framed: tuple[bytes, bytes] = field(default=(b"", b""), init=False, repr=False)

    def allowed_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a page from *origin* may talk to this site (None: no Origin, not a browser)."""
        return origin is None or origin == f"{self.scheme}://{host}" or origin in self.origins

    def text_frame(self, data: bytes) -> bytes:
        """*data* as one unmasked text frame, the last one cached: a delivery to many browsers is framed once.

        Server frames are unmasked and this server negotiates no extension, so one frame fits every
        connection of the site.
        """
        framed = self._framed
        if framed[0] is not data:
            framed = self._framed = (data, Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[]))
        return framed[1]


def _is_engine_target(target: bytes, path: bytes) -> bool:
    """Whether a request target is for Engine.IO at *path*, not for a file of the client bundle there."""
    if not target.startswith(path):
        return False
    rest = target[len(path) :].partition(b"?")[0]
    return rest.decode("latin-1") not in CLIENT_FILES


def head_size(request: Request) -> int:
    """The bytes of *request*'s head as sent (request line, headers, the blank line)."""
    size = len(f"{request.method} {request.path} HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())


def _is_client_file(path: str) -> bool:
    return path.startswith("/socket.io/") and path[len("/socket.io/") :] in CLIENT_FILES


def _file_response(body: bytes, kind: str, extra: Sequence[tuple[str, str]]) -> Response:
    return Response(200, "OK", Headers([("Content-Type", kind), ("Content-Length", str(len(body))), *extra]), body)


class WebSession:
    """One web connection, sans-IO: an HTTP request, then maybe a WebSocket.

    ``receive(data, now)`` returns the chat lines completed by *data*;
    ``outgoing()`` the bytes to send (``b""``: end our side);
    ``opened`` turns true once the upgrade is sent, ``ended`` says why the
    connection is over. ``tick(now)`` runs the timers.
    """

    __slots__ = (
        "site",
        "_protocol",
        "framer",
        "_utf8",
        "_unfinished",
        "_head_bytes",
        "_head_start",
        "_head_tail",
        "_queued",
        "_deadline",
        "request",
        "status",
        "opened",
        "ended",
        "_last_heard",
        "last_message",
        "_ping_sent",
        "_ping_early",
        "_pings",
        "_routing",
        "engine",
        "_served",
        "_write",
        "_end",
        "_peer",
    )

    def __init__(self, site: WebSite, now: float) -> None:
        self.site = site
        #: websockets' protocol, made when first used: a connection that turns out to carry Engine.IO
        #: (which has its own) never pays for it, in time or memory.
        self._protocol: ServerProtocol | None = None
        self.framer = LineBuffer(site.max_line)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        #: Lines of a fragmented message whose final fragment has not come yet (at most max_message bytes).
        self._unfinished: list[Item] = []
        self._head_bytes = 0
        self._head_start = b""
        #: The last bytes of the head so far: where its blank line may begin.
        self._head_tail = b""
        #: Bytes to send before the protocol's own (an answer websockets did not give).
        self._queued: list[bytes] = []
        self._deadline = now + site.head_timeout
        self.request: Request | None = None
        self.status: int | None = None
        self.opened = False
        self.ended: str | None = None
        self._last_heard = now
        #: When the client last sent a text message (or connected): what the idle timeout measures.
        #: Pongs and pings are the keepalive, not activity: a browser answers pings by itself.
        self.last_message = now
        self._ping_sent: float | None = None
        #: How much earlier than ping_interval the first ping goes (see PING_SPREAD); 0 once it went.
        self._ping_early = site.ping_spread * site.ping_interval * random.random()
        #: Pings the client may send: MAX_PINGS_PER_SECOND a second, as many at once.
        self._pings = TokenBucket(MAX_PINGS_PER_SECOND, MAX_PINGS_PER_SECOND, now)
        #: Bytes of a request line not yet long enough to route (Engine.IO or not).
        self._routing = b"" if site.engine is not None else None
        #: Set once the first request is for Engine.IO: it then has the connection.
        self.engine: EngineConnection | None = None
        self._served = 0
        self._write: Any = None
        self._end: Any = None
        self._peer = ""

    @property
    def protocol(self) -> ServerProtocol:
        """The WebSocket (and HTTP request) protocol of a connection that does not carry Engine.IO."""
        protocol = self._protocol
        if protocol is None:
            protocol = self._protocol = ServerProtocol(max_size=self.site.max_message, logger=_protocol_log)
        return protocol

    def attach(self, write: Any, end: Any, peer: str) -> None:
        """Where Engine.IO writes at once (deliveries come from any thread, lock held)."""
        self._write, self._end, self._peer = write, end, peer

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Item]:
        """Feed bytes from the client; return the chat lines they complete."""
        if self.ended is not None:
            return []
        self._last_heard = now
        if self._routing is not None:
            data = self._route(data)
            if not data:
                return []
        if self.engine is not None:
            self.engine.receive(data, now)
            self.ended = self.engine.ended
            if self.engine.served != self._served:  # an answer: the next request has head_timeout again
                self._served = self.engine.served
                self._deadline = now + self.site.head_timeout
            return []
        if self.request is not None:
            self.protocol.receive_data(data)
            return self._frames(self.protocol.events_received(), now)
        data, after = self._split_head(data)
        self.protocol.receive_data(data)
        self._head_bytes += len(data)
        if len(self._head_start) < 16:
            self._head_start += data[:16]
        events = self.protocol.events_received()
        if not events:
            self._waiting_for_head()
            return []
        request = events[0]
        assert isinstance(request, Request) and len(events) == 1
        self.request = request
        if head_size(request) > MAX_HEAD:  # a head that came in whole is held to the limit too
            self._send_response(self.protocol.reject(431, "Request header fields too large.\n"))
            self.ended = "request head too large"
            return []
        self._respond(request)
        if not (self.opened and after):  # after an answer other than the upgrade, the connection ends
            return []
        self.protocol.receive_data(after)  # frames sent without waiting for the upgrade's answer
        return self._frames(self.protocol.events_received(), now)

    def _split_head(self, data: bytes) -> tuple[bytes, bytes]:
        """*data* cut after the request head's blank line: the head is answered before what follows is read.

        Bytes after a head (a pipelined request, a body) would otherwise reach websockets as frames
        before its answer, and a page's answer after a frame error is no answer at all.
        """
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            return data, b""
        cut = end + 4 - len(self._head_tail)
        return data[:cut], data[cut:]

    def _route(self, data: bytes) -> bytes:
        """Hold the first bytes until the request target shows whether this is Engine.IO; return what to parse."""
        routing = self._routing = (self._routing or b"") + data
        line, crlf, _ = routing.partition(b"\r\n")
        parts = line.split(b" ", 2)
        if not crlf and len(parts) < 3 and len(routing) < 512:
            return b""
        self._routing = None
        site = self.site
        if len(parts) >= 2 and any(_is_engine_target(parts[1], path.encode()) for path in site.engine_paths):
            assert site.engine is not None and self._write is not None
            self.engine = EngineConnection(site.engine, self._write, self._end, site.allowed_origin, self._peer, MAX_HEAD)
        return routing

    def receive_eof(self) -> None:
        """The client ended its side."""
        if self.ended is None:
            self.ended = "disconnected"
        if self.engine is not None:
            self.engine.receive_eof()
            return
        self.protocol.receive_eof()  # idempotent, as websockets documents

    def connection_lost(self, reason: str) -> None:
        """The connection is closed (lock held): Engine.IO sessions it carried learn so."""
        if self.engine is not None:
            self.engine.connection_lost(reason)
        elif self._protocol is not None:
            self._protocol.receive_eof()
            release_websocket(self._protocol)

    def _waiting_for_head(self) -> None:
        if self.protocol.handshake_exc is not None:  # websockets refused the request
            self.ended = "bad request"
            pending = self.protocol.data_to_send()
            if pending == [b""]:  # refused without an answer (e.g. a request body): answer it here
                method = self._head_start.partition(b" ")[0]
                if method != b"GET" and method.isalpha():
                    response = self.protocol.reject(405, "Method not allowed: use GET.\n")
                    response.headers["Allow"] = "GET"
                else:
                    response = self.protocol.reject(400, "Bad request.\n")
                pending = [response.serialize(), b""]
            if pending[0].startswith(b"HTTP/1.1 "):
                self.status = int(pending[0][9:12])
            self._queued = pending
        elif self._head_bytes > MAX_HEAD:
            self._send_response(self.protocol.reject(431, "Request header fields too large.\n"))
            self.ended = "request head too large"

    def _frames(self, events: Sequence[object], now: float) -> list[Item]:
        items: list[Item] = []
        protocol = self.protocol
        for frame in events:
            opcode = frame.opcode  # type: ignore[attr-defined]
            if opcode is Opcode.TEXT or opcode is Opcode.CONT:
                self.last_message = now
                try:
                    self._utf8.decode(frame.data, frame.fin)  # type: ignore[attr-defined]
                except UnicodeDecodeError:
                    self._utf8.reset()
                    self._unfinished = []
                    protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                    break
                # A message is the unit: its lines are handed on only once all of it has
                # arrived valid, so a message that ends in 1007 or 1009 relays nothing.
                self._unfinished += self.framer.feed(frame.data)  # type: ignore[attr-defined]
                if frame.fin:  # type: ignore[attr-defined]
                    items += self._unfinished
                    items += self.framer.finish()
                    self._unfinished = []
            elif opcode is Opcode.BINARY:
                protocol.fail(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
                break
            elif opcode is Opcode.PING:
                if not self._pings.take(1, now):
                    protocol.fail(CloseCode.POLICY_VIOLATION, "too many pings")
                    break
            elif opcode is Opcode.PONG:
                self._ping_sent = None
        if self.ended is None and protocol.state in (State.CLOSING, State.CLOSED):
            self.ended = self._why_closed()
        return items

    def _why_closed(self) -> str:
        sent = self.protocol.close_sent
        if self.protocol.close_rcvd is not None and (sent is None or self.protocol.close_rcvd_then_sent):
            return "disconnected"  # the client closed: a departure like a TCP EOF
        if sent is not None:
            return _CLOSE_REASONS.get(sent.code, f"closed ({sent.code})")
        return "protocol error"

    def describe(self) -> str:
        """The request, for the log: ``GET /path`` or its first bytes, escaped."""
        if self.engine is not None and self.engine.last_request:
            return self.engine.last_request[:200]
        if self.request is not None:
            return f"{self.request.method} {self.request.path}"[:200]
        return repr(self._head_start)[2:-1]

    # -- the HTTP request ----------------------------------------------------

    def _respond(self, request: Request) -> None:
        """Answer *request*: the WebSocket upgrade at /ws, a page, or an HTTP error."""
        path = request.path.partition("?")[0]
        protocol = self.protocol
        if request.method != "GET":
            response = protocol.reject(405, "Method not allowed: use GET.\n")
            response.headers["Allow"] = "GET"
        elif path == "/ws":
            response = self._upgrade(request)
        elif self.site.folder is not None:
            found = self.site.folder.lookup(path)
            if found is None:
                response = protocol.reject(404, _NO_CLIENT if _is_client_file(path) else "Not found.\n")
            else:
                response = _file_response(*found, _FOLDER_HEADERS)
        elif path in self.site.pages:
            response = _file_response(*self.site.pages[path], _PAGE_HEADERS)
        else:
            response = protocol.reject(404, _NO_CLIENT if _is_client_file(path) else "Not found.\n")
        self._send_response(response)

    def _upgrade(self, request: Request) -> Response:
        protocol = self.protocol
        try:
            hosts = request.headers.get_all("Host")
            origins = request.headers.get_all("Origin")
        except Exception:  # noqa: BLE001 -- any malformed header is a bad request
            hosts, origins = [], ["?", "?"]
        if len(hosts) != 1 or len(origins) > 1:
            return protocol.reject(400, "Bad request: one Host header and at most one Origin header.\n")
        # No Origin: not a browser (websocat, a script), which a cross-site page cannot drive.
        protocol.origins = [None, f"{self.site.scheme}://{hosts[0]}", *self.site.origins]  # type: ignore[list-item]
        response = protocol.accept(request)
        if response.status_code == 426:  # missing or wrong Upgrade header: a plain 400
            response = protocol.reject(400, response.body.decode().partition("\n")[0] + "\n")
        return response

    def _send_response(self, response: Response) -> None:
        self.status = response.status_code
        self.protocol.send_response(response)
        if response.status_code == 101:
            self.opened = True
        else:
            self.ended = f"HTTP {response.status_code}"

    # -- output --------------------------------------------------------------

    def frame_lines(self, data: bytes) -> bytes | None:
        """*data* (whole lines, valid UTF-8) as one text frame to send now; None unless the WebSocket is open.

        The caller sends it after what outgoing() returned before: the frame does not pass through
        the protocol's queue (nothing else is ever fragmented, so a whole frame fits anywhere).
        """
        protocol = self._protocol
        if protocol is None or protocol.state is not State.OPEN:
            return None
        return self.site.text_frame(data)

    def send_lines(self, data: bytes) -> None:
        """Queue *data* as one text message for outgoing(), if the WebSocket is open."""
        frame = self.frame_lines(data)
        if frame is not None:
            self._queued += self.protocol.data_to_send()
            self._queued.append(frame)

    def close(self, reason: str | None) -> None:
        """Start the closing handshake: 1000, 1001 on shutdown, 1013 when full."""
        if self.engine is not None:
            self.engine.close()
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(_CLOSE_CODES.get(reason or "", CloseCode.NORMAL_CLOSURE), reason or "")

    def outgoing(self) -> list[bytes]:
        """Bytes to send, in order; ``b""`` means: end our side after them."""
        if self._protocol is None:  # Engine.IO writes its own, or nothing was asked yet
            queued, self._queued = self._queued, []
            return queued
        if self._queued:
            queued, self._queued = self._queued, []
            return queued + self.protocol.data_to_send()
        return self.protocol.data_to_send()

    # -- timers ----------------------------------------------------------------

    def tick(self, now: float) -> str | None:
        """Run the handshake deadline and keepalive; return a reason to drop the connection now."""
        if self.ended is not None:
            return None
        engine = self.engine
        if engine is not None:
            if engine.ended is not None:
                self.ended = engine.ended
            elif engine.websocket is not None:  # Engine.IO's heartbeat watches it
                return None
            elif engine.holding or engine.served != self._served:  # an answer given, or one pending
                self._served = engine.served  # the next request has head_timeout again, from now
                self._deadline = now + self.site.head_timeout
            elif now > self._deadline:
                self.ended = "request head timeout" if engine.busy else "keep-alive timeout"
                engine.connection_lost(self.ended)
                return self.ended
            return None
        if not self.opened:
            if now > self._deadline:
                self.ended = "request head timeout"
                return self.ended
            return None
        if self._ping_sent is not None:
            if now - self._ping_sent > self.site.ping_timeout:
                self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                self.ended = "keepalive timeout"
                return self.ended
        elif now - self._last_heard > self.site.ping_interval - self._ping_early:
            self.protocol.send_ping(b"keepalive")
            self._ping_sent = now
            self._ping_early = 0.0
        return None

    def next_deadline(self) -> float | None:
        """When tick() may have something to do next (it may be called earlier); None: no timer runs."""
        if self.ended is not None:
            return None
        engine = self.engine
        if engine is not None:
            return None if engine.ended is not None or engine.websocket is not None else self._deadline
        if not self.opened:
            return self._deadline
        if self._ping_sent is not None:
            return self._ping_sent + self.site.ping_timeout
        return self._last_heard + self.site.ping_interval - self._ping_early


class WebConnection(Connection):
    """The WebSocket transport for the reader loop: a :class:`WebSession` over an outbox.

    The session is shared by the reader thread (input) and deliveries
    (output), so every use of it holds the chat lock.
    """

    __slots__ = ("session", "lock", "carries_engine")

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        outbox: Outbox,
        session: WebSession,
        lock: threading.Lock,
        tls: TlsLayer | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(sock, peer, outbox, tls, deadline)
        self.session = session
        self.lock = lock
        self.send = _lines_sender(session, outbox)
        #: The site was told this connection carries Engine.IO.
        self.carries_engine = False
        session.attach(outbox.write, outbox.end, peer)

    def data_received(self, data: bytes) -> list[Item]:
        if self.carries_engine:
            return self._engine_data(data)
        now = time.monotonic()
        session = self.session
        answered = session.ended is not None
        was_open = session.opened
        engine = session.engine
        refused = engine.refused if engine is not None else None
        with self.lock:
            items = session.receive(data, now)
            if not was_open and session.opened and session.ended is None:
                self.outbox.hold()  # the upgrade goes out with the welcome: join_late() releases it
            self.pump()
            engine = session.engine
            if engine is not None and not self.carries_engine:
                self.carries_engine = True
                self.deadline = None  # past any TLS handshake: Engine.IO's own timers apply now
                if session.site.engine_started is not None:
                    session.site.engine_started(self)
        if engine is not None:
            if engine.refused is not refused and engine.refused is not None:
                self._log_refusal("Refused Socket.IO request from %s: %s %s (%s)", *engine.refused, session.describe())
            if session.site.engine_settle is not None:
                session.site.engine_settle()
            return items
        if not answered and session.ended is not None and (session.status or 400) >= 400:
            self._log_refusal("Refused web request from %s: %s (%s)", session.status or "closed", session.describe())
        # The reader counted any bytes as activity; for the idle timeout only messages count.
        self.last_active = self.session.last_message
        return items

    def _engine_data(self, data: bytes) -> list[Item]:
        """Engine.IO input, once the connection carries it: what this read asks for -- an event's ack, a
        namespace's answer, the chat's lines to this client -- goes out in one send().

        In pieces, the second would wait for the client's delayed ACK (Nagle's algorithm): a join and
        its ack over WebSocket took 44 ms, a chat message and its ack 22 ms. The chat's part (settle())
        runs without the lock, so the outbox is held across both and released whatever happens.
        """
        now = time.monotonic()
        session = self.session
        engine = session.engine
        assert engine is not None
        refused = engine.refused
        outbox = self.outbox
        try:
            with self.lock:
                outbox.hold()
                items = session.receive(data, now)
                self.pump()
            if engine.refused is not refused and engine.refused is not None:
                self._log_refusal("Refused Socket.IO request from %s: %s %s (%s)", *engine.refused, session.describe())
            if session.site.engine_settle is not None:
                session.site.engine_settle()
        finally:
            with self.lock:
                outbox.release()
        return items

    def _log_refusal(self, message: str, *args: Any) -> None:
        log = self.session.site.refusals
        if log is not None:
            log.log(logging.INFO, message, self.peer, *args)
        else:
            logger.info(message, self.peer, *args)

    def eof_received(self) -> list[Item]:
        with self.lock:
            self.session.receive_eof()
            self.pump()
        if self.session.engine is not None and self.session.site.engine_settle is not None:
            self.session.site.engine_settle()
        return []

    def ready_to_join(self) -> bool:
        return self.session.opened and self.session.ended is None

    def plaintext_hint(self) -> bytes:
        return HTTPS_ANSWER

    def ended(self) -> str | None:
        return self.session.ended

    def goodbye(self, reason: str | None) -> None:
        self.session.close(reason)
        self.pump()

    def tick(self, now: float) -> None:
        """Run the session's timers (lock held); end the connection when one expired."""
        super().tick(now)
        reason = self.session.tick(now)
        self.pump()
        if reason is not None:
            self.outbox.end(reason)

    def next_tick(self) -> float | None:
        handshake = super().next_tick()
        session = self.session.next_deadline()
        if handshake is None or session is None:
            return session if handshake is None else handshake
        return min(handshake, session)

    def pump(self) -> None:
        """Move the session's outgoing bytes to the outbox (lock held)."""
        for chunk in self.session.outgoing():
            if chunk:
                self.outbox.write(chunk)


def _lines_sender(session: WebSession, outbox: Outbox) -> Callable[[bytes], None]:
    """A WebConnection's ``send``: *data* as one text message (lock held), the relay's hot path for browsers.

    Every use of the session's protocol is pumped at once, so nothing of it waits here and the frame
    goes straight to the outbox. It refers to the session and the outbox, not to the connection: a bound
    method of the connection, kept by the connection, would be a reference cycle.
    """
    frame_lines = session.frame_lines
    write = outbox.write

    def send(data: bytes) -> None:
        frame = frame_lines(data)
        if frame is not None:
            write(frame)

    return send
