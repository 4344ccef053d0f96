"""Departed members are freed by reference counting alone: nothing of theirs waits for the cyclic collector.

The server keeps its members out of the collector's walks (``socketlab.collector``); what a departure
left in reference cycles would stay until everything is unfrozen and walked again, a pause that grows
with the number of members. So each way a member can go -- over each transport -- is tried here with the
collector off: once the server has let the members go, none of the server's objects for them may be
left. A cycle anywhere among them keeps them all, and the test names the kinds left.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import http.client
import secrets
import socket
import ssl
import struct
from typing import Any, Callable, Iterator

import pytest
import socketio

from websockets.server import ServerProtocol
from websockets.sync.client import connect

from socketlab.bench.common import close_with_reset
from socketlab.chat.cluster.view import LocalMember
from socketlab.chat.connection import Connection
from socketlab.chat.outbox import Outbox
from socketlab.chat.protocol import Member
from socketlab.chat.server import ChatServer
from socketlab.chat.socketio_chat import SocketIOMember
from socketlab.chat.web import WebSession
from socketlab.engineio import EngineSession
from socketlab.engineio_http import EngineConnection
from socketlab.socketio import Client
from certs import Certs, make_certs
from support import TIMEOUT, Peer, wait_until

pytestmark = pytest.mark.timeout(60)

#: What the server builds for a client; none of it may outlive the client's departure.
SERVER_KINDS = (
    Connection,
    Outbox,
    Member,
    LocalMember,
    WebSession,
    ServerProtocol,
    EngineConnection,
    EngineSession,
    Client,
    SocketIOMember,
)
#: Clients per case: enough that a cycle left by some departures only is seen.
CLIENTS = 6


class NoFreezing:
    """The server's freezer, idle: a frozen object is out of gc.get_objects(), which would hide what this
    test looks for."""

    def arrived(self, count: int) -> None:
        pass

    def built(self) -> None:
        pass

    def departed(self, count: int = 1) -> None:
        pass


def live() -> collections.Counter[str]:
    """The server's objects for clients that the collector could still walk, by kind."""
    return collections.Counter(type(each).__name__ for each in gc.get_objects() if issubclass(type(each), SERVER_KINDS))


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Nothing collected during the test: what is freed is freed by reference counting."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def server(web_chat: Any, collector_off: None, request: pytest.FixtureRequest) -> ChatServer:
    options = getattr(request, "param", {})
    chat: ChatServer = web_chat(**options)
    chat.freezer = NoFreezing()  # type: ignore[assignment]
    return chat


def assert_all_freed(server: ChatServer, before: collections.Counter[str], staying: int = 0) -> None:
    """Once the server counts only *staying* clients, the others' objects go, without a collection."""
    wait_until(
        lambda: server.connection_count == staying and len(server.service.local_transports()) == staying,
        what="every client gone",
    )

    def left() -> collections.Counter[str]:
        return live() - before

    with contextlib.suppress(AssertionError):
        wait_until(lambda: not left(), timeout=2.0, what="freed")
    assert not left(), f"left for the cyclic collector: {dict(left())}"


def each_departure(server: ChatServer, join: Callable[[], Any], leave: Callable[[Any], None]) -> None:
    before = live()
    there = len(server.service.local_transports())
    clients = [join() for _ in range(CLIENTS)]
    wait_until(lambda: len(server.service.local_transports()) == there + CLIENTS, what="all joined")
    for client in clients:
        leave(client)
    del clients
    assert_all_freed(server, before, staying=there)


# -- TCP ---------------------------------------------------------------------------------------


def tcp_member(server: ChatServer) -> Peer:
    peer = Peer(server.server_address[1])
    assert peer.line().startswith("* welcome ")
    return peer


def test_tcp_members_that_close(server) -> None:
    each_departure(server, lambda: tcp_member(server), Peer.close)


def test_tcp_members_that_reset(server) -> None:
    def leave(peer: Peer) -> None:
        peer.file.close()
        close_with_reset(peer.sock)

    each_departure(server, lambda: tcp_member(server), leave)


def test_tcp_members_that_quit(server) -> None:
    def leave(peer: Peer) -> None:
        peer.send(b"/quit\n")
        assert peer.rest().endswith(b"* bye\n")
        peer.close()

    each_departure(server, lambda: tcp_member(server), leave)


@pytest.mark.parametrize("server", [{"idle_timeout": 0.3}], indirect=True)
def test_tcp_members_dropped_by_the_server(server) -> None:
    def leave(peer: Peer) -> None:
        assert peer.rest().endswith(b"! idle for 0.3 s, disconnecting\n")
        peer.close()

    each_departure(server, lambda: tcp_member(server), leave)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_members_that_close_and_that_reset(web_chat, collector_off, certs) -> None:
    server = web_chat(tls=certs.server_context())
    server.freezer = NoFreezing()
    context = certs.client_context()

    def join() -> ssl.SSLSocket:
        sock = context.wrap_socket(socket.create_connection(server.server_address, timeout=TIMEOUT), server_hostname="127.0.0.1")
        assert sock.recv(100).startswith(b"* welcome ")
        return sock

    kept = [join() for _ in range(CLIENTS)]
    each_departure(server, join, lambda sock: sock.close())
    each_departure(server, join, close_with_reset)
    for sock in kept:  # never read their last lines: cut off in the middle of TLS
        close_with_reset(sock)
    assert_all_freed(server, collections.Counter())


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("no redis-server on this machine")
    with RedisServer(tmp_path_factory.mktemp("redis")) as redis:
        yield redis.url


def test_cluster_members_that_close_and_that_reset(web_chat, collector_off, redis_url, stack) -> None:
    """A member of a cluster (--redis): its handle is the cluster's, its room's state in Redis."""
    server = web_chat(redis=redis_url, cluster=f"freed-{secrets.token_hex(4)}")
    server.freezer = NoFreezing()

    def leave_with_a_reset(peer: Peer) -> None:
        peer.file.close()
        close_with_reset(peer.sock)

    each_departure(server, lambda: tcp_member(server), Peer.close)
    each_departure(server, lambda: tcp_member(server), leave_with_a_reset)
    each_departure(server, lambda: ws_member(server, stack), lambda browser: browser.close())


# -- WebSocket (/ws) ---------------------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as clients:
        yield clients


def ws_member(server: ChatServer, stack: contextlib.ExitStack) -> Any:
    browser = stack.enter_context(connect(f"ws://127.0.0.1:{server.web_address[1]}/ws", open_timeout=TIMEOUT))
    assert str(browser.recv(timeout=TIMEOUT)).startswith("* welcome ")
    return browser


def test_websocket_members_that_close_cleanly(server, stack) -> None:
    each_departure(server, lambda: ws_member(server, stack), lambda browser: browser.close())


def test_websocket_members_that_vanish(server, stack) -> None:
    """No closing handshake: the connection just ends, as when a laptop's lid closes."""

    def leave(browser: Any) -> None:
        close_with_reset(browser.socket)

    each_departure(server, lambda: ws_member(server, stack), leave)


def test_web_requests_that_are_refused(server) -> None:
    before = live()
    for _ in range(CLIENTS):
        with socket.create_connection(server.web_address, timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")  # no key: 400
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    assert_all_freed(server, before)


# -- Socket.IO ---------------------------------------------------------------------------------


def sio_member(server: ChatServer, transports: list[str]) -> socketio.SimpleClient:
    client = socketio.SimpleClient(reconnection=False)
    client.connect(f"http://127.0.0.1:{server.web_address[1]}", transports=transports, wait_timeout=TIMEOUT)
    assert client.receive(timeout=TIMEOUT)[0] == "notice"
    return client


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"], ["polling"]], ids="+".join)
def test_socketio_members_that_disconnect(server, transports) -> None:
    each_departure(server, lambda: sio_member(server, transports), socketio.SimpleClient.disconnect)


def test_socketio_members_whose_connection_vanishes(server) -> None:
    """Upgraded to WebSocket, then the TCP connection resets: no DISCONNECT, no closing handshake."""

    def leave(client: socketio.SimpleClient) -> None:
        sock = client.client.eio.ws.sock  # the websocket-client library's socket under the upgrade
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # wakes the library's reader (blocked in recv(), it holds the socket)
        sock.close()
        with contextlib.suppress(Exception):
            client.disconnect()

    each_departure(server, lambda: sio_member(server, ["websocket"]), leave)


@pytest.mark.parametrize("server", [{"socketio_ping_interval": 0.2, "socketio_ping_timeout": 0.2}], indirect=True)
def test_socketio_polling_sessions_that_stop_polling(server) -> None:
    """A polling client that just goes away: its session ends at the ping timeout, with no connection to close."""
    before = live()
    for _ in range(CLIENTS):
        polling = http.client.HTTPConnection("127.0.0.1", server.web_address[1], timeout=TIMEOUT)
        polling.request("GET", "/socket.io/?EIO=4&transport=polling")
        answer = polling.getresponse()
        assert answer.status == 200 and answer.read().startswith(b"0{")
        polling.close()
    assert_all_freed(server, before)


def test_socketio_upgrades_that_are_refused(server) -> None:
    before = live()
    for _ in range(CLIENTS):
        with socket.create_connection(server.web_address, timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 426 ")
    assert_all_freed(server, before)
