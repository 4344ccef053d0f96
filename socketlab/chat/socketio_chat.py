"""The chat over Socket.IO: the tutorial's events, on the same hub as terminals and browsers.

A Socket.IO client that connects to the main namespace becomes a member like
any other (``user<N>``, in the lobby). Its events mean what they mean in the
tutorial's rooms server:

- ``room`` (a name) joins that room, within ``--room-size``; a full room
  answers the event ``result`` with ``failed`` (and the ack, when asked:
  ``ok`` or ``failed``);
- ``chat message`` (a string) is one or more lines of the line protocol: chat
  text goes to the room, the sender included (as ``io.to(room).emit`` does),
  and commands (``/nick``, ``/who``, ``/msg`` ...) work as from a terminal.

What the hub sends a member comes back as events: ``chat message`` for chat
lines (``<name> text``), ``notice`` for server lines (``* ...``, without the
star), ``error`` for errors (``! ...``, without the mark). See docs/protocol.md.

The Socket.IO layer runs under the chat lock (deliveries reach it there), so
what its events ask of the chat core -- join, lines, departure -- is queued
and run by :meth:`SocketIOChat.settle` after the lock is released, in order.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from socketlab.chat.flood import FloodGate
from socketlab.chat.protocol import NAME_RULE, valid_name
from socketlab.text import plural
from socketlab.lines import message_lines
from socketlab.socketio import EVENT, Ack, Client, Namespace, Packet, encode

if TYPE_CHECKING:
    from socketlab.chat.service import ChatCore
    from socketlab.serving import Acceptor

logger = logging.getLogger("socketlab.chat.socketio")

#: The events a Socket.IO member may send.
EVENTS = ("chat message", "room")
#: The event of a server line, by its mark.
_MARKS = {"* ": "notice", "! ": "error"}
#: Departure reasons of the chat, by Socket.IO's reason for the end of a client.
_REASONS = {
    "client namespace disconnect": "disconnected",
    "client closed": "disconnected",
    "transport close": "disconnected",
    "parse error": "protocol error",
    "protocol error": "protocol error",
}


def _merged(intents: list[tuple[str, "SocketIOMember", Any]]) -> list[tuple[str, "SocketIOMember", Any]]:
    """*intents* with a member's consecutive lines as one: its events read at once become one burst.

    A Socket.IO event carries one message, where a TCP read carries many lines; merged, a burst is
    one delivery to each member of the room (the hub coalesces consecutive chat lines), as on TCP.
    """
    merged: list[tuple[str, SocketIOMember, Any]] = []
    for intent in intents:
        if merged and intent[0] == "lines" and merged[-1][0] == "lines" and merged[-1][1] is intent[1]:
            merged[-1] = ("lines", intent[1], merged[-1][2] + intent[2])
        else:
            merged.append(intent)
    return merged


class SocketIOMember:
    """A Socket.IO client as the chat core sees it: a :class:`~socketlab.chat.protocol.Transport`."""

    __slots__ = ("chat", "client", "peer", "member", "last_active", "departed", "gate", "rooms", "closing")

    #: Socket.IO members get their own chat lines back, as the tutorial's ``io.to(room).emit`` does.
    echo = True

    def __init__(self, chat: "SocketIOChat", client: Client, now: float) -> None:
        self.chat = chat
        self.client = client
        self.peer = client.peer
        #: The chat core's handle, once joined.
        self.member: Any = None
        self.last_active = now
        self.departed = False
        self.gate: FloodGate | None = FloodGate(chat.max_rate, now) if chat.max_rate > 0 else None
        #: ``room`` requests waiting for the hub's answer: (room, ack).
        self.rooms: deque[tuple[str, Ack | None]] = deque()
        self.closing: str | None = None

    @property
    def backlog(self) -> int:
        return self.client.session.backlog

    # -- Transport (lock held) ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Whole lines from the hub, each as an event, encoded once for every member they go to."""
        if self.rooms:  # a `room` request waits for its answer among these lines
            self._send_answering(data)
        else:
            self.client.send_encoded(self.chat.encoded(data))

    def _send_answering(self, data: bytes) -> None:
        emit = self.client.emit
        for raw in data.split(b"\n")[:-1]:
            line = raw.decode("utf-8", "replace")
            if line.startswith("* "):
                text = line[2:]
                emit("notice", text)
                if self.rooms and text == f"you are in {self.rooms[0][0]}":
                    self._answer_room("ok")  # after the notice: all of the answer is there when the ack is
            elif line.startswith("! "):
                text = line[2:]
                if self.rooms and text.startswith(f"room {self.rooms[0][0]} is full"):
                    emit("result", "failed")
                    emit("error", text)
                    self._answer_room("failed")
                else:
                    emit("error", text)
            else:
                emit("chat message", line)

    def close(self, reason: str) -> None:
        """Leave the namespace (a DISCONNECT), then end the session."""
        if self.closing is None:
            self.closing = reason
        self.client.disconnect()
        self.client.session.close(reason)

    def _answer_room(self, result: str) -> None:
        _room, ack = self.rooms.popleft()
        if ack is not None:
            ack(result)


class SocketIOChat(Namespace):
    """The main namespace of ``chat serve --web``: the chat's events (see the module docstring)."""

    def __init__(self, core: "ChatCore", acceptor: "Acceptor", max_line: int, max_rate: float = 0.0) -> None:
        super().__init__("/")
        self.core = core
        self.acceptor = acceptor
        self.max_line = max_line
        self.max_rate = max_rate
        #: What events asked of the core, run by settle() without the lock: (verb, member, detail).
        self._intents: list[tuple[str, SocketIOMember, Any]] = []
        self._settling = threading.Lock()
        self._held: set[SocketIOMember] = set()
        #: Called (lock not held) with each Socket.IO member once it is in the chat (the server's idle timer).
        self.on_joined: Callable[[SocketIOMember], None] | None = None
        #: The last delivery and its events as messages: a delivery to a room is encoded once.
        self._encoded: tuple[bytes, list[str]] = (b"", [])

    def encoded(self, data: bytes) -> list[str]:
        """The events for *data* (whole lines from the hub) as Engine.IO messages (lock held).

        Chat lines are ``chat message``, server lines ``notice`` (``* ``) and ``error`` (``! ``),
        without their mark. The same bytes object delivered to many members is encoded once.
        """
        cached = self._encoded
        if cached[0] is not data:
            messages = []
            for raw in data.split(b"\n")[:-1]:
                line = raw.decode("utf-8", "replace")
                event = _MARKS.get(line[:2])
                if event is None:
                    messages += encode(Packet(EVENT, self.name, ["chat message", line]))
                else:
                    messages += encode(Packet(EVENT, self.name, [event, line[2:]]))
            cached = self._encoded = (data, [str(message) for message in messages])
        return cached[1]

    # -- Namespace hooks (lock held) ---------------------------------------------------

    def accept(self, client: Client, auth: dict[str, Any]) -> None:
        if self.core.shutting_down:
            from socketlab.socketio import ConnectionRefused

            raise ConnectionRefused("server shutting down")
        if not self.acceptor.take_seat():
            from socketlab.socketio import ConnectionRefused

            self.acceptor.refusal_log.log(
                logging.WARNING, "Refused %s: server is full (%s)", client.peer, plural(self.acceptor.max_clients, "client")
            )
            raise ConnectionRefused("server full")

    def connected(self, client: Client) -> None:
        transport = SocketIOMember(self, client, time.monotonic())
        client.data = transport
        self._intents.append(("join", transport, None))

    def event(self, client: Client, name: str, args: list[Any], ack: Ack | None) -> None:
        transport = client.data
        if transport is None or transport.departed:  # None: it departed, and was let go
            return
        now = time.monotonic()
        if name == "chat message":
            if len(args) != 1 or not isinstance(args[0], str):
                client.emit("error", "chat message takes one string")
                return
            transport.last_active = now
            self._lines(transport, args[0].encode("utf-8"), now)
            if ack is not None:
                ack()
        elif name == "room":
            room = unicodedata.normalize("NFC", args[0]) if len(args) == 1 and isinstance(args[0], str) else ""
            if not valid_name(room):
                client.emit("result", "failed")
                client.emit("error", f"invalid room name: {NAME_RULE}")
                if ack is not None:
                    ack("failed")
                return
            transport.last_active = now
            transport.rooms.append((room, ack))
            self._lines(transport, f"/join {room}".encode(), now)
        else:
            client.emit("error", f"unknown event {name[:64]!r} (events: {', '.join(EVENTS)})")

    def disconnected(self, client: Client, reason: str) -> None:
        transport = client.data
        if isinstance(transport, SocketIOMember) and not transport.departed:
            transport.departed = True
            self._held.discard(transport)
            self._intents.append(("depart", transport, transport.closing or _REASONS.get(reason, reason)))

    # -- flood control ----------------------------------------------------------------

    def _lines(self, transport: SocketIOMember, data: bytes, now: float) -> None:
        items = message_lines(data, self.max_line)
        gate = transport.gate
        if gate is not None:
            items = gate.admit(items, len(data), now)
        if items:
            self._intents.append(("lines", transport, items))
        if gate is not None and gate.held:
            self._held.add(transport)
            if len(gate.held) > 16 * gate.line_rate + 64:  # no TCP flow control here: bound what waits
                transport.client.emit("error", "sending too fast, disconnecting")
                transport.close("flooding")
            elif gate.notice_due(now):
                transport.client.emit("error", gate.notice().decode().rstrip("\n")[2:])

    @property
    def held_count(self) -> int:
        """Socket.IO members held back by flood control now."""
        return len(self._held)

    def tick(self, now: float) -> None:
        """Let held lines through as the members' budgets refill (lock held)."""
        for transport in list(self._held):
            gate = transport.gate
            assert gate is not None
            items = gate.release(now)
            if items:
                self._intents.append(("lines", transport, items))
            if not gate.held:
                self._held.discard(transport)
                gate.noticed = None

    # -- the core, without the lock ------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._intents)

    def settle(self) -> None:
        """Run what the events asked of the chat core, in order (never with the lock held)."""
        if not self._intents:
            return
        with self._settling:
            # Whoever queues an intent (lock held) calls settle() after: the list is looked at without the
            # lock, and taken with it.
            while self._intents:
                with self.core.lock:
                    intents, self._intents = self._intents, []
                for verb, transport, detail in intents if len(intents) == 1 else _merged(intents):
                    try:
                        self._run(verb, transport, detail)
                    except Exception:  # a bug must not stop the others' intents
                        logger.exception("Socket.IO chat: %s for %s failed", verb, transport.peer)

    def _run(self, verb: str, transport: SocketIOMember, detail: Any) -> None:
        core = self.core
        if verb == "join":
            if transport.departed:
                self.acceptor.free_seat()
                return
            members = core.join([transport])
            if members is None:
                with core.lock:
                    transport.close("server shutting down" if core.shutting_down else "chat backend unavailable")
                return
            transport.member = members[0]
            if self.on_joined is not None:
                self.on_joined(transport)
        elif verb == "lines":
            if transport.member is not None:  # after /quit the core closes the transport (QUIT)
                core.receive(transport.member, detail)
        elif verb == "depart":
            self.acceptor.free_seat()
            if transport.member is not None:
                core.depart(transport.member, None if detail == "quit" else detail)
            # The member, its transport and the client refer to each other: once apart, reference
            # counting frees them when they go, and the cyclic collector has nothing to find.
            transport.member = None
            transport.client.data = None
