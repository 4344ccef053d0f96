"""How a benchmark client's bytes travel: raw TCP lines, lines in WebSocket text messages, TLS under either.

The chat benchmark reads and writes *payload*: lines. Over TCP that is what
the socket carries; over WebSocket, :class:`WebSocketWire` opens the
connection with websockets' Sans-I/O :class:`ClientProtocol` and turns frames
into payload and back (answering the server's pings); with TLS a
:class:`~socketlab.tls.TlsLayer` sits underneath. So the same tally checks
every transport.
"""

from __future__ import annotations

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


class WebSocketWire:
    """One benchmark client's WebSocket, sans-IO after the handshake."""

    def __init__(self, sock: Any, address: tuple[str, int], timeout: float = 5.0, first: bytes = b"") -> None:
        host, port = address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.protocol = ClientProtocol(parse_uri(f"ws://{netloc}{WS_PATH}"), max_size=None)
        self.sock = sock
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
                self._pending = self._payload(events[1:])
                return

    def take_pending(self) -> bytes:
        """Payload that arrived together with the handshake response."""
        pending, self._pending = self._pending, b""
        return pending

    def decode(self, data: bytes) -> bytes:
        """The payload in *data*: the text messages' bytes, in order (pings answered)."""
        protocol = self.protocol
        protocol.receive_data(data)
        payload = self._payload(protocol.events_received())
        replies = protocol.data_to_send()
        if replies:
            try:
                self.sock.sendall(b"".join(replies))
            except OSError:  # a pong that does not fit now is not worth waiting for here
                pass
        return payload

    def encode(self, payload: bytes) -> bytes:
        """*payload* (whole lines) as one masked text message."""
        self.protocol.send_text(payload)
        return b"".join(self.protocol.data_to_send())

    @staticmethod
    def _payload(events: list) -> bytes:  # type: ignore[type-arg]
        parts = [event.data for event in events if event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT]
        return b"".join(parts)


class BenchClient:
    """A benchmark client that the read loops use like a socket: TLS and/or WebSocket under the lines.

    The handshakes run at connect (blocking); afterwards ``recv()`` returns
    payload only (raising BlockingIOError while only part of a record or
    frame has come) and ``send()`` sends bytes already made by ``frame()``.
    Everything else is the socket's.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int], web: bool, tls: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.tls: TlsLayer | None = None
        self.wire: WebSocketWire | None = None
        self._pending = b""
        transport: Any = sock
        if tls is not None:
            stream = TlsStream.client(sock, tls, address[0])
            stream.handshake(5.0)
            self.tls, transport = stream.layer, stream
            self._pending = stream.take_plaintext()
        if web:
            self.wire = WebSocketWire(transport, address, first=self._pending)
            self._pending = self.wire.take_pending()

    def recv(self, size: int) -> bytes:
        if self._pending:
            pending, self._pending = self._pending, b""
            return pending
        data = self.sock.recv(size)
        if not data:
            return b""
        if self.tls is not None:
            data = self.tls.receive(data)
            if self.tls.peer_closed and not data:
                return b""
        if self.wire is not None and data:
            data = self.wire.decode(data)
        if not data:
            raise BlockingIOError
        return data

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
