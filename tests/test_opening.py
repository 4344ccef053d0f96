"""A client at the wrong port: an HTTP request or a TLS hello to the chat port is answered, never relayed."""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any, Iterator

import pytest

from socketlab.chat.opening import HTTP_REQUEST, TLS_HELLO, looks_like_plaintext, misdirected
from socketlab.chat.server import ChatServer
from support import TIMEOUT, Peer, recv_until_closed, serving

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/8\r\n\r\n", HTTP_REQUEST),
        (b"POST /login HTTP/1.0\r\nCookie: secret\r\n\r\n", HTTP_REQUEST),
        (b"HEAD /x HTTP/2\n", HTTP_REQUEST),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP_REQUEST),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", TLS_HELLO),
        (b"\x16\x03\x03", TLS_HELLO),
        (b"hello everyone\n", None),
        (b"GET a life\n", None),
        (b"GET / HTTP/1.1", None),  # no line end yet: nothing is assumed from a part of a line
        (b"/nick GET\n", None),
        (b"get / http/1.1\n", None),
        (b"\x16hello\n", None),
        (b"", None),
    ],
)
def test_misdirected_openings(first: bytes, reason: str | None) -> None:
    assert misdirected(first) == reason


@pytest.mark.parametrize(
    ("first", "plain"),
    [(b"hello\n", True), (b"GET / HTTP/1.1\r\n", True), (b"\x16\x03\x01\x00", False), (b"\x00\x01", False), (b"", False)],
)
def test_what_looks_like_plaintext_at_a_tls_port(first: bytes, plain: bool) -> None:
    assert looks_like_plaintext(first) is plain


@pytest.fixture
def chat() -> Iterator[Any]:
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> ChatServer:
            return stack.enter_context(serving(ChatServer(("127.0.0.1", 0), **options)))

        yield start


def lobby_member(server: ChatServer) -> Peer:
    member = Peer(server.server_address[1])
    assert member.line() == "* welcome user1, you are in lobby (type /help)"
    return member


def test_an_http_request_to_the_chat_port_is_answered_and_never_relayed(chat) -> None:
    """curl at the chat port: it gets a 400 in plain text after the welcome; the lobby hears the
    arrival and the departure, never the request line, its headers or cookies."""
    server = chat()
    member = lobby_member(server)
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: session=secret\r\nUser-Agent: curl/8.5\r\n\r\n")
        answer = recv_until_closed(sock)
    welcome, _, response = answer.partition(b"\n")
    assert welcome == b"* welcome user2, you are in lobby (type /help)"
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert body.startswith(b"This is a socketlab chat port: it speaks lines of text, not HTTP.\n")
    assert member.line() == "* user2 joined lobby"
    assert member.line() == "* user2 left lobby (HTTP request)"
    member.send(b"/who\n")
    assert member.line() == "* in lobby: user1"


def test_a_tls_client_at_the_plaintext_port_is_closed_and_never_relayed(chat) -> None:
    """A TLS handshake to the plaintext chat port fails on the client's side; the lobby hears no noise."""
    server = chat()
    member = lobby_member(server)
    context = ssl.create_default_context()
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(sock, server_hostname="127.0.0.1")
    assert member.line() == "* user2 joined lobby"
    assert member.line() == "* user2 left lobby (TLS handshake on a plaintext port)"
    member.send(b"ping\n/who\n")
    assert member.line() == "* in lobby: user1"
