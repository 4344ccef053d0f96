"""How one rooms-workload member talks, sans-IO and never blocking: TCP lines, lines in WebSocket
messages, or Socket.IO events.

The rooms workloads (:mod:`socketlab.bench.pairs`) connect thousands of
members at once, so no handshake may block: a speaker is given the bytes
that arrive (``receive()``) and says what to send (``take_output()``);
the caller owns the socket. Each speaker moves through the same steps:

1. opening: what it must send first (``opening()``: a WebSocket's upgrade
   request; nothing for TCP);
2. welcomed (``welcomed`` true): the server's first chat line (TCP, ``/ws``:
   socketlab's ``* welcome ...``), or a Socket.IO namespace's connect
   answer ``40`` (the tutorial's Node server says nothing more); a
   refusal -- an ``! ...`` first line, an HTTP status other than 101, a
   Socket.IO ``44`` -- sets ``refused`` instead;
3. then ``join(room)`` (``/join ROOM``, or the event ``room``) and
   ``say(line)``; ``receive()`` returns the chat lines that arrived,
   newline-terminated, as the tally reads them. A full room's answer --
   ``! room NAME is full ...``, or Socket.IO's event ``result`` ``failed``
   (the tutorial's) -- sets ``join_refused``.

Answers owed to the server -- WebSocket pongs, Engine.IO pongs (``3``) --
queue behind what the speaker was asked to send, so every frame leaves
whole and in order.
"""

from __future__ import annotations

import json

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from socketlab.bench.wire import SOCKETIO_PATH, WS_PATH, socketio_lines, text_messages


#: How a line-protocol server says no to /join (socketlab: ``! room NAME is full (2/2)``).
_ROOM_REFUSAL = b"! room "
#: How the tutorial's Socket.IO server (and socketlab's) says a room is full.
_RESULT_FAILED = b'42["result","failed"]'


def _room_refusal(payload: bytes) -> str | None:
    """The text of a full room's error line in *payload*, or None."""
    start = payload.find(_ROOM_REFUSAL)
    end = payload.find(b"\n", start)
    line = payload[start + 2 : end if end >= 0 else len(payload)]
    return line.decode("utf-8", "replace") if b" is full" in line else None


class LineSpeaker:
    """A member speaking TCP lines: welcomed by the server's first line (refused if it starts with ``! ``)."""

    #: Whether the server gives this member its own chat lines back.
    echoes = False

    def __init__(self) -> None:
        self.welcomed = False
        #: Why the server would not have this member (None: it did not refuse).
        self.refused: str | None = None
        #: Why the server would not let it into its room (None: it did not say no).
        self.join_refused: str | None = None
        self._head = b""
        self._out: list[bytes] = []

    def opening(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> bytes:
        """The chat lines in *data* (the stream as it comes: the last line may be cut; the tally joins it)."""
        if not self.welcomed and self.refused is None:
            self._head += data
            end = self._head.find(b"\n")
            if end >= 0:
                first = self._head[:end]
                self._head = b""
                if first.startswith(b"! "):
                    self.refused = first[2:].decode("utf-8", "replace")
                else:
                    self.welcomed = True
        if _ROOM_REFUSAL in data:
            self.join_refused = _room_refusal(data)
        return data

    def join(self, room: str) -> None:
        self._out.append(b"/join %s\n" % room.encode())

    def say(self, line: bytes) -> None:
        """Queue *line* (newline-terminated)."""
        self._out.append(line)

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        return out


class WebSocketSpeaker:
    """A member speaking lines in WebSocket text messages at *path* (websockets' Sans-I/O client).

    Welcomed by its first text message (the server's welcome line), refused
    by an HTTP status other than 101 or a first message ``! ...``.
    """

    echoes = False

    def __init__(self, address: tuple[str, int], path: str = WS_PATH) -> None:
        host, port = address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.protocol = ClientProtocol(parse_uri(f"ws://{netloc}{path}"), max_size=None)
        self.welcomed = False
        self.refused: str | None = None
        self.join_refused: str | None = None
        #: Whether the server accepted the upgrade (101).
        self.open = False
        self._fragments: list[bytes] | None = None

    def opening(self) -> bytes:
        self.protocol.send_request(self.protocol.connect())
        return self.take_output()

    def receive(self, data: bytes) -> bytes:
        messages = self._messages(data)
        if messages and not self.welcomed and self.refused is None:
            if messages[0].startswith(b"! "):
                self.refused = messages[0][2:].decode("utf-8", "replace").rstrip("\n")
            else:
                self.welcomed = True
        payload = b"".join(messages)
        if _ROOM_REFUSAL in payload:
            self.join_refused = _room_refusal(payload)
        return payload

    def _messages(self, data: bytes) -> list[bytes]:
        """The whole text messages *data* completes (the handshake's response taken first)."""
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        if not self.open and events:
            response = events.pop(0)
            if isinstance(response, Response) and response.status_code == 101:
                self.open = True
            else:
                self.refused = f"HTTP {getattr(response, 'status_code', '?')}"
                return []
        messages, self._fragments = text_messages(events, self._fragments)
        return messages

    def join(self, room: str) -> None:
        self.protocol.send_text(b"/join %s\n" % room.encode())

    def say(self, line: bytes) -> None:
        self.protocol.send_text(line)

    def take_output(self) -> bytes:
        return b"".join(self.protocol.data_to_send())


class SocketIOSpeaker(WebSocketSpeaker):
    """A member speaking the tutorial's Socket.IO events over WebSocket only (Engine.IO 4, Socket.IO 5).

    Answers the Engine.IO open packet with ``40``; welcomed by the
    namespace's ``40{...}``, refused by ``44`` (or a ``1``, the session
    closed). ``join()`` sends the event ``room``, ``say()`` a ``chat
    message``; the server relays those to the room, the sender included
    (``echoes``).
    """

    echoes = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, SOCKETIO_PATH)
        self._engine_open = False

    def receive(self, data: bytes) -> bytes:
        messages = self._messages(data)
        if not self.welcomed:
            messages = self._connect(messages)
        if _RESULT_FAILED in messages:
            self.join_refused = "the server answered the event 'room' with 'result' 'failed'"
        lines, pings = socketio_lines(messages)
        for _ in range(pings):
            self.protocol.send_text(b"3")
        return lines

    def _connect(self, messages: list[bytes]) -> list[bytes]:
        """Go through Engine.IO's open and the namespace's connect; the messages after the welcome."""
        for index, message in enumerate(messages):
            if self.refused is not None:
                return []
            if not self._engine_open:
                if message[:1] != b"0":
                    self.refused = f"not an Engine.IO 4 server (it opened with {message[:40]!r})"
                    return []
                self._engine_open = True
                self.protocol.send_text(b"40")
            elif message[:2] == b"40":
                self.welcomed = True
                return messages[index + 1 :]
            elif message[:2] == b"44":
                self.refused = message[2:200].decode("utf-8", "replace")
            elif message[:1] == b"1":
                self.refused = "the server closed the Engine.IO session"
            elif message == b"2":
                self.protocol.send_text(b"3")
        return []

    def join(self, room: str) -> None:
        self.protocol.send_text(b'42["room",%s]' % json.dumps(room).encode())

    def say(self, line: bytes) -> None:
        self.protocol.send_text(b'42["chat message",%s]' % json.dumps(line.rstrip(b"\n").decode()).encode())


Speaker = LineSpeaker | WebSocketSpeaker | SocketIOSpeaker


def speaker_for(transport: str, address: tuple[str, int]) -> Speaker:
    """A fresh speaker for *transport* (``tcp``, ``ws`` or ``socketio``) to the server at *address*."""
    if transport == "tcp":
        return LineSpeaker()
    if transport == "ws":
        return WebSocketSpeaker(address)
    if transport == "socketio":
        return SocketIOSpeaker(address)
    raise ValueError(f"no transport {transport!r}")
