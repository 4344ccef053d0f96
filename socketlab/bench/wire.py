"""How a benchmark client's bytes travel: raw TCP lines, or lines in WebSocket text messages.

The chat benchmark reads and writes *payload*: lines. Over TCP that is what
the socket carries; over WebSocket, :class:`WebSocketWire` opens the
connection with websockets' Sans-I/O :class:`ClientProtocol` and turns frames
into payload and back (answering the server's pings), so the same tally
checks both transports.
"""

from __future__ import annotations

import socket

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

#: Where a chat server started with --web takes WebSocket clients.
WS_PATH = "/ws"


class WebSocketWire:
    """One benchmark client's WebSocket, sans-IO after the handshake."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], timeout: float = 5.0) -> None:
        host, port = address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.protocol = ClientProtocol(parse_uri(f"ws://{netloc}{WS_PATH}"), max_size=None)
        self.sock = sock
        self._handshake(timeout)

    def _handshake(self, timeout: float) -> None:
        """Send the upgrade request and read the response (blocking, before the run starts)."""
        protocol = self.protocol
        protocol.send_request(protocol.connect())
        self.sock.settimeout(timeout)
        self.sock.sendall(b"".join(protocol.data_to_send()))
        while True:
            data = self.sock.recv(65536)
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
                self.sock.send(b"".join(replies))
            except OSError:
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


class WebSocketClient:
    """A WebSocket client that the benchmark's read loops use like a socket.

    ``recv()`` returns payload only (raising BlockingIOError while only part of
    a frame has come); ``send()`` sends bytes already framed by ``frame()``.
    Everything else is the socket's.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.wire = WebSocketWire(sock, address)

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        if not data:
            return b""
        payload = self.wire.decode(data)
        if not payload:
            raise BlockingIOError
        return payload

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, payload: bytes) -> bytes:
        return self.wire.encode(payload)

    def fileno(self) -> int:
        return self.sock.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def frame(client: object, payload: bytes) -> bytes:
    """What to send so that *client*'s server receives *payload* (lines)."""
    return client.frame(payload) if isinstance(client, WebSocketClient) else payload
