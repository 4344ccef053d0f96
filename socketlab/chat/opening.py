"""What a connection's first bytes say about the client: a chat client, or one at the wrong port.

Sans-IO, checked once per connection. A browser or ``curl`` pointed at the
chat port sends an HTTP request: relayed as chat lines, its request line,
``Host``, ``User-Agent`` and cookies would reach the whole lobby. A TLS
client at a plaintext port sends a ClientHello, which is binary noise to a
room. Neither is relayed: the client is answered (when it can read the
answer) and closed. The reverse, plaintext at a TLS port, is answered with
a hint in plain text, which the TLS layer cannot give.
"""

from __future__ import annotations

import re

#: The departure reasons of the two kinds of misdirected client.
HTTP_REQUEST = "HTTP request"
TLS_HELLO = "TLS handshake on a plaintext port"

_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) \S+ HTTP/\d(?:\.\d)?\r?\Z")
#: A TLS record header of a handshake message: content type 22, protocol version 3.x.
_TLS_RECORD = re.compile(rb"\x16\x03[\x00-\x04]", re.DOTALL)


def _answer(status: str, text: str) -> bytes:
    body = text.encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


#: What an HTTP client at the chat port is told.
HTTP_ANSWER = _answer(
    "400 Bad Request",
    "This is a socketlab chat port: it speaks lines of text, not HTTP.\n"
    "Connect with `socketlab chat connect` or `nc`, or open the web page of a server started with --web PORT.\n",
)
#: What a plaintext HTTP client at an https web port is told.
HTTPS_ANSWER = _answer("400 Bad Request", "This port speaks HTTPS: use https:// (and wss://) for this address.\n")
#: What a plaintext line client at a TLS chat port is told.
TLS_LINE_HINT = b"! this port speaks TLS: connect with TLS (socketlab chat connect --tls)\n"


def misdirected(first: bytes) -> str | None:
    """Why a client whose first bytes are *first* is not a chat client (a reason above), or None.

    Only the first read is looked at: an HTTP client sends its request line whole, a TLS client
    its record header.
    """
    if _TLS_RECORD.match(first):
        return TLS_HELLO
    line, newline, _ = first.partition(b"\n")
    if newline and line[:1].isupper() and _REQUEST_LINE.match(line[:8192]):
        return HTTP_REQUEST
    return None


def looks_like_plaintext(first: bytes) -> bool:
    """Whether bytes that failed a TLS handshake look like text (a line or an HTTP request), not TLS."""
    return bool(first) and 0x20 <= first[0] < 0x7F
