"""Socket.IO protocol 5, sans-IO: namespaces, events, acks and rooms over Engine.IO sessions.

A Socket.IO packet is one Engine.IO message, ``<type>[<attachments>-][<namespace>,][<id>][<JSON>]``:
``40`` connects to the main namespace, ``42["chat message","hi"]`` is an
event, ``421["room","r1"]`` one that asks for an ack, ``431["ok"]`` that ack;
binary arguments travel as placeholders followed by binary messages.

:class:`SocketIOServer` is the :class:`~socketlab.engineio.EngineApp` that
turns sessions' messages into calls on :class:`Namespace` objects, and what a
namespace emits into messages; it never touches a socket (the I/O layer owns
the Engine.IO server it makes). A service in a few lines::

    server = SocketIOServer()
    chat = server.of("/")

    @chat.on("message")
    def message(client, *args):
        client.emit("message-back", *args)
        return args          # the ack, when the client asked for one

Calls into it must be serialised by the caller (the chat server holds its lock;
:class:`~socketlab.socketio_server.SocketIOService` serves it on a port of its own).
An exception in a handler is logged with its traceback and the client stays
connected, as python-socketio does (the JavaScript server would crash).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from socketlab.engineio import EngineServer, EngineSession, EngineSettings, Message

logger = logging.getLogger("socketlab.socketio")

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
#: Seconds a new session has to connect to a namespace (the JavaScript server's default).
CONNECT_TIMEOUT = 45.0
#: The JSON of every packet: compact, UTF-8 as it is (one encoder, not one per packet: half the cost).
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: The string encoder _JSON itself uses (the C one), for arrays of strings: an event's name and its text.
_JSON_STRING = json.encoder.encode_basestring
_DECODER = json.JSONDecoder()
#: Binary attachments one packet may announce (together at most the Engine.IO settings' max_payload bytes).
MAX_ATTACHMENTS = 64
#: Event names a server never emits to a client, nor takes from one, as the JavaScript libraries reserve them.
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"})


class PacketError(ValueError):
    """An Engine.IO message that is not a valid Socket.IO packet."""


@dataclass
class Packet:
    type: int
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    #: Binary attachments still expected (decoding) or carried (encoding).
    attachments: list[bytes] = field(default_factory=list)


# -- the codec -------------------------------------------------------------------


def _deconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)):
        attachments.append(bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def _reconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, list):
        return [_reconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True and isinstance(data.get("num"), int) and len(data) == 2:
            if not 0 <= data["num"] < len(attachments):
                raise PacketError("placeholder for a missing attachment")
            return attachments[data["num"]]
        return {key: _reconstruct(value, attachments) for key, value in data.items()}
    return data


def encode(packet: Packet) -> list[Message]:
    """*packet* as Engine.IO messages: the text packet, then its binary attachments."""
    attachments: list[bytes] = []
    data = packet.data
    strings = type(data) is list and all(type(item) is str for item in data)
    if data is not None and not strings:
        data = _deconstruct(data, attachments)  # only what may hold bytes is walked (an event's strings: the chat)
    kind = packet.type
    if attachments and kind in (EVENT, ACK):
        kind = BINARY_EVENT if kind == EVENT else BINARY_ACK
    parts = [str(kind)]
    if attachments:
        parts.append(f"{len(attachments)}-")
    if packet.namespace != "/":
        parts.append(packet.namespace + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if strings:  # what _JSON makes of it, without its walk: the chat's every event
        parts.append(f"[{','.join(map(_JSON_STRING, data))}]")
    elif data is not None:
        parts.append(_JSON.encode(data))
    return ["".join(parts), *attachments]


def decode(text: str) -> Packet:
    """One text message as a packet (binary attachments still to come are counted in ``attachments``)."""
    if not text or not "0" <= text[0] <= "6":
        raise PacketError(f"unknown packet type in {text[:20]!r}")
    kind = int(text[0])
    position = 1
    count = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", position)
        digits = text[position:dash] if dash > 0 else ""
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 3 or not 0 < int(digits) <= MAX_ATTACHMENTS:
            raise PacketError("bad attachment count")
        count = int(digits)
        position = dash + 1
    namespace = "/"
    if text[position : position + 1] == "/":
        comma = text.find(",", position)
        end = comma if comma >= 0 else len(text)
        namespace = text[position:end]
        position = end + 1 if comma >= 0 else end
    start = position
    while position < len(text) and text[position].isdigit() and text[position].isascii():
        position += 1
    ack_id = int(text[start:position]) if position > start else None
    if ack_id is not None and (position - start > 15 or kind in (CONNECT, DISCONNECT, CONNECT_ERROR)):
        raise PacketError("bad ack id")
    payload = text[position:]
    data = None
    if payload:
        try:
            data = _json(payload)
        except (ValueError, RecursionError):  # RecursionError: arrays nested deeper than the interpreter goes
            raise PacketError("payload is not JSON") from None
    packet = Packet(kind, namespace, data, ack_id)
    packet.attachments = [b""] * count  # placeholders for what is still to come
    _validate(packet)
    return packet


def _json(text: str) -> Any:
    """``json.loads(text)``, with a shorter way for the usual case: a value from the first character to the last."""
    try:
        data, end = _DECODER.raw_decode(text)
    except ValueError:  # whitespace first, or not JSON: json.loads() says which
        end = -1
    return data if end == len(text) else json.loads(text)


def _validate(packet: Packet) -> None:
    kind, data = packet.type, packet.data
    if kind == CONNECT:
        if data is not None and not isinstance(data, dict):
            raise PacketError("CONNECT payload must be an object")
    elif kind == DISCONNECT:
        if data is not None:
            raise PacketError("DISCONNECT carries no payload")
    elif kind in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise PacketError("an EVENT payload is an array that starts with the event name")
    elif kind in (ACK, BINARY_ACK):
        if packet.id is None or not isinstance(data, list):
            raise PacketError("an ACK has an id and an array")
    else:  # CONNECT_ERROR is the server's to send
        raise PacketError("unexpected packet type")


# -- the server --------------------------------------------------------------------


class Ack:
    """The answer a client asked for with its event: call it once with the ack's arguments."""

    __slots__ = ("client", "id", "sent")

    def __init__(self, client: "Client", ack_id: int) -> None:
        self.client = client
        self.id = ack_id
        self.sent = False

    def __call__(self, *args: Any) -> None:
        if self.sent:
            return
        self.sent = True
        self.client._send(Packet(ACK, self.client.namespace.name, list(args), self.id))


class ConnectionRefused(Exception):
    """Raised by a connect handler: the client is refused with this message (a CONNECT_ERROR)."""


class Client:
    """One client connected to one namespace (a session may hold several)."""

    __slots__ = ("namespace", "session", "sid", "auth", "rooms", "connected", "data", "_acks", "_next_ack")

    def __init__(self, namespace: "Namespace", session: EngineSession, auth: dict[str, Any], sid: str) -> None:
        self.namespace = namespace
        self.session = session
        self.sid = sid
        self.auth = auth
        self.rooms: set[str] = set()
        self.connected = True
        #: Free for the application.
        self.data: Any = None
        self._acks: dict[int, Callable[..., Any]] = {}
        self._next_ack = 0

    @property
    def peer(self) -> str:
        return self.session.peer

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """Send *event* with *args*; *callback* is called with the client's ack, if it sends one."""
        ack_id = None
        if callback is not None:
            ack_id = self._next_ack
            self._next_ack += 1
            self._acks[ack_id] = callback
        self._send(Packet(EVENT, self.namespace.name, [event, *args], ack_id))

    def join(self, room: str) -> None:
        self.namespace._rooms.setdefault(room, set()).add(self)
        self.rooms.add(room)

    def leave(self, room: str) -> None:
        members = self.namespace._rooms.get(room)
        if members is not None:
            members.discard(self)
            if not members:
                del self.namespace._rooms[room]
        self.rooms.discard(room)

    def disconnect(self) -> None:
        """Leave the namespace: the client is told (a DISCONNECT packet)."""
        if self.connected:
            self._send(Packet(DISCONNECT, self.namespace.name))
            self.namespace._gone(self, "server namespace disconnect")

    def send_encoded(self, messages: list[str]) -> None:
        """Send events already encoded as text messages (:func:`encode`), in order and in one go.

        For a server that sends the same events to many clients: it encodes them once.
        """
        if self.connected:
            self.session.send_many(messages)

    def _send(self, packet: Packet) -> None:
        if self.connected or packet.type == DISCONNECT:
            for message in encode(packet):
                self.session.send(message)

    def _acked(self, packet: Packet) -> None:
        callback = self._acks.pop(packet.id, None) if packet.id is not None else None
        if callback is not None:
            callback(*packet.data)


Handler = Callable[..., Any]


class Namespace:
    """The clients of one namespace and what its events do.

    Handlers: ``@ns.on("authorize")`` is called as ``fn(client, auth)`` before
    the client is let in (return False or raise :class:`ConnectionRefused`
    to refuse it), ``@ns.on("connect")`` as ``fn(client, auth)`` once it is,
    ``@ns.on("disconnect")`` as
    ``fn(client, reason)``, any other event as ``fn(client, *args)``: its
    return value is the ack when the client asked for one (a tuple for
    several arguments). Subclasses may override :meth:`accept`,
    :meth:`connected`, :meth:`event` and :meth:`disconnected` instead.
    """

    def __init__(self, name: str = "/") -> None:
        self.name = name
        self.clients: dict[str, Client] = {}
        self._handlers: dict[str, Handler] = {}
        self._rooms: dict[str, set[Client]] = {}

    def on(self, event: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._handlers[event] = handler
            return handler

        return register

    def emit(self, event: str, *args: Any, to: str | None = None) -> None:
        """Send *event* to every client of the namespace, or of room *to*."""
        for client in self.members(to):
            client.emit(event, *args)

    def members(self, room: str | None = None) -> Iterator[Client]:
        clients = self.clients.values() if room is None else self._rooms.get(room, set())
        return iter(list(clients))

    # -- hooks ---------------------------------------------------------------------

    def accept(self, client: Client, auth: dict[str, Any]) -> None:
        """A client asks to connect: raise ConnectionRefused to refuse it (before anything is sent)."""
        handler = self._handlers.get("authorize")
        if handler is not None and handler(client, auth) is False:
            raise ConnectionRefused("Connection refused")

    def connected(self, client: Client) -> None:
        """*client* is connected (its CONNECT answer is sent): what it is sent now follows that."""
        handler = self._handlers.get("connect")
        if handler is not None:
            handler(client, client.auth)

    def event(self, client: Client, name: str, args: list[Any], ack: Ack | None) -> None:
        """*client* sent event *name*; *ack* answers it, when the client asked for an answer."""
        handler = self._handlers.get(name)
        if handler is None:
            return
        result = handler(client, *args)
        if ack is not None:
            ack(*(result if isinstance(result, tuple) else () if result is None else (result,)))

    def disconnected(self, client: Client, reason: str) -> None:
        """*client* has left the namespace (*reason*: ``client namespace disconnect``, ``transport close``, ...)."""
        handler = self._handlers.get("disconnect")
        if handler is not None:
            handler(client, reason)

    def _gone(self, client: Client, reason: str) -> None:
        if not client.connected:
            return
        client.connected = False
        for room in list(client.rooms):
            client.leave(room)
        self.clients.pop(client.sid, None)
        link = client.session.data
        if isinstance(link, _Link):
            link.clients.pop(self.name, None)
        self.disconnected(client, reason)


class _Link:
    """What the Socket.IO layer keeps per Engine.IO session."""

    __slots__ = ("clients", "connect_by", "pending")

    def __init__(self, connect_by: float) -> None:
        self.clients: dict[str, Client] = {}
        #: Until the first CONNECT: when the session is closed without one.
        self.connect_by: float | None = connect_by
        #: A binary packet waiting for its attachments.
        self.pending: tuple[Packet, list[bytes]] | None = None


class SocketIOServer:
    """Namespaces over the sessions of one :class:`EngineServer` (``engine``, made here)."""

    def __init__(self, settings: EngineSettings | None = None, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.engine = EngineServer(self, settings)
        self.connect_timeout = connect_timeout
        self.namespaces: dict[str, Namespace] = {}
        #: Sessions not yet connected to a namespace, oldest first: their deadlines are in this order too.
        self._waiting: OrderedDict[EngineSession, None] = OrderedDict()

    def of(self, name: str = "/", namespace: Namespace | None = None) -> Namespace:
        """The namespace *name* (made on first use, or *namespace* given)."""
        if namespace is not None:
            namespace.name = name
            self.namespaces[name] = namespace
        return self.namespaces.setdefault(name, Namespace(name))

    # -- EngineApp ----------------------------------------------------------------

    def opened(self, session: EngineSession) -> None:
        session.data = _Link(self.engine.now + self.connect_timeout)
        self._waiting[session] = None

    def received(self, session: EngineSession, message: Message) -> None:
        link = session.data
        assert isinstance(link, _Link)
        try:
            packet = self._packet(link, message)
            if packet is not None:
                self._dispatch(session, link, packet)
        except PacketError as error:
            logger.info("Closing Socket.IO session from %s: %s", session.peer or "?", error)
            session.close("parse error")
        except Exception:  # a bug in a handler: the application's to fix, not the client's to pay for
            logger.exception("Error in a Socket.IO handler (client %s)", session.peer or "?")

    def closed(self, session: EngineSession, reason: str) -> None:
        self._waiting.pop(session, None)
        link = session.data
        if isinstance(link, _Link):
            for client in list(link.clients.values()):
                self._gone(client, reason)

    def close_all(self, reason: str = "server shutting down") -> None:
        """Disconnect every client (each is sent a DISCONNECT) and close every session: the server is going."""
        for namespace in list(self.namespaces.values()):
            for client in namespace.members():
                client._send(Packet(DISCONNECT, namespace.name))
                self._gone(client, reason)
        self.engine.close_all(reason)

    @staticmethod
    def _gone(client: Client, reason: str) -> None:
        """*client* left its namespace; an error in the disconnect handler is logged, the others still run."""
        try:
            client.namespace._gone(client, reason)
        except Exception:
            logger.exception("Error in a Socket.IO disconnect handler (client %s)", client.peer or "?")

    def tick(self, now: float, limit: int | None = None) -> bool:
        """The Engine.IO timers, and sessions that never connected to a namespace (at most *limit* of each:
        True when more may be due)."""
        more = self.engine.tick(now, limit)
        waiting = self._waiting
        closed = 0
        while waiting:  # only the due ones are looked at: the first not due ends the walk
            if limit is not None and closed >= limit:
                return True
            session = next(iter(waiting))
            link = session.data
            deadline = link.connect_by if isinstance(link, _Link) else None
            if deadline is not None and now < deadline:
                break
            waiting.pop(session, None)
            if deadline is not None:
                session.close("connect timeout")
                closed += 1
        return more

    # -- internals --------------------------------------------------------------------

    def _packet(self, link: _Link, message: Message) -> Packet | None:
        if link.pending is not None:
            if not isinstance(message, bytes):
                raise PacketError("text packet while binary attachments were due")
            packet, got = link.pending
            got.append(message)
            limit = self.engine.settings.max_payload
            if sum(map(len, got)) > limit:  # what waits for the rest is bounded as one message is
                raise PacketError(f"binary attachments over {limit} bytes")
            if len(got) < len(packet.attachments):
                return None
            link.pending = None
            try:
                packet.data = _reconstruct(packet.data, got)
            except RecursionError:
                raise PacketError("payload nested too deeply") from None
            packet.type = EVENT if packet.type == BINARY_EVENT else ACK
            packet.attachments = got
            return packet
        if isinstance(message, bytes):
            raise PacketError("binary message without a packet announcing it")
        packet = decode(message)
        if packet.attachments:
            link.pending = (packet, [])
            return None
        return packet

    def _dispatch(self, session: EngineSession, link: _Link, packet: Packet) -> None:
        kind = packet.type
        client = link.clients.get(packet.namespace)
        if kind == CONNECT:
            self._connect(session, link, packet)
        elif client is None:
            if kind != DISCONNECT:
                logger.debug("Packet for namespace %s, which %s has not joined", packet.namespace, session.peer)
        elif kind == DISCONNECT:
            client.namespace._gone(client, "client namespace disconnect")
        elif kind == EVENT:
            name, args = packet.data[0], packet.data[1:]
            ack = Ack(client, packet.id) if packet.id is not None else None
            client.namespace.event(client, name, args, ack)
        elif kind == ACK:
            client._acked(packet)

    def _connect(self, session: EngineSession, link: _Link, packet: Packet) -> None:
        namespace = self.namespaces.get(packet.namespace)
        if namespace is None:
            self._refuse(session, packet.namespace, "Invalid namespace")
            return
        if packet.namespace in link.clients:
            return  # already connected: the JavaScript server ignores it too
        client = Client(namespace, session, packet.data or {}, self.engine.new_id())
        try:
            namespace.accept(client, client.auth)
        except ConnectionRefused as refusal:  # the connect deadline still runs: a refused session cannot stay
            self._refuse(session, packet.namespace, str(refusal) or "Connection refused")
            return
        except Exception:  # a bug in the authorize handler: the client is refused, not left waiting
            logger.exception("Error in a Socket.IO authorize handler (client %s)", session.peer or "?")
            self._refuse(session, packet.namespace, "Connection refused")
            return
        link.connect_by = None
        self._waiting.pop(session, None)
        if session.closed is not None:
            return
        namespace.clients[client.sid] = client
        link.clients[namespace.name] = client
        for message in encode(Packet(CONNECT, namespace.name, {"sid": client.sid})):
            session.send(message)
        namespace.connected(client)

    @staticmethod
    def _refuse(session: EngineSession, namespace: str, message: str) -> None:
        for text in encode(Packet(CONNECT_ERROR, namespace, {"message": message})):
            session.send(text)
