"""One web connection speaking Engine.IO: long-polling requests, or the WebSocket they upgrade to.

:class:`EngineConnection` turns a connection's bytes into calls on an
:class:`~socketlab.engineio.EngineServer` and writes what it answers. It does
not own a socket: it is given ``write(bytes)`` (non-blocking, in order) and
``end(reason)`` (close once what was written is out), so it runs wherever
bytes arrive -- the chat server's reader loop -- and is tested with lists.

A connection carries plain HTTP requests, kept alive, one at a time: a GET
for a session is held (it is the session's :class:`~socketlab.engineio.Carrier`)
until the session has something to send; requests behind it wait. A GET that
asks for ``transport=websocket`` becomes a WebSocket (``websockets``' Sans-I/O
protocol does the handshake and framing) carrying one Engine.IO packet per message.

Given ``routes`` (path prefix -> server), each request goes to the server of its
path (``/socket.io/``, ``/engine.io/`` ...) and any other path is answered 404;
without, every request is the one server's (the chat routes before).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Callable, Mapping, Sequence

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from socketlab.engineio import (
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    FORBIDDEN,
    EngineError,
    EngineServer,
    EngineSession,
    MESSAGE,
    Message,
    encode_payload,
)
from socketlab.http import HttpError, HttpRequest, RequestReader, response

logger = logging.getLogger("socketlab.engineio")
_protocol_log = logging.getLogger("socketlab.engineio.protocol")
_protocol_log.setLevel(logging.CRITICAL + 1)
_protocol_log.propagate = False

#: Requests a client may send behind a held GET before the connection is refused.
MAX_PIPELINED = 4
#: Frames the server keeps made (a chat delivery is a few messages, each framed once for all its clients).
MAX_CACHED_FRAMES = 256
_TEXT = ("Content-Type", "text/plain; charset=UTF-8")
_JSON = ("Content-Type", "application/json")
_NO_CACHE = ("Cache-Control", "no-store")


class _Poll:
    """A held GET: the session's carrier until it is answered."""

    __slots__ = ("connection", "answered")

    def __init__(self, connection: "EngineConnection") -> None:
        self.connection = connection
        self.answered = False

    def deliver(self, packets: list[tuple[str, Message]]) -> None:
        if not self.answered:
            self.answered = True
            self.connection._answered_poll(self, encode_payload(packets).encode("utf-8"))

    def close(self) -> None:
        pass  # a GET is over once answered; the connection stays for the next request


#: Why a session ended when the server failed its WebSocket with this code (websockets' checks, or ours).
_FAILED_WITH: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.INVALID_DATA: "invalid UTF-8",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
}
#: Polling sessions one connection may have open at once: a client has one (two while it reconnects); a
#: client asking for more on one kept-alive connection is refused, so it cannot take every session alone.
MAX_SESSIONS_PER_CONNECTION = 4


def release_websocket(protocol: ServerProtocol) -> None:
    """Let reference counting free a websockets protocol whose connection is gone (after its EOF).

    The protocol keeps its parser, a generator suspended with the protocol in its frame; the exception
    that stopped it (a connection lost without a closing handshake); and the one that refused its
    handshake (kept by the request too). Their tracebacks hold frames that hold the protocol, and the
    request. All are cycles, which only the cyclic collector would reclaim -- and a server that keeps
    its members out of the collector's way (``socketlab.collector``) must not need it.
    """
    protocol.parser.close()
    for error in (protocol.parser_exc, protocol.handshake_exc):
        _drop_tracebacks(error)


def _drop_tracebacks(error: BaseException | None) -> None:
    """Forget where *error*, and the exceptions chained to it, were raised: the frames, not the errors."""
    seen: set[int] = set()
    chain = [error]
    while chain:
        each = chain.pop()
        if each is not None and id(each) not in seen:
            seen.add(id(each))
            each.__traceback__ = None
            chain += (each.__cause__, each.__context__)


def _text_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode("utf-8")).serialize(mask=False, extensions=[])


def _message_frame(frames: dict[str, bytes], message: str) -> bytes:
    """Frame a MESSAGE packet and keep it in *frames* (a server's cache, emptied when full)."""
    if len(frames) >= MAX_CACHED_FRAMES:
        frames.clear()
    frame = frames[message] = _text_frame(MESSAGE + message)
    return frame


class EngineConnection:
    """The Engine.IO side of one web connection (see the module docstring).

    ``allowed_origin(origin)`` says whether a page from *origin* may use the
    sessions (None: no Origin header, not a browser); ``ended`` is the
    reason once the connection is over; ``refused`` the status and reason of
    the last request refused, for the caller's log.
    """

    __slots__ = (
        "server",
        "write",
        "end",
        "allowed_origin",
        "peer",
        "routes",
        "reader",
        "ended",
        "refused",
        "session",
        "websocket",
        "_opened",
        "_fragments",
        "_held",
        "_held_request",
        "_waiting",
        "busy",
        "last_request",
        "served",
    )

    def __init__(
        self,
        server: EngineServer,
        write: Callable[[bytes], None],
        end: Callable[[str], None],
        allowed_origin: Callable[[str | None, str | None], bool],
        peer: str = "",
        max_head: int = 8192,
        *,
        routes: Mapping[str, EngineServer] | None = None,
    ) -> None:
        #: The server of the request being served (with routes: of its path).
        self.server = server
        self.write = write
        self.end = end
        self.allowed_origin = allowed_origin
        self.peer = peer
        #: Path prefix (ending in ``/``) -> the server answering there; None: *server* answers every path.
        self.routes = routes
        servers = [server, *(routes.values() if routes else ())]
        self.reader = RequestReader(max_head, max(each.settings.max_payload for each in servers))
        self.ended: str | None = None
        self.refused: tuple[int, str] | None = None
        self.session: EngineSession | None = None
        self.websocket: ServerProtocol | None = None
        #: The polling sessions this connection opened (those still open count toward the limit).
        self._opened: list[EngineSession] = []
        #: A fragmented WebSocket message so far: its opcode and its bytes (websockets bounds their number;
        #: kept as one buffer, empty fragments cost nothing).
        self._fragments: tuple[Opcode, bytearray] | None = None
        self._held: _Poll | None = None
        self._held_request: tuple[HttpRequest, list[tuple[str, str]]] | None = None
        self._waiting: deque[HttpRequest] = deque()
        #: Whether a request has begun arriving and is not yet answered.
        self.busy = False
        #: The request being served, for the log (``GET /socket.io/?...``).
        self.last_request = ""
        #: Requests answered so far (the caller's keep-alive deadline restarts with each).
        self.served = 0

    # -- input -----------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the client."""
        if self.ended is not None:
            return
        if self.websocket is not None:
            self._websocket_data(data, now)
            return
        try:
            requests = self.reader.feed(data)
        except HttpError as error:
            self._refuse(
                error.status, error.reason, json.dumps({"code": BAD_REQUEST, "message": error.reason}, separators=(",", ":"))
            )
            return
        self._waiting.extend(requests)
        if len(self._waiting) > MAX_PIPELINED:
            self._refuse(400, "too many pipelined requests", '{"code":3,"message":"Bad request"}')
            return
        self.busy = self.reader.partial or bool(self._waiting) or self._held is not None
        self._serve_waiting(now)

    def receive_eof(self) -> None:
        """The client ended its side (or the connection broke)."""
        self.connection_lost("disconnected")

    def connection_lost(self, reason: str) -> None:
        """The connection is gone: a held GET or the WebSocket no longer carries its session."""
        if self.ended is None:
            self.ended = reason
        held, self._held = self._held, None
        if held is not None and self.session is not None:
            self.session.poll_gone(held)
        if self.websocket is not None:
            if self.session is not None:
                self.session.websocket_gone(self)
            self.websocket.receive_eof()
            release_websocket(self.websocket)

    # -- requests --------------------------------------------------------------------

    def _serve_waiting(self, now: float) -> None:
        while self._waiting and self._held is None and self.websocket is None and self.ended is None:
            request = self._waiting.popleft()
            self._serve(request, now)
        self.busy = self.reader.partial or bool(self._waiting) or self._held is not None

    @property
    def holding(self) -> bool:
        """A GET is held for its session."""
        return self._held is not None

    def _serve(self, request: HttpRequest, now: float) -> None:
        self.last_request = f"{request.method} {request.target}"
        if self.routes is not None:
            server = self._route(request.path)
            if server is None:
                self.refused = (404, "not found")
                self._answer(404, b"Not found.\n", [_TEXT], request)
                return
            self.server = server
            if len(request.body) > server.settings.max_payload:  # the reader allows the largest of the routes'
                self._refuse(413, "request body too large", '{"code":3,"message":"Bad request"}')
                return
        origin = request.header("origin")
        cors = self._cors(request, origin)
        if request.method == "OPTIONS":
            if origin is None or not self.allowed_origin(origin, request.header("host")):
                self._answer(403, b'{"code":4,"message":"Forbidden"}', [_JSON], request)
                return
            headers = [*cors, ("Access-Control-Allow-Methods", "GET, POST"), ("Access-Control-Allow-Headers", "content-type")]
            self._answer(204, b"", headers, request)
            return
        if origin is not None and not self.allowed_origin(origin, request.header("host")):
            self._engine_error(EngineError(FORBIDDEN, 403), request, cors)
            return
        try:
            query = request.query
            transport = self.server.check_query(query, request.method)
            sid = query.get("sid")
            if transport == "websocket":
                self._upgrade(request, sid, now)
                return
            if request.method == "GET":
                if sid is None:
                    session = self._handshake(now)
                else:
                    session = self.server.session(sid, now)
                self._hold(session, request, cors, now)
            elif request.method == "POST" and sid is not None:
                session = self.server.session(sid, now)
                session.post(request.body, now)
                self._answer(200, b"ok", [("Content-Type", "text/html"), *cors], request)
            else:
                raise EngineError(BAD_HANDSHAKE_METHOD if sid is None else BAD_REQUEST)
        except EngineError as error:
            self._engine_error(error, request, cors)

    def _handshake(self, now: float) -> EngineSession:
        """A new polling session, unless this connection has MAX_SESSIONS_PER_CONNECTION open already."""
        self._opened = [session for session in self._opened if session.closed is None]
        if len(self._opened) >= MAX_SESSIONS_PER_CONNECTION:
            raise EngineError(BAD_REQUEST, message=f"more than {MAX_SESSIONS_PER_CONNECTION} sessions on one connection")
        session = self.server.handshake("polling", now, self.peer)
        self._opened.append(session)
        return session

    def _route(self, path: str) -> EngineServer | None:
        """The server whose path prefix is the longest to start *path*, or None."""
        assert self.routes is not None
        best: str | None = None
        for prefix in self.routes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self.routes[best] if best is not None else None

    def _cors(self, request: HttpRequest, origin: str | None) -> list[tuple[str, str]]:
        """CORS headers for an allowed page of another origin (none for the page's own or no Origin)."""
        host = request.header("host")
        if origin is None or origin.partition("://")[2] == host or not self.allowed_origin(origin, host):
            return []
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]

    def _hold(self, session: EngineSession, request: HttpRequest, cors: list[tuple[str, str]], now: float) -> None:
        poll = _Poll(self)
        self._held = poll
        self._held_request = (request, cors)
        self.session = session
        try:
            session.poll(poll, now)
        except EngineError:
            if self._held is poll:
                self._held = None
            raise

    def _answered_poll(self, poll: _Poll, body: bytes) -> None:
        if self._held is not poll:
            return
        self._held = None
        assert self._held_request is not None
        request, cors = self._held_request
        self._answer(200, body, [_TEXT, _NO_CACHE, *cors], request)
        self._serve_waiting(self.server.now)

    def _engine_error(self, error: EngineError, request: HttpRequest, cors: list[tuple[str, str]]) -> None:
        self.refused = (error.status, error.message)
        self._answer(error.status, error.body(), [_JSON, *cors], request)

    def _answer(self, status: int, body: bytes, headers: Sequence[tuple[str, str]], request: HttpRequest) -> None:
        self.served += 1
        close = not request.keep_alive
        self.write(response(status, body, list(headers), close=close))
        if close:
            self.ended = f"HTTP {status}" if status >= 400 else "closed"
            self.end(self.ended)

    def _refuse(self, status: int, reason: str, body: str) -> None:
        """A request that cannot be read: answer, then close the connection."""
        self.refused = (status, reason)
        self.ended = f"HTTP {status}"
        self.write(response(status, body.encode(), [_JSON], close=True))
        self.end(self.ended)

    # -- WebSocket ----------------------------------------------------------------------

    def _upgrade(self, request: HttpRequest, sid: str | None, now: float) -> None:
        if request.method != "GET" or (request.header("upgrade") or "").lower() != "websocket":
            raise EngineError(BAD_REQUEST, message="expected a WebSocket upgrade")
        if sid is None:
            self.server.admit()  # a full server says so in HTTP, before any upgrade
        else:
            # An unknown session is refused with HTTP 400. One that cannot be upgraded (it was already, or
            # is being) gets its WebSocket opened and closed at once, as the JavaScript server does it.
            self.server.session(sid, now)
        protocol = ServerProtocol(max_size=self.server.settings.max_payload, logger=_protocol_log)
        protocol.receive_data(request.head)
        events = protocol.events_received()
        if not events or not isinstance(events[0], Request):
            raise EngineError(BAD_REQUEST, message="bad WebSocket handshake")
        reply = protocol.accept(events[0])
        protocol.send_response(reply)
        if reply.status_code != 101:
            self.refused = (reply.status_code, "bad WebSocket handshake")
            self._pump(protocol)
            release_websocket(protocol)
            self.ended = f"HTTP {reply.status_code}"
            self.end(self.ended)
            return
        self.websocket = protocol
        # The 101 answer and what the session sends at once (a new one's open packet): one write.
        write, wire = self.write, [chunk for chunk in protocol.data_to_send() if chunk]
        self.write = wire.append
        refused = False
        try:
            self.session = self.server.open_websocket(sid, self, now, self.peer)
        except EngineError:
            protocol.send_close(CloseCode.POLICY_VIOLATION, "session cannot be upgraded")
            self._pump(protocol)
            refused = True
        finally:
            self.write = write
            write(b"".join(wire))
        if refused:
            self.ended = "upgrade refused"
            self.end(self.ended)
            return
        rest = self.reader.take_buffered()  # bytes after the upgrade request are WebSocket frames
        if rest:
            self._websocket_data(rest, now)

    def _websocket_data(self, data: bytes, now: float) -> None:
        protocol = self.websocket
        assert protocol is not None
        protocol.receive_data(data)
        for frame in protocol.events_received():
            if not isinstance(frame, Frame):
                continue
            opcode, payload = frame.opcode, bytes(frame.data)
            if opcode is Opcode.CONT or not frame.fin:  # a fragment: websockets has checked their order
                if self._fragments is None:
                    self._fragments = (opcode, bytearray())
                self._fragments[1].extend(payload)
                if not frame.fin:
                    continue
                opcode, whole = self._fragments
                self._fragments, payload = None, bytes(whole)
            if opcode is Opcode.TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                    break
                self._message(text, now)
            elif opcode is Opcode.BINARY:
                self._message(payload, now)
        self._pump(protocol)
        if protocol.state in (State.CLOSING, State.CLOSED) and self.ended is None:
            self.ended = "disconnected" if protocol.close_rcvd is not None else "closed"
            if self.session is not None:
                sent = protocol.close_sent
                failed = _FAILED_WITH.get(sent.code) if sent is not None and protocol.close_rcvd is None else None
                self.session.websocket_gone(self, failed or "transport close")
            if protocol.state is State.CLOSED or protocol.close_rcvd is not None:
                self.end(self.ended)

    def _message(self, message: Message, now: float) -> None:
        session = self.session
        if session is not None:
            self.server.now = now
            session.websocket_message(self, message, now)

    def _pump(self, protocol: ServerProtocol) -> None:
        for chunk in protocol.data_to_send():
            if chunk:
                self.write(chunk)

    # -- the session's carrier, once a WebSocket ---------------------------------------

    def deliver(self, packets: list[tuple[str, Message]]) -> None:
        """Send *packets* as WebSocket messages, in one write.

        A text message's frame comes from the server's cache: a delivery to many clients frames
        it once. Server frames are unmasked and no extension is negotiated, so one frame fits every
        connection; it is written between whole frames of the protocol's own (pongs, the close).
        """
        protocol = self.websocket
        if protocol is None or protocol.state is not State.OPEN:
            return
        frames = self.session.server.frames if self.session is not None else {}
        wire = []
        for kind, data in packets:
            if isinstance(data, bytes):
                wire.append(Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[]))
            elif kind == MESSAGE:
                wire.append(frames.get(data) or _message_frame(frames, data))
            else:
                wire.append(_text_frame(kind + data))
        self._pump(protocol)
        self.write(wire[0] if len(wire) == 1 else b"".join(wire))

    def deliver_messages(self, messages: list[str]) -> None:
        """Send text *messages* as MESSAGE packets in one write (see deliver(); nothing of the protocol's
        waits here, since its output is pumped after every input and every close)."""
        session = self.session
        if self.ended is not None or session is None:  # ended is set as soon as the WebSocket is not open
            return
        frames = session.server.frames
        if len(messages) == 1:
            message = messages[0]
            self.write(frames.get(message) or _message_frame(frames, message))
        else:
            self.write(b"".join([frames.get(message) or _message_frame(frames, message) for message in messages]))

    def close(self) -> None:
        protocol = self.websocket
        if protocol is not None and protocol.state is State.OPEN:
            protocol.send_close(CloseCode.NORMAL_CLOSURE, "")
            self._pump(protocol)
        if self.ended is None:
            self.ended = "closed"
        self.end(self.ended)
