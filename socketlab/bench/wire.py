"""How a benchmark client's bytes travel: raw TCP lines, lines in WebSocket text messages or in
Socket.IO events, TLS under any of them.

The chat benchmark reads and writes *payload*: lines. Over TCP that is what
the socket carries; over WebSocket, :class:`WebSocketWire` opens the
connection with websockets' Sans-I/O :class:`ClientProtocol` and turns frames
into payload and back; :class:`SocketIOWire` speaks Engine.IO 4 / Socket.IO 5
over such a WebSocket (no long-polling) and turns ``chat message`` events into
lines and back; with TLS a :class:`~socketlab.tls.TlsLayer` sits underneath.
So the same tally checks every transport.

Answers the client owes the server -- WebSocket pongs, Engine.IO pongs (``3``)
-- are made while reading and sent by :class:`BenchClient` between whole
frames of its own, never in the middle of one.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from socketlab.tls import TlsLayer, TlsStream

#: Where a chat server started with --web takes WebSocket clients.
WS_PATH = "/ws"
#: Where Socket.IO servers take clients: Engine.IO 4 straight over WebSocket, no long-polling first.
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
#: The room every Socket.IO benchmark client joins (the tutorial's ``room`` event).
ROOM = "bench"
#: What a Socket.IO chat line comes back as when its event cannot be read: a line the tally counts as garbled.
GARBLED = "~garbled~"
#: The start of an event packet of the main namespace: ``42[...]``.
_EVENT = b"42"
#: A ``chat message`` event whose string is printable ASCII with no escapes (the benchmark's own lines): its
#: line is the bytes between the quotes, read without a JSON parse (about 1 us instead of 4.6 here).
_PLAIN_CHAT = re.compile(rb'42\["chat message","([ !#-\[\]-~]*)"\]\Z')
#: The most one read takes. Reads land in one buffer per process and are copied out: a fresh
#: 256 KiB bytes object for every recv() costs an mmap and a munmap, about 12 us a read here
#: (measured: 14.5 us against 2.3 us for a 180-byte read), more than all the rest of a small read.
READ_SIZE = 1 << 18
_SCRATCH = bytearray(READ_SIZE)
_SCRATCH_VIEW = memoryview(_SCRATCH)


def receive(sock: socket.socket, size: int = READ_SIZE) -> bytes:
    """``sock.recv(size)`` (at most READ_SIZE) through this process's one read buffer (one reading thread only)."""
    count = sock.recv_into(_SCRATCH, min(size, READ_SIZE))
    return bytes(_SCRATCH_VIEW[:count])


class WebSocketWire:
    """One benchmark client's WebSocket, sans-IO after the handshake.

    ``receive()`` gives whole text messages, ``decode()`` their bytes
    joined (payload); the protocol's answers (pongs, a close) wait for
    ``take_replies()``.
    """

    def __init__(
        self, sock: Any, address: tuple[str, int], timeout: float = 5.0, first: bytes = b"", path: str = WS_PATH
    ) -> None:
        host, port = address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.protocol = ClientProtocol(parse_uri(f"ws://{netloc}{path}"), max_size=None)
        self.sock = sock
        #: The parts of a text message whose last fragment has not come yet (None: none under way).
        self._fragments: list[bytes] | None = None
        self._handshake(timeout, first)

    def _handshake(self, timeout: float, first: bytes) -> None:
        """Send the upgrade request and read the response (blocking, before the run starts)."""
        protocol = self.protocol
        protocol.send_request(protocol.connect())
        self.sock.settimeout(timeout)
        self.sock.sendall(b"".join(protocol.data_to_send()))
        while True:
            data, first = first or self.sock.recv(65536), b""
            if not data:
                raise ConnectionError("the server closed the connection during the WebSocket handshake")
            protocol.receive_data(data)
            events = protocol.events_received()
            if events:
                response = events[0]
                if not isinstance(response, Response) or response.status_code != 101:
                    status = getattr(response, "status_code", "?")
                    raise ConnectionError(f"WebSocket handshake refused (HTTP {status})")
                self._pending = self._messages(events[1:])
                return

    def take_pending_messages(self) -> list[bytes]:
        """Text messages that arrived together with the handshake response."""
        pending, self._pending = self._pending, []
        return pending

    def take_pending(self) -> bytes:
        """Payload that arrived together with the handshake response."""
        return b"".join(self.take_pending_messages())

    def receive(self, data: bytes) -> list[bytes]:
        """The text messages *data* completes, in order (pings are answered through take_replies())."""
        self.protocol.receive_data(data)
        return self._messages(self.protocol.events_received())

    def decode(self, data: bytes) -> bytes:
        """The payload in *data*: the text messages' bytes, in order."""
        return b"".join(self.receive(data))

    def encode(self, payload: bytes) -> bytes:
        """*payload* (whole lines) as one masked text message."""
        self.protocol.send_text(payload)
        return b"".join(self.protocol.data_to_send())

    def take_replies(self) -> bytes:
        """What the protocol has to send on its own (pongs, a close), as bytes for the wire."""
        return b"".join(self.protocol.data_to_send())

    def _messages(self, events: list) -> list[bytes]:  # type: ignore[type-arg]
        messages, self._fragments = text_messages(events, self._fragments)
        return messages


def text_messages(events: list, fragments: list[bytes] | None) -> tuple[list[bytes], list[bytes] | None]:  # type: ignore[type-arg]
    """The whole text messages among websockets' frame *events*, and the parts of one still under way.

    *fragments* are the parts of a text message whose last fragment had not
    come before (None: none under way); binary messages are skipped.
    """
    if fragments is None:  # the usual case: whole text messages only
        messages = [event.data for event in events if event.opcode is Opcode.TEXT and event.fin]
        if len(messages) == len(events):
            return messages, None
    messages = []
    for event in events:
        opcode = event.opcode
        if opcode is Opcode.TEXT:
            if event.fin:
                messages.append(event.data)
            else:
                fragments = [event.data]
        elif opcode is Opcode.CONT and fragments is not None:  # a binary message's are skipped
            fragments.append(event.data)
            if event.fin:
                messages.append(b"".join(fragments))
                fragments = None
        elif opcode is Opcode.BINARY:
            fragments = None
    return messages, fragments


class SocketIOWire:
    """One benchmark client as a Socket.IO client over WebSocket only, in *room*.

    At connect (blocking): the WebSocket to ``/socket.io/``, the Engine.IO
    open packet ``0{...}``, ``40`` answered by ``40{"sid":...}``, then the
    event ``room``. Afterwards ``decode()`` turns the events ``chat message``
    into lines (one string argument each; anything else in such an event
    becomes a garbled line) and drops every other event (``notice``,
    ``error``, ...); ``encode()`` sends each line as one ``chat message``.
    Engine.IO pings are answered with pongs through ``take_replies()``.

    Reading costs one JSON parse per chunk read, not per event: the events'
    arrays are parsed together as one array (and one by one only when
    that fails).
    """

    def __init__(self, sock: Any, address: tuple[str, int], room: str = ROOM, timeout: float = 5.0, first: bytes = b"") -> None:
        self.ws = WebSocketWire(sock, address, timeout, first, path=SOCKETIO_PATH)
        self.sock = sock
        self._pending = b""
        self._connect(room)

    def _connect(self, room: str) -> None:
        """Open the Engine.IO session and connect to the main namespace, then ask to join *room*."""
        messages = self.ws.take_pending_messages()
        opened = False
        while True:
            for index, message in enumerate(messages):
                if not opened:
                    if message[:1] != b"0":
                        raise ConnectionError(f"not an Engine.IO 4 server: it opened with {message[:40]!r}")
                    opened = True
                    self._send(b"40")
                elif message[:2] == b"40":
                    self._pending = self._lines(messages[index + 1 :])
                    self._send(b'42["room",%s]' % json.dumps(room).encode())
                    return
                elif message[:2] == b"44":
                    raise ConnectionError(f"Socket.IO connection refused: {message[2:200].decode('utf-8', 'replace')}")
                elif message[:1] == b"1":
                    raise ConnectionError("the server closed the Engine.IO session during the handshake")
                elif message == b"2":
                    self._send(b"3")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection during the Socket.IO handshake")
            messages = self.ws.receive(data)

    def _send(self, message: bytes) -> None:
        """Send one Engine.IO packet now (blocking: the handshake only), after the WebSocket's own answers."""
        self.ws.protocol.send_text(message)
        self.sock.sendall(self.ws.take_replies())

    def take_pending(self) -> bytes:
        """Lines that arrived during the handshake."""
        pending, self._pending = self._pending, b""
        return pending

    def decode(self, data: bytes) -> bytes:
        """The chat lines in *data*, newline-terminated (Engine.IO pings answered through take_replies())."""
        return self._lines(self.ws.receive(data))

    def encode(self, payload: bytes) -> bytes:
        """Each line of *payload* as one ``chat message`` event (masked text messages)."""
        protocol = self.ws.protocol
        for line in payload.split(b"\n"):
            if line:
                protocol.send_text(b'42["chat message",%s]' % json.dumps(line.decode("utf-8", "replace")).encode())
        return b"".join(protocol.data_to_send())

    def take_replies(self) -> bytes:
        return self.ws.take_replies()

    def _lines(self, messages: list[bytes]) -> bytes:
        lines, pings = socketio_lines(messages)
        for _ in range(pings):
            self.ws.protocol.send_text(b"3")
        return lines


def socketio_lines(messages: list[bytes]) -> tuple[bytes, int]:
    """The chat lines in Engine.IO *messages* (newline-terminated), and how many pings (``2``) came among them.

    The events ``chat message`` become lines (one string argument each;
    anything else in such an event becomes a garbled line); every other
    event and packet is dropped. Each ping is owed a pong (``3``).
    """
    if not messages:  # only part of a frame came
        return b"", 0
    plain = []
    for message in messages:
        match = _PLAIN_CHAT.match(message)
        if match is None:
            break
        plain.append(match.group(1))
    else:
        return b"\n".join(plain) + b"\n", 0
    pings = 0
    events = [message[2:] for message in messages if message[:3] == b"42["]
    if len(events) != len(messages):  # pings, events that ask for an ack, other packets
        events = []
        for message in messages:
            if message[:3] == b"42[":
                events.append(message[2:])
            elif message == b"2":
                pings += 1
            elif message[:2] == _EVENT and message[2:3].isdigit():  # an event that asks for an ack: 42<id>[...]
                events.append(message[2:].lstrip(b"0123456789"))
        if not events:
            return b"", pings
    parsed = _parse_events(events)
    lines = [
        event[1]
        for event in parsed
        if type(event) is list and len(event) == 2 and event[0] == "chat message" and type(event[1]) is str
    ]
    if len(lines) != len(parsed):  # other events (dropped), or chat messages that are not one string (garbled)
        lines = []
        for event in parsed:
            if type(event) is list and event and event[0] == "chat message":
                lines.append(event[1] if len(event) == 2 and type(event[1]) is str else GARBLED)
            elif event is None:
                lines.append(GARBLED)
    return (("\n".join(lines) + "\n").encode() if lines else b""), pings


def _parse_events(events: list[bytes]) -> list[Any]:
    """Each event's JSON array (None for one that is not JSON): one parse for all when they are well formed."""
    try:
        parsed = json.loads(b"[" + b",".join(events) + b"]")
        if len(parsed) == len(events):
            return parsed  # type: ignore[no-any-return]
    except ValueError:
        pass
    out = []
    for event in events:
        try:
            out.append(json.loads(event))
        except ValueError:
            out.append(None)
    return out


class BenchClient:
    """A benchmark client that the read loops use like a socket: TLS and/or WebSocket or Socket.IO under the lines.

    The handshakes run at connect (blocking); afterwards ``recv()`` returns
    payload only (raising BlockingIOError while only part of a record or
    frame has come) and ``send()`` sends bytes already made by ``frame()``.
    Everything else is the socket's.

    Answers to the server (pongs) are sent by ``recv()`` as soon as it makes
    them -- unless ``hold_replies`` is set: a client that sends frames of its
    own (a sender, whose send may stop half-way through a frame) then takes
    them with ``take_replies()`` and sends them after its own bytes.
    """

    def __init__(
        self, sock: socket.socket, address: tuple[str, int], web: bool, tls: ssl.SSLContext | None, room: str | None = None
    ) -> None:
        self.sock = sock
        self.tls: TlsLayer | None = None
        self.wire: WebSocketWire | SocketIOWire | None = None
        self.hold_replies = False
        self._pending = b""
        self._replies: list[bytes] = []
        #: Answers already sealed (TLS) and partly sent: they go out first.
        self._unsent = b""
        transport: Any = sock
        if tls is not None:
            stream = TlsStream.client(sock, tls, address[0])
            stream.handshake(5.0)
            self.tls, transport = stream.layer, stream
            self._pending = stream.take_plaintext()
        if room is not None:
            self.wire = SocketIOWire(transport, address, room, first=self._pending)
        elif web:
            self.wire = WebSocketWire(transport, address, first=self._pending)
        if self.wire is not None:
            self._pending = self.wire.take_pending()
            if tls is not None:  # plaintext the stream read past the handshakes: it is the wire's
                rest = transport.take_plaintext()
                if rest:
                    self._pending += self.wire.decode(rest)
                    self._replies.append(self.wire.take_replies())

    @property
    def has_pending(self) -> bool:
        """Payload is waiting that recv() returns without reading the socket (a selector cannot tell)."""
        return bool(self._pending)

    def recv(self, size: int) -> bytes:
        if self._pending:
            pending, self._pending = self._pending, b""
            return pending
        data = receive(self.sock, size)
        if not data:
            return b""
        if self.tls is not None:
            data = self.tls.receive(data)
            if self.tls.peer_closed and not data:
                return b""
        wire = self.wire
        if wire is not None and data:
            data = wire.decode(data)
            replies = wire.take_replies()
            if replies:
                self._replies.append(replies)
            if (self._replies or self._unsent) and not self.hold_replies:
                self.flush_replies()
        if not data:
            raise BlockingIOError
        return data

    def take_replies(self) -> bytes:
        """The answers waiting, ready for the wire (sealed when TLS is used): send them next, whole."""
        data = b"".join(self._replies)
        self._replies = []
        if data and self.tls is not None:
            data = self.tls.send(data)
        unsent, self._unsent = self._unsent, b""
        return unsent + data

    def flush_replies(self) -> None:
        """Send the answers waiting, as much as the socket takes now; the rest goes first next time."""
        data = self.take_replies()
        if not data:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the connection is gone: the next recv() says so
            sent = len(data)
        self._unsent = data[sent:]

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, payload: bytes) -> bytes:
        if self.wire is not None:
            payload = self.wire.encode(payload)
        if self.tls is not None:
            payload = self.tls.send(payload)
        return payload

    def fileno(self) -> int:
        return self.sock.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def frame(client: object, payload: bytes) -> bytes:
    """What to send so that *client*'s server receives *payload* (lines)."""
    return client.frame(payload) if isinstance(client, BenchClient) else payload


def take_replies(client: object) -> bytes:
    """The answers *client* holds for the server (see BenchClient), b"" for a plain socket."""
    return client.take_replies() if isinstance(client, BenchClient) else b""
