"""HTTP/1.1 requests, sans-IO: heads and ``Content-Length`` bodies, one after another on a connection.

The WebSocket handshake is parsed by ``websockets``; Engine.IO's long-polling
needs what a handshake never has -- a request body, and several requests on
one kept-alive connection -- so :class:`RequestReader` reads those, strictly
and within limits: the head at most ``max_head`` bytes (431), a body at most
``max_body`` (413), no transfer codings (501), nothing malformed (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

#: A header name: an RFC 9110 token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: A request target in origin form, printable ASCII only.
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
#: A control character other than tab, which no header value may hold.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f]")
_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request that cannot be read: the status to answer with, and why."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    #: (lower-case name, value) in order.
    headers: list[tuple[str, str]]
    body: bytes
    #: The head as sent (request line, headers, blank line).
    head: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the first of each name)."""
        query: dict[str, str] = {}
        for name, value in parse_qsl(self.target.partition("?")[2], keep_blank_values=True):
            query.setdefault(name, value)
        return query

    def header(self, name: str) -> str | None:
        """The value of header *name* (the first, if repeated), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for key, _ in self.headers if key == name)

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after the answer."""
        tokens = {token.strip().lower() for token in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class RequestReader:
    """Bytes in, complete requests out (``feed``); HttpError for a request that cannot be read."""

    def __init__(self, max_head: int = 8192, max_body: int = 1_000_000) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self._buffer = bytearray()
        self._head: HttpRequest | None = None
        self._length = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def partial(self) -> bool:
        """True while a request has begun but is not complete."""
        return bool(self._buffer) or self._head is not None

    def feed(self, data: bytes) -> list[HttpRequest]:
        self._buffer += data
        requests: list[HttpRequest] = []
        while True:
            request = self._next()
            if request is None:
                return requests
            requests.append(request)

    def take_buffered(self) -> bytes:
        """What is buffered beyond the requests returned (after an upgrade: the new protocol's bytes)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _next(self) -> HttpRequest | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_head:
                    raise HttpError(431, "request head too large")
                return None
            if end + 4 > self.max_head:
                raise HttpError(431, "request head too large")
            head = bytes(self._buffer[: end + 4])
            del self._buffer[: end + 4]
            self._head = self._parse_head(head)
        if len(self._buffer) < self._length:
            return None
        request, self._head = self._head, None
        request.body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._length = 0
        return request

    def _parse_head(self, head: bytes) -> HttpRequest:
        request_line, *lines = head[:-4].split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha():
            raise HttpError(400, "bad request line")
        if not _TARGET.match(parts[1]):
            raise HttpError(400, "bad request target")
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise HttpError(400, "bad header line")
            if _CONTROL.search(value):
                raise HttpError(400, "control character in a header")
            try:
                text = value.strip(b" \t").decode("ascii")
            except UnicodeDecodeError:
                text = value.strip(b" \t").decode("latin-1")
            headers.append((name.decode("ascii").lower(), text))
        request = HttpRequest(parts[0].decode("ascii"), parts[1].decode("ascii"), parts[2].decode("ascii"), headers, b"", head)
        if request.header("transfer-encoding") is not None:
            raise HttpError(501, "transfer codings are not supported")
        lengths = {value for key, value in headers if key == "content-length"}
        if len(lengths) > 1:
            raise HttpError(400, "conflicting Content-Length")
        if lengths:
            length = lengths.pop()
            if not (length.isascii() and length.isdigit()) or len(length) > 12:  # not '²', which int() refuses
                raise HttpError(400, "bad Content-Length")
            if int(length) > self.max_body:
                raise HttpError(413, "request body too large")
            self._length = int(length)
        return request


def response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None, *, close: bool = False) -> bytes:
    """An HTTP/1.1 response with *body* (its Content-Length added)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
