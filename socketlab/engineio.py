"""Engine.IO protocol 4, sans-IO: sessions over HTTP long-polling and WebSocket.

Engine.IO is the transport under Socket.IO: a *session* (``sid``) carries
*packets* (open, close, ping, pong, message, upgrade, noop) over a series of
HTTP requests -- a GET that the server holds until it has something to send,
POSTs for the client's packets -- and, once both sides agree, over one
WebSocket. This module decides everything a server does: the handshake, what
a request means and what it is answered, heartbeats and timeouts, the upgrade
(``2probe``/``3probe``/``5``), the limits. It never touches a socket: the I/O
layer calls :class:`EngineServer` with each request and gives each session
its :class:`Carrier` -- whatever writes to the held GET or the WebSocket.

Messages are ``str`` (text) or ``bytes`` (binary: ``b`` + base64 over
polling, a binary frame over WebSocket). What the messages mean is the
:class:`EngineApp`'s business (Socket.IO, in :mod:`socketlab.socketio`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
from dataclasses import dataclass
from typing import Protocol, Union, cast

from socketlab.timers import Deadlines

Message = Union[str, bytes]

OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
#: Separates the packets of one polling payload (the ASCII record separator).
SEPARATOR = "\x1e"
#: Random bytes in a session id.
SID_BYTES = 15
#: Defaults of the JavaScript server: ping every 25 s, give up 20 s after an unanswered ping, 1 MB bodies.
PING_INTERVAL = 25.0
PING_TIMEOUT = 20.0
MAX_PAYLOAD = 1_000_000
#: A session's first ping comes up to this share of the interval early, at random: a crowd that connected
#: at once (a restart) is not pinged at once, and then every interval after (its pongs would come at once too).
PING_SPREAD = 0.5
#: Seconds a closed polling session waits for the client's next GET to collect its last packets.
CLOSE_TIMEOUT = 2.0
#: Seconds a probed WebSocket has to send the upgrade packet (the JavaScript server's ``upgradeTimeout``).
UPGRADE_TIMEOUT = 10.0

#: The JavaScript server's error codes, as its 400 bodies carry them.
TRANSPORT_UNKNOWN, SESSION_UNKNOWN, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, UNSUPPORTED_VERSION = range(6)
_ERROR_TEXT = {
    TRANSPORT_UNKNOWN: "Transport unknown",
    SESSION_UNKNOWN: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_VERSION: "Unsupported protocol version",
}


class PacketError(ValueError):
    """Bytes that are not an Engine.IO packet or payload."""


class EngineError(Exception):
    """A request the server refuses: its HTTP status and the JavaScript server's error code."""

    def __init__(self, code: int, status: int = 400, message: str | None = None) -> None:
        self.code = code
        self.status = status
        self.message = message or _ERROR_TEXT.get(code, "Bad request")
        super().__init__(self.message)

    def body(self) -> bytes:
        """The JSON body the JavaScript server answers with."""
        return json.dumps({"code": self.code, "message": self.message}, separators=(",", ":")).encode()


# -- packets and payloads ------------------------------------------------------


def encode_packet(kind: str, data: Message = "") -> Message:
    """One packet as a WebSocket message: ``4hello``, ``2``; a binary message is its bytes."""
    if isinstance(data, bytes):
        return data
    return kind + data


def decode_packet(message: Message) -> tuple[str, Message]:
    """A WebSocket message as (kind, data); a binary message is a MESSAGE packet."""
    if isinstance(message, bytes):
        return MESSAGE, message
    if not message or message[0] not in "0123456":
        raise PacketError(f"not an Engine.IO packet: {message[:20]!r}")
    return message[0], message[1:]


def encode_payload(packets: list[tuple[str, Message]]) -> str:
    """Packets as one polling body: text packets as they are, binary ones as ``b`` + base64, joined by RS."""
    parts = []
    for kind, data in packets:
        if isinstance(data, bytes):
            parts.append("b" + base64.b64encode(data).decode("ascii"))
        else:
            parts.append(kind + data)
    return SEPARATOR.join(parts)


def decode_payload(body: bytes) -> list[tuple[str, Message]]:
    """A polling POST's body as packets; PacketError if any is malformed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("payload is not UTF-8") from None
    packets: list[tuple[str, Message]] = []
    for part in text.split(SEPARATOR):
        if part[:1] == "b":
            try:
                packets.append((MESSAGE, base64.b64decode(part[1:], validate=True)))
            except (binascii.Error, ValueError):
                raise PacketError("bad base64 in a binary packet") from None
        else:
            packets.append(decode_packet(part))
    return packets


# -- the seams to the I/O layer and to the application ---------------------------


class Carrier(Protocol):
    """Where a session's packets go: a held GET (answered once) or an open WebSocket. Never blocks."""

    def deliver(self, packets: list[tuple[str, Message]]) -> None:
        """Send *packets*: a polling carrier answers its request with them (and is then used up)."""

    def close(self) -> None:
        """End the carrier (a WebSocket: close it; a held GET: answer what it was given, then done)."""


class WebSocketCarrier(Carrier, Protocol):
    """A WebSocket carrier, which also takes text messages straight, without packet tuples."""

    def deliver_messages(self, messages: list[str]) -> None:
        """Send *messages* as MESSAGE packets (the relay's hot path)."""


class EngineApp(Protocol):
    """What runs on top of Engine.IO sessions (Socket.IO does)."""

    def opened(self, session: "EngineSession") -> None:
        """A new session was opened (its handshake is queued already)."""

    def received(self, session: "EngineSession", message: Message) -> None:
        """The client sent *message*."""

    def closed(self, session: "EngineSession", reason: str) -> None:
        """The session is over (*reason*: ``client closed``, ``ping timeout``, ...)."""


@dataclass
class EngineSettings:
    """What every session of one server shares."""

    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    #: The first ping's spread (see PING_SPREAD; 0: exactly ping_interval after the handshake).
    ping_spread: float = PING_SPREAD
    #: Largest POST body and WebSocket message (a bigger body is answered 413).
    max_payload: int = MAX_PAYLOAD
    #: Bytes that may wait for a client that does not poll or read, before it is dropped as ``too slow``.
    max_backlog: int = 1024 * 1024
    #: Whether sessions may move to WebSocket.
    upgrades: bool = True
    #: A polling session closed between two GETs keeps its last packets this long for the next GET.
    close_timeout: float = CLOSE_TIMEOUT
    #: A WebSocket whose probe was answered is closed when no upgrade packet follows within this time.
    upgrade_timeout: float = UPGRADE_TIMEOUT
    #: Sessions open at once; a handshake beyond is answered 503 (None: no limit but the connections').
    #: Handshakes cost no connection of their own: one kept-alive connection can ask for any number.
    max_sessions: int | None = None


# -- sessions ------------------------------------------------------------------


class EngineSession:
    """One Engine.IO session: its packets waiting, its carrier, its timers.

    ``transport`` is ``polling`` or ``websocket``; ``closed`` says why it ended
    (None while open). ``data`` is free for the application.
    """

    __slots__ = (
        "server",
        "sid",
        "transport",
        "peer",
        "settings",
        "closed",
        "data",
        "_queue",
        "_queued",
        "_carrier",
        "_probing",
        "_probed",
        "_upgrade_by",
        "_ping_at",
        "_pong_by",
        "_poll_by",
        "draining",
    )

    def __init__(self, server: "EngineServer", sid: str, transport: str, now: float, peer: str = "") -> None:
        self.server = server
        self.sid = sid
        self.transport = transport
        self.peer = peer
        self.settings = server.settings
        self.closed: str | None = None
        self.data: object = None
        #: Packets not yet sent, and their size in bytes (bounded by max_backlog).
        self._queue: list[tuple[str, Message]] = []
        self._queued = 0
        #: The held GET (polling) or the WebSocket the session's packets go to now.
        self._carrier: Carrier | None = None
        #: A WebSocket opened to take over, and whether its probe (2probe) was answered: then it waits for 5.
        self._probing: Carrier | None = None
        self._probed = False
        #: When the probed WebSocket is given up if it has not sent the upgrade packet.
        self._upgrade_by: float | None = None
        self._ping_at = now + self.settings.ping_interval * (1.0 - self.settings.ping_spread * random.random())
        self._pong_by: float | None = None
        #: Polling: when the client must poll again by (it is gone otherwise).
        self._poll_by: float | None = now + self.settings.ping_interval + self.settings.ping_timeout
        #: Closed by the server between two GETs: why, while its last packets wait for the next GET.
        self.draining: str | None = None

    # -- for the application ---------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue one message for the client, after everything queued before."""
        self._send(MESSAGE, message)

    def close(self, reason: str = "server closed") -> None:
        """End the session: the client is told (a close packet), then the carrier is closed."""
        if self.closed is not None or self.draining is not None:
            return
        if self.transport == "polling":
            # The close packet goes alone, in a response after everything else, as the JavaScript server
            # sends it: a client acts on it at once, and the JavaScript one drops the Socket.IO packets
            # of the same payload that it has not handed to the application yet.
            self._flush()
            if self._carrier is None:  # the next GET collects the rest, then the close
                self.draining = reason
                self._poll_by = self.server.now + self.settings.close_timeout
                self.server._timers.earliest(self, self._poll_by)
                return
        self._send(CLOSE, "")
        self._end(reason)

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet handed to a carrier."""
        return self._queued

    # -- for the server ------------------------------------------------------------

    def send_many(self, messages: list[str]) -> None:
        """Queue several text messages at once: a WebSocket client gets them in one write.

        The relay's hot path: a chat delivery to many clients passes the same message strings to
        each, so a carrier can frame each once (see the Engine.IO server's ``frames``).
        """
        if self.closed is not None or self.draining is not None:
            return
        carrier = self._carrier
        if carrier is not None and self.transport == "websocket" and not self._queue and not self.server.holding_output:
            cast(WebSocketCarrier, carrier).deliver_messages(messages)  # nothing waits: straight to the socket
            return
        self._queue += [(MESSAGE, message) for message in messages]
        self._queued += sum(len(message) + 1 for message in messages)
        self._sent()

    def _send(self, kind: str, data: Message) -> None:
        if self.closed is not None or self.draining is not None:
            return
        self._queue.append((kind, data))
        self._queued += len(data) + 1
        self._sent()

    def _sent(self) -> None:
        if self._carrier is not None:
            if not self.server.holding_output:
                self._flush()
        elif self._queued > self.settings.max_backlog:
            self._queue.clear()
            self._queued = 0
            self._end("too slow")

    def _flush(self) -> None:
        carrier, packets = self._carrier, self._queue
        if carrier is None or not packets:
            return
        self._queue, self._queued = [], 0
        if self.transport == "polling":
            self._carrier = None  # a GET is answered once
            self._poll_by = self.server.now + self.settings.ping_interval + self.settings.ping_timeout
        carrier.deliver(packets)

    def _end(self, reason: str) -> None:
        """Closed: answer a held GET with what is queued, close the carrier, tell the application."""
        if self.closed is not None:
            return
        self.closed = reason
        carrier, self._carrier = self._carrier, None
        if carrier is not None:
            if self._queue:
                carrier.deliver(self._queue)
            elif self.transport == "polling":
                carrier.deliver([(NOOP, "")])
            carrier.close()
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.close()
        self._queue, self._queued = [], 0
        self.server._forget(self)
        self.server.app.closed(self, reason)

    def _packets(self, packets: list[tuple[str, Message]], now: float) -> None:
        for kind, data in packets:
            if self.closed is not None:
                return
            if kind == MESSAGE:
                self.server.app.received(self, data)
            elif kind == PONG:
                if self._pong_by is not None:
                    self._pong_by = None
                    self._ping_at = now + self.settings.ping_interval
            elif kind == CLOSE:
                self._end("client closed")
            elif kind == NOOP:
                pass
            else:  # OPEN, PING and UPGRADE are not the client's to send here
                self._end("protocol error")
                raise PacketError(f"unexpected packet {kind!r}")

    def tick(self, now: float) -> None:
        """Run the heartbeat and the polling deadline."""
        if self.closed is not None:
            return
        if self.draining is not None:
            if self._poll_by is not None and now >= self._poll_by:
                self._end(self.draining)
            return
        if self._pong_by is None and now >= self._ping_at:
            # Deadlines run from when the ping was due, not from when a tick noticed: a session is
            # given up exactly ping_interval + ping_timeout after the last pong, however late the tick.
            self._pong_by = self._ping_at + self.settings.ping_timeout
            self._send(PING, "")
        if self._upgrade_by is not None and now >= self._upgrade_by and self._probing is not None:
            probing = self._probing  # probed, never upgraded: the session stays on polling
            self._stop_probing()
            probing.close()
        if self._pong_by is not None and now >= self._pong_by:
            self._end("ping timeout")
        elif self._poll_by is not None and self._carrier is None and now >= self._poll_by:
            self._end("transport close")

    def next_timer(self) -> float:
        """When tick() has something to do next."""
        if self.draining is not None and self._poll_by is not None:  # only the polling deadline counts now
            return self._poll_by
        times = [self._pong_by if self._pong_by is not None else self._ping_at]
        if self._poll_by is not None and self._carrier is None:
            times.append(self._poll_by)
        if self._upgrade_by is not None:
            times.append(self._upgrade_by)
        return min(times)

    # -- polling -----------------------------------------------------------------------

    def poll(self, carrier: Carrier, now: float) -> None:
        """A GET arrived: answer it with what waits, or hold it until something does."""
        self.tick(now)
        if self.closed is not None:
            raise EngineError(SESSION_UNKNOWN)
        if self.transport != "polling":
            raise EngineError(BAD_REQUEST, message="session was upgraded")
        if self.draining is not None:  # closed by the server: what waits, then the close packet alone
            self._carrier = carrier
            if self._queue:
                self._flush()
                self._poll_by = now + self.settings.close_timeout
                self.server._timers.earliest(self, self._poll_by)
            else:
                self._queue.append((CLOSE, ""))
                self._end(self.draining)
            return
        if self._carrier is not None:  # a second GET while one is held: the client is broken
            self.close("duplicate poll")  # the held GET is answered with a close packet
            raise EngineError(BAD_REQUEST, message="overlapping GET requests")
        self._carrier = carrier
        self._poll_by = None
        if self._probed and not self._queue:
            # A probe was answered: the client pauses polling for the upgrade once this GET returns, so it is
            # not held (the JavaScript server lets such GETs go with a NOOP every 100 ms). A GET sent just
            # before the probe's answer arrived would otherwise wait for the next ping, 25 s, and with it
            # the upgrade and whatever the client emits meanwhile.
            self._queue.append((NOOP, ""))
            self._queued += 1
        self._flush()

    def post(self, body: bytes, now: float) -> None:
        """A POST of the client's packets arrived; EngineError (and the session closed) if it is malformed."""
        self.tick(now)
        if self.closed is not None:
            raise EngineError(SESSION_UNKNOWN)
        if self.transport != "polling":
            raise EngineError(BAD_REQUEST, message="session was upgraded")
        if self.draining is not None:  # closed by the server: what the client still sends is too late
            return
        try:
            packets = decode_payload(body)
        except PacketError:
            self._end("parse error")
            raise EngineError(BAD_REQUEST, message="malformed payload") from None
        try:
            self._packets(packets, now)
        except PacketError:
            raise EngineError(BAD_REQUEST, message="unexpected packet") from None

    def poll_gone(self, carrier: Carrier) -> None:
        """The held GET's connection ended before it was answered."""
        if self._carrier is carrier:
            self._carrier = None
            self._poll_by = self.server.now + self.settings.ping_interval + self.settings.ping_timeout

    # -- WebSocket ---------------------------------------------------------------------

    def websocket_message(self, carrier: Carrier, message: Message, now: float) -> None:
        """A message on one of the session's WebSockets (the one in use, or one probing to take over)."""
        if self.closed is not None:
            carrier.close()
            return
        try:
            kind, data = decode_packet(message)
        except PacketError:
            self._end("parse error")
            carrier.close()
            return
        if carrier is self._probing:
            self._probe(carrier, kind, data, now)
            return
        if carrier is not self._carrier:
            carrier.close()
            return
        try:
            self._packets([(kind, data)], now)
        except PacketError:
            carrier.close()

    def _probe(self, carrier: Carrier, kind: str, data: Message, now: float) -> None:
        if kind == PING and data == "probe":
            if not self._probed:
                self._probed, self._upgrade_by = True, now + self.settings.upgrade_timeout
                self.server._timers.earliest(self, self._upgrade_by)
            carrier.deliver([(PONG, "probe")])
            held = self._carrier
            if held is not None:  # end the held GET, so the client can finish the upgrade
                self._carrier = None
                held.deliver([(NOOP, "")])
            elif not self._queue:  # the next GET returns at once (anything queued does that too: probes may repeat)
                self._queue.append((NOOP, ""))
                self._queued += 1
        elif kind == UPGRADE:
            self._stop_probing()
            held, self._carrier = self._carrier, carrier
            self.transport = "websocket"
            self._poll_by = None
            if held is not None:
                held.deliver([(NOOP, "")])
            kept = [packet for packet in self._queue if packet[0] != NOOP]
            self._queued -= len(self._queue) - len(kept)  # a NOOP counts one byte
            self._queue = kept
            self._flush()
        else:
            self._stop_probing()
            carrier.close()

    def _stop_probing(self) -> None:
        self._probing, self._probed, self._upgrade_by = None, False, None

    def websocket_gone(self, carrier: Carrier, reason: str = "transport close") -> None:
        """One of the session's WebSockets closed (*reason*: why, when the server failed it)."""
        if carrier is self._probing:
            self._stop_probing()
        elif carrier is self._carrier:
            self._carrier = None
            self._end(reason)


class EngineServer:
    """Every Engine.IO session of one server, and what each request means.

    The I/O layer calls :meth:`handshake`, :meth:`session` (then the session's
    ``poll``/``post``) and :meth:`open_websocket`, and :meth:`tick` now and then
    (``now`` is a monotonic clock in seconds); it catches :class:`EngineError`
    and answers with its status and body.
    """

    def __init__(self, app: EngineApp, settings: EngineSettings | None = None) -> None:
        self.app = app
        self.settings = settings or EngineSettings()
        self.sessions: dict[str, EngineSession] = {}
        self.now = 0.0
        #: Text messages as WebSocket frames, made once for every client a message goes to (bounded).
        self.frames: dict[str, bytes] = {}
        #: Each session at the time its timers next have something to do (or earlier).
        self._timers: Deadlines[EngineSession] = Deadlines()
        #: While true, what sessions send waits in their queues (see hold_output()).
        self.holding_output = False
        #: Random bytes not yet used for ids; the open packets' JSON after the sid, by what it depends on.
        self._random = memoryview(b"")
        self._openings: dict[tuple[object, ...], str] = {}

    @staticmethod
    def check_query(query: dict[str, str], method: str) -> str:
        """The transport a request asks for; EngineError for a bad ``EIO``, ``transport`` or method."""
        if query.get("EIO") != "4":
            raise EngineError(UNSUPPORTED_VERSION)
        transport = query.get("transport")
        if transport not in ("polling", "websocket"):
            raise EngineError(TRANSPORT_UNKNOWN)
        if "sid" not in query and (method != "GET"):
            raise EngineError(BAD_HANDSHAKE_METHOD)
        return transport

    def handshake(self, transport: str, now: float, peer: str = "") -> EngineSession:
        """A new session (its open packet queued); the application is told. EngineError (503) when
        max_sessions are open."""
        self.now = now
        self.admit()
        sid = self.new_id()
        while sid in self.sessions:
            sid = self.new_id()
        session = EngineSession(self, sid, transport, now, peer)
        self.sessions[sid] = session
        self._timers.schedule(session, session.next_timer())
        session._send(OPEN, f'{{"sid":"{sid}",{self._opening(transport)}')
        self.app.opened(session)
        return session

    def new_id(self) -> str:
        """A fresh id, for a session or what the application names with one (Socket.IO's client sid): 15 bytes
        from the system's CSPRNG (``os.urandom``), URL-safe base64 (20 characters).

        The bytes are drawn 4 KiB at a time: a crowd of new sessions costs one system call per 273 ids.
        """
        if len(self._random) < SID_BYTES:
            self._random = memoryview(os.urandom(SID_BYTES * 273))
        chunk, self._random = self._random[:SID_BYTES], self._random[SID_BYTES:]
        return base64.urlsafe_b64encode(chunk).decode("ascii")

    def _opening(self, transport: str) -> str:
        """The open packet's JSON after its sid (the same for every session of a transport): ``"upgrades":...}``."""
        settings = self.settings
        upgrades = transport == "polling" and settings.upgrades
        key = (upgrades, settings.ping_interval, settings.ping_timeout, settings.max_payload)
        rest = self._openings.get(key)
        if rest is None:
            opening = {
                "upgrades": ["websocket"] if upgrades else [],
                "pingInterval": round(settings.ping_interval * 1000),
                "pingTimeout": round(settings.ping_timeout * 1000),
                "maxPayload": settings.max_payload,
            }
            if len(self._openings) > 8:  # the settings were changed along the way: the old ones are done with
                self._openings.clear()
            rest = self._openings[key] = json.dumps(opening, separators=(",", ":"))[1:]
        return rest

    def admit(self) -> None:
        """EngineError (503, ``server full``) when no new session may open now."""
        limit = self.settings.max_sessions
        if limit is not None and len(self.sessions) >= limit:
            raise EngineError(BAD_REQUEST, 503, "server full")

    def session(self, sid: str, now: float) -> EngineSession:
        """The open session *sid*; EngineError when there is none."""
        self.now = now
        session = self.sessions.get(sid)
        if session is None:
            raise EngineError(SESSION_UNKNOWN)
        session.tick(now)
        if session.closed is not None:
            raise EngineError(SESSION_UNKNOWN)
        return session

    def open_websocket(self, sid: str | None, carrier: Carrier, now: float, peer: str = "") -> EngineSession:
        """A WebSocket opened: a new session on it, or (with *sid*) a probe to upgrade a polling one."""
        self.now = now
        if sid is None:
            session = self.handshake("websocket", now, peer)
            session._carrier = carrier
            session._poll_by = None
            session._flush()
            return session
        session = self.session(sid, now)
        if session.transport != "polling" or session._probing is not None or session.draining or not self.settings.upgrades:
            raise EngineError(BAD_REQUEST, message="session cannot be upgraded")
        session._probing = carrier
        return session

    def tick(self, now: float, limit: int | None = None) -> bool:
        """Run the timers that are due: the work follows the sessions whose timers fire, not their number.

        With *limit*, at most that many; True when more may be due (call again).
        """
        self.now = now
        timers = self._timers
        due = timers.due(now, limit)
        for session in due:
            session.tick(now)
            if session.closed is None:
                timers.schedule(session, session.next_timer())
        return limit is not None and len(due) == limit

    def close_all(self, reason: str = "server shutting down") -> None:
        """Close every session (the clients are told)."""
        for session in list(self.sessions.values()):
            session.close(reason)

    def drop_all(self, reason: str = "server shutting down") -> None:
        """End every session now, without telling the clients: their connections are gone (after close_all())."""
        for session in list(self.sessions.values()):
            session._end(reason)

    def hold_output(self) -> None:
        """Queue what sessions send until release_output(): a polling client then gets it in one response.

        A server that says goodbye (a notice, a DISCONNECT, the close) holds its output meanwhile, so a
        held GET carries all three instead of the first alone, while the client's next GET might find
        the server gone.
        """
        self.holding_output = True

    def release_output(self) -> None:
        """Send what waited since hold_output()."""
        self.holding_output = False
        for session in list(self.sessions.values()):
            session._flush()

    def _forget(self, session: EngineSession) -> None:
        self._timers.cancel(session)
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
