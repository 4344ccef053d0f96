"""The standalone Socket.IO service: python-socketio clients over each transport, limits, shutdown, the echo example.

Servers listen on 127.0.0.1 port 0; clients are python-socketio's (long-polling with the upgrade,
WebSocket only, long-polling only); the HTTP cases are spoken by hand, so each answer is checked.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import socketio

from socketlab.engineio import EngineServer, EngineSession, EngineSettings, Message
from socketlab.socketio import Client, SocketIOServer
from socketlab.socketio_server import SocketIOService
from certs import make_certs
from support import TIMEOUT, LineReader, recv_until_closed, serving, wait_until

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "socketio_echo.py"

#: The three ways a client reaches the service.
TRANSPORTS = {
    "upgrade": ["polling", "websocket"],
    "websocket": ["websocket"],
    "polling": ["polling"],
}


def echo_server(settings: EngineSettings | None = None) -> SocketIOServer:
    """The echo of the socket.io-protocol test suite: ``message`` comes back as ``message-back``, acks, ``/custom``."""
    sio = SocketIOServer(settings)
    main, custom = sio.of("/"), sio.of("/custom")

    @main.on("connect")
    @custom.on("connect")
    def connect(client: Client, auth: Any) -> None:
        client.emit("auth", auth)

    @main.on("message")
    def message(client: Client, *args: Any) -> None:
        client.emit("message-back", *args)

    @main.on("message-with-ack")
    def message_with_ack(client: Client, *args: Any) -> Any:
        return args

    @main.on("broken")
    def broken(client: Client, *args: Any) -> None:
        raise RuntimeError("a bug in a handler")

    return sio


@pytest.fixture
def start() -> Iterator[Callable[..., SocketIOService]]:
    """Start SocketIOServices on port 0 (an echo server unless given one); each is shut down and joined."""
    with contextlib.ExitStack() as stack:

        def start_service(sio: SocketIOServer | None = None, **options: Any) -> SocketIOService:
            service = SocketIOService(("127.0.0.1", 0), sio or echo_server(), **options)
            return stack.enter_context(serving(service))

        yield start_service


@pytest.fixture
def clients() -> Iterator[Callable[..., socketio.SimpleClient]]:
    """Connect python-socketio clients; every one is disconnected at the end."""
    opened: list[socketio.SimpleClient] = []

    def connect(service: SocketIOService, how: str = "upgrade", scheme: str = "http", **options: Any) -> socketio.SimpleClient:
        client = socketio.SimpleClient(reconnection=False, **options.pop("client_options", {}))
        opened.append(client)
        url = f"{scheme}://127.0.0.1:{service.server_address[1]}"
        client.connect(url, transports=TRANSPORTS[how], wait_timeout=TIMEOUT, **options)
        return client

    yield connect
    for client in opened:
        with contextlib.suppress(Exception):
            client.disconnect()


def get(port: int, target: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP request: the status and body of its answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, target, body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


# -- the service ------------------------------------------------------------------------


def test_port_0_is_a_free_port_and_only_the_engine_path_is_served(start: Any) -> None:
    """Port 0 resolves to a real port; /socket.io/ opens a session; any other path is 404."""
    service = start()
    port = service.server_address[1]
    assert port != 0 and service.address_text == f"127.0.0.1:{port}"
    status, body = get(port, "/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b'0{"sid":')
    assert get(port, "/")[0] == 404
    assert get(port, "/engine.io/?EIO=4&transport=polling")[0] == 404
    assert get(port, "/socket.io/?EIO=3&transport=polling")[0] == 400


def test_a_connection_handed_over_while_the_reader_drains_its_waker_is_served(start: Any) -> None:
    """The race between a hand-over and the reader's drain of its waker, made certain: the second
    connection is handed over just before the drain reads the waker, which consumes its wake-up.
    It is answered at once, not after some later event on another connection."""
    service = start()
    reader = service.reader
    real_add, real_drain = reader.add, reader._waker.drain
    draining, second_added = threading.Event(), threading.Event()
    adds: list[int] = []

    def add(conns: list[Any]) -> None:
        real_add(conns)
        adds.append(len(conns))
        if len(adds) == 2:
            second_added.set()

    def drain() -> None:
        if not draining.is_set():
            draining.set()
            second_added.wait(TIMEOUT)
        real_drain()

    reader.add, reader._waker.drain = add, drain  # type: ignore[method-assign]
    port = service.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):  # silent: no event of its own
        assert draining.wait(TIMEOUT)
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as asking:
            asking.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
            assert asking.recv(12) == b"HTTP/1.1 200"


def test_an_address_may_be_a_port_alone() -> None:
    """An int address is a port on 127.0.0.1."""
    with SocketIOService(0, echo_server()) as service:
        assert service.server_address[0] == "127.0.0.1" and service.server_address[1] != 0


@pytest.mark.parametrize("how", TRANSPORTS)
def test_events_are_echoed_and_acked(start: Any, clients: Any, how: str) -> None:
    """Over each transport: the connect handler's event, an echoed event (text and binary), an ack."""
    service = start()
    client = clients(service, how, auth={"token": "123"})
    assert client.receive(timeout=TIMEOUT) == ["auth", {"token": "123"}]
    client.emit("message", [1, "2", {"3": [True]}])
    assert client.receive(timeout=TIMEOUT) == ["message-back", [1, "2", {"3": [True]}]]
    client.emit("message", b"\x01\x02\x03")
    assert client.receive(timeout=TIMEOUT) == ["message-back", b"\x01\x02\x03"]
    assert client.call("message-with-ack", {"n": 7}, timeout=TIMEOUT) == {"n": 7}
    assert client.transport == TRANSPORTS[how][-1]


@pytest.mark.parametrize("how", TRANSPORTS)
def test_a_custom_namespace(start: Any, clients: Any, how: str) -> None:
    """A client of /custom gets that namespace's connect event, with its auth."""
    service = start()
    client = clients(service, how, namespace="/custom", auth={"token": "abc"})
    assert client.receive(timeout=TIMEOUT) == ["auth", {"token": "abc"}]


def test_an_unknown_namespace_is_refused(start: Any, clients: Any) -> None:
    """Connecting to a namespace nobody serves fails (a CONNECT_ERROR)."""
    service = start()
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients(service, "websocket", namespace="/nobody")


def test_a_handler_error_is_logged_and_the_client_stays(start: Any, clients: Any, caplog: Any) -> None:
    """An exception in a handler is logged with its traceback; the client is still served."""
    service = start()
    client = clients(service, "websocket")
    client.receive(timeout=TIMEOUT)
    with caplog.at_level(logging.ERROR, logger="socketlab.socketio"):
        client.emit("broken", 1)
        assert client.call("message-with-ack", "still here", timeout=TIMEOUT) == "still here"
    assert any(record.exc_info and "a bug in a handler" in str(record.exc_info[1]) for record in caplog.records)


def test_another_thread_emits_under_the_lock(start: Any, clients: Any) -> None:
    """Code outside the handlers emits with the service lock held, and the clients get it."""
    sio = echo_server()
    service = start(sio)
    client = clients(service, "polling")
    client.receive(timeout=TIMEOUT)

    def announce() -> None:
        with service.lock:
            sio.of("/").emit("news", "from a thread")

    thread = threading.Thread(target=announce)
    thread.start()
    thread.join(TIMEOUT)
    assert client.receive(timeout=TIMEOUT) == ["news", "from a thread"]


def test_a_bare_engine_io_application_at_another_path() -> None:
    """mount() serves an EngineServer at its own path: its messages, not Socket.IO packets."""

    class Echo:
        def opened(self, session: EngineSession) -> None: ...

        def received(self, session: EngineSession, message: Message) -> None:
            session.send(message)

        def closed(self, session: EngineSession, reason: str) -> None: ...

    service = SocketIOService(("127.0.0.1", 0), echo_server())
    service.mount("/engine.io/", EngineServer(Echo()))
    with serving(service):
        port = service.server_address[1]
        status, body = get(port, "/engine.io/?EIO=4&transport=polling")
        sid = body.decode()[9:].partition('"')[0]
        assert status == 200
        assert get(port, f"/engine.io/?EIO=4&transport=polling&sid={sid}", "POST", b"4hello\x1e4again") == (200, b"ok")
        assert get(port, f"/engine.io/?EIO=4&transport=polling&sid={sid}") == (200, b"4hello\x1e4again")
        with pytest.raises(RuntimeError):
            service.mount("/late/", EngineServer(Echo()))


#: Tries of python-socketio's client over TLS (see test_tls).
TLS_CLIENT_TRIES = 3


def test_tls(start: Any, clients: Any, tmp_path: Path) -> None:
    """With tls=, the same service speaks HTTPS and WSS.

    python-socketio's threaded WebSocket client reads and writes one SSL socket from two threads at
    once, and under load its connection aborts now and then (about one in a hundred here): traced, the
    service closed nothing and logged nothing, and saw only the client's end of the connection. So a
    client that aborts is tried again, a few times; a service that does not speak TLS fails every try.
    """
    certs = make_certs(tmp_path)
    service = start(tls=certs.server_context())
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would win over the session's own CA file
    session.verify = certs.ca
    for how in ("upgrade", "websocket"):
        failures = []
        for _ in range(TLS_CLIENT_TRIES):
            try:
                client = clients(service, how, scheme="https", client_options={"http_session": session})
                assert client.receive(timeout=TIMEOUT) == ["auth", {}]
                assert client.call("message-with-ack", how, timeout=TIMEOUT) == how
                break
            except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError) as error:
                failures.append(repr(error))
        else:
            pytest.fail(f"{how} over TLS failed {TLS_CLIENT_TRIES} times: {failures}")


# -- limits ---------------------------------------------------------------------------------


def test_a_connection_beyond_max_clients_is_answered_503(start: Any) -> None:
    """Connections are counted: the one beyond max_clients gets 503 and is closed."""
    service = start(max_clients=1)
    with socket.create_connection(service.server_address, timeout=TIMEOUT):
        wait_until(lambda: service.connection_count == 1, what="the first connection counted")
        with socket.create_connection(service.server_address, timeout=TIMEOUT) as second:
            assert recv_until_closed(second).startswith(b"HTTP/1.1 503 ")
    wait_until(lambda: service.connection_count == 0, what="the connections forgotten")


def test_a_silent_connection_is_closed_after_head_timeout() -> None:
    """A connection that sends no request is closed once head_timeout has passed."""

    class Quick(SocketIOService):
        head_timeout = 0.2

    service = Quick(("127.0.0.1", 0), echo_server())
    with serving(service), socket.create_connection(service.server_address, timeout=TIMEOUT) as sock:
        started = time.monotonic()
        assert recv_until_closed(sock) == b""
        assert 0.15 < time.monotonic() - started < TIMEOUT


def test_a_body_over_max_payload_is_refused(start: Any) -> None:
    """A POST bigger than max_payload is answered 413."""
    service = start(echo_server(EngineSettings(max_payload=1000)))
    port = service.server_address[1]
    sid = get(port, "/socket.io/?EIO=4&transport=polling")[1].decode()[9:].partition('"')[0]
    status, _ = get(port, f"/socket.io/?EIO=4&transport=polling&sid={sid}", "POST", b"4" + b"x" * 2000)
    assert status == 413


# -- shutdown --------------------------------------------------------------------------------


def test_shutdown_within_a_second_disconnects_every_client(clients: Any) -> None:
    """shutdown() from another thread: every client (each transport) is disconnected, threads joined, in under 1 s."""
    gone: list[str] = []
    sio = echo_server()
    sio.of("/").on("disconnect")(lambda client, reason: gone.append(reason))
    service = SocketIOService(("127.0.0.1", 0), sio)
    thread = threading.Thread(target=service.serve_forever)
    thread.start()
    try:
        members = [clients(service, how) for how in TRANSPORTS]
        for member in members:
            member.receive(timeout=TIMEOUT)
        started = time.monotonic()
        service.shutdown()
        thread.join(TIMEOUT)
        took = time.monotonic() - started
    finally:
        service.shutdown()
        service.server_close()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and took < 1.0
    assert gone == ["server shutting down"] * 3
    for member in members:
        wait_until(lambda member=member: not member.connected, what="the client to see the end")
    assert service.connection_count == 0
    alive = {thread.name for thread in threading.enumerate()}
    assert not alive & {"socketio-reader", "chat-backlog-writer"}
    service.shutdown()  # idempotent


def test_a_with_block_shuts_down_a_service_that_never_served() -> None:
    """Leaving a with block closes a service whether or not serve_forever() ran."""
    with SocketIOService(("127.0.0.1", 0), echo_server()) as service:
        address = service.server_address
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=TIMEOUT)


# -- the example -----------------------------------------------------------------------------


@contextlib.contextmanager
def run_example() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """docs/examples/socketio_echo.py on a free port (argument 0): the process and the port it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out = LineReader(proc.stdout)
        port = int(out.wait_for(r"http://127\.0\.0\.1:(\d+)/socket\.io/").group(1))
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_the_echo_example() -> None:
    """The example answers as the protocol suites expect, at both paths, and Ctrl-C stops it cleanly."""
    with run_example() as (proc, port):
        client = socketio.SimpleClient(reconnection=False)
        try:
            client.connect(f"http://127.0.0.1:{port}", auth={"token": "123"}, wait_timeout=TIMEOUT)
            assert client.receive(timeout=TIMEOUT) == ["auth", {"token": "123"}]
            client.emit("message", "hi")
            assert client.receive(timeout=TIMEOUT) == ["message-back", "hi"]
            assert client.call("message-with-ack", [1, "2"], timeout=TIMEOUT) == [1, "2"]
        finally:
            client.disconnect()
        status, body = get(port, "/engine.io/?EIO=4&transport=polling")
        assert status == 200 and b'"pingInterval":300,"pingTimeout":200,"maxPayload":1000000' in body
        sid = body.decode()[9:].partition('"')[0]
        assert get(port, f"/engine.io/?EIO=4&transport=polling&sid={sid}", "POST", b"4hello") == (200, b"ok")
        assert get(port, f"/engine.io/?EIO=4&transport=polling&sid={sid}") == (200, b"4hello")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        assert time.monotonic() - started < 2.0
        assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
