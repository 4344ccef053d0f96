"""TLS: setup errors, certificate checks, half-close, the chat and the web page over TLS, and TlsLayer sans-IO."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from importlib import resources
from typing import Any, Iterator

import pytest

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from certs import Certs, make_certs
from socketlab.bench.common import close_with_reset
from socketlab.chat.client import ChatClient
from socketlab.chat.server import ChatServer
from socketlab.tcp import WelcomeServer, connect
from socketlab.tls import TlsConnectionError, TlsError, TlsLayer, TlsStream
from support import TIMEOUT, CliServer, Peer, read_until_closed, run_cli, serving, wait_until

pytestmark = pytest.mark.timeout(30)

#: The ready line of a server command serving TLS.
TLS_READY = r"^Server is listening on 127\.0\.0\.1:(\d+) \(TLS\)$"
NO_VERIFY_WARNING = (
    "Warning: --tls-no-verify: the server's certificate is not checked; anyone in between can read and change the traffic"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def chat() -> Iterator[Any]:
    """Start ChatServers on port 0 (TLS options as given); each is shut down and joined."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> ChatServer:
            return stack.enter_context(serving(ChatServer(("127.0.0.1", 0), **options)))

        yield start


def welcome(name: str) -> str:
    return f"* welcome {name}, you are in lobby (type /help)"


def garbage(size: int) -> bytes:
    """Random bytes that cannot begin a TLS record: the first two are printable ASCII
    (no record type, no SSLv2 header, no version 3.x), so a server knows at once."""
    data = bytearray(os.urandom(size))
    data[0] = 0x20 + data[0] % 0x5F
    data[1] = 0x20 + data[1] % 0x5F
    return bytes(data)


class TlsChatter:
    """A chat member over TLS, as ``chat connect --tls`` is: ChatClient with a client context."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.client = ChatClient.connect("127.0.0.1", port, TIMEOUT, tls=context)
        self.client.sock.settimeout(TIMEOUT)  # a missing line fails the test instead of hanging it
        self._lines = self.client.lines()

    def send(self, text: str) -> None:
        self.client.send_line(text)

    def line(self) -> str:
        line = next(self._lines, None)  # lines() ends on EOF, a reset or the TIMEOUT
        assert line is not None, f"no line within {TIMEOUT} s: the connection ended or timed out"
        return line

    def until(self, wanted: str) -> list[str]:
        seen = [self.line()]
        while seen[-1] != wanted:
            seen.append(self.line())
        return seen

    def rest(self) -> list[str]:
        """Every line until the server closes."""
        return list(self._lines)

    def close(self) -> None:
        self.client.close()


def is_open(sock: socket.socket) -> bool:
    """True while the peer has neither closed nor reset *sock* (nothing is expected on it)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout, recv() would first wait for the socket to be readable
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], message: str) -> None:
    """Exit 1, exactly one stderr line equal to *message*, nothing on stdout, no traceback."""
    assert result.stderr.decode().splitlines() == [message]
    assert result.returncode == 1
    assert result.stdout == b""


def run_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
    """Run socketlab commands at once (each through run_cli); their results in order."""
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


# -- 1. setup errors: one line, exit 1, nothing listening ---------------------------------------------

SERVER_COMMANDS = (("tcp-server",), ("chat", "serve"))


def setup_error_cases(certs: Certs, missing: str) -> dict[str, tuple[list[str], str]]:
    """Each broken setup: its --tls options and the error line it must print."""
    return {
        "missing cert": (["--tls-cert", missing], f"Error: certificate file {missing!r} does not exist"),
        "missing key": (["--tls-cert", certs.cert, "--tls-key", missing], f"Error: key file {missing!r} does not exist"),
        "key of another certificate": (
            ["--tls-cert", certs.cert, "--tls-key", certs.other_key],
            f"Error: the key does not match the certificate in {certs.cert!r}",
        ),
        "encrypted key": (
            ["--tls-cert", certs.cert, "--tls-key", certs.encrypted_key],
            f"Error: the key in {certs.encrypted_key!r} is encrypted; "
            "give an unencrypted key (e.g. openssl pkey -in KEY -out PLAIN)",
        ),
        "cert not PEM": (["--tls-cert", certs.not_pem], f"Error: no PEM certificate in {certs.not_pem!r}"),
        "key not PEM": (
            ["--tls-cert", certs.cert, "--tls-key", certs.not_pem],
            f"Error: no PEM private key in {certs.not_pem!r}",
        ),
        "no key": (["--tls-cert", certs.cert], f"Error: no PEM private key in {certs.cert!r}; give the key's own file too"),
        "corrupt PEM": (
            ["--tls-cert", certs.corrupt],
            f"Error: cannot load the certificate and key ({certs.corrupt!r}, {certs.corrupt!r}): "
            "no valid PEM certificate and matching key",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing cert",
        "missing key",
        "key of another certificate",
        "encrypted key",
        "cert not PEM",
        "key not PEM",
        "no key",
        "corrupt PEM",
    ],
)
def test_a_broken_tls_setup_is_one_error_line_and_nothing_listens(certs, tmp_path, case) -> None:
    """tcp-server and chat serve: a broken certificate or key is one 'Error:' line naming it, exit 1, no listener."""
    options, message = setup_error_cases(certs, str(tmp_path / "missing.pem"))[case]
    results = run_all(*[(*command, "--port", "0", *options) for command in SERVER_COMMANDS])
    for result in results:
        assert_one_line_error(result, message)  # stdout empty: it never printed 'listening on'


def test_tls_key_without_tls_cert_is_a_usage_error(certs) -> None:
    """--tls-key alone: click's usage error, exit 2, last line 'Error: --tls-key needs --tls-cert'."""
    for result in run_all(*[(*command, "--port", "0", "--tls-key", certs.key) for command in SERVER_COMMANDS]):
        assert result.returncode == 2
        assert result.stderr.decode().splitlines()[-1] == "Error: --tls-key needs --tls-cert"
        assert result.stdout == b"" and b"Traceback" not in result.stderr


def test_the_key_inside_the_cert_file_serves_tls(certs) -> None:
    """--tls-cert with key and chain in one file: the listening line ends ' (TLS)' and a verifying client is welcomed."""
    with CliServer("tcp-server", "--port", "0", "--tls-cert", certs.combined, ready=TLS_READY) as server:
        result = run_cli("tcp-client", "--port", str(server.port), "--tls", "--tls-ca", certs.ca, "hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"Welcome to Socket Server\n"
        assert result.stderr.decode().splitlines() == [
            f"Connected to Server 127.0.0.1:{server.port} (TLS)",
            "Disconnected from Server",
        ]
        server.out.wait_for(r"^Get message from client 127\.0\.0\.1:\d+: hello\\n$")


# -- 2. the client checks the server's certificate ---------------------------------------------------


@pytest.mark.parametrize(
    "cert, ca, reason",
    [
        ("combined", None, "unknown issuer"),
        ("expired", "ca", "certificate expired"),
        ("wrong_name", "ca", "IP address mismatch (the certificate is not valid for '127.0.0.1')"),
    ],
    ids=["unknown issuer", "expired", "name mismatch"],
)
def test_a_certificate_the_client_cannot_trust_is_one_error_line(certs, chat, cert, ca, reason) -> None:
    """tcp-client and chat connect: exit 1 and
    'Error: TLS handshake with 127.0.0.1:PORT failed: certificate verification failed: REASON'."""
    server = chat(tls=certs.server_context(getattr(certs, cert)))
    port = server.server_address[1]
    trust = ["--tls-ca", getattr(certs, ca)] if ca else []
    results = run_all(
        ("tcp-client", "--port", str(port), "--tls", *trust, "hello"),
        ("chat", "connect", "--port", str(port), "--tls", *trust),
    )
    for result in results:
        assert_one_line_error(
            result, f"Error: TLS handshake with 127.0.0.1:{port} failed: certificate verification failed: {reason}"
        )
    wait_until(lambda: server.connection_count == 0, what="the refused clients closed")
    assert server.hub.members == []


def test_tls_no_verify_connects_to_an_expired_certificate_with_a_warning(certs, chat) -> None:
    """--tls-no-verify: a warning line on stderr, then the session runs as usual (both clients, exit 0)."""
    server = chat(tls=certs.server_context(certs.expired))
    port = str(server.server_address[1])
    tcp, line_client = run_all(
        ("tcp-client", "--port", port, "--tls-no-verify", "hello"),
        ("chat", "connect", "--port", port, "--tls-no-verify", "--name", "zed"),
    )
    assert tcp.returncode == 0, tcp.stderr
    assert tcp.stderr.decode().splitlines() == [
        NO_VERIFY_WARNING,
        f"Connected to Server 127.0.0.1:{port} (TLS)",
        "Disconnected from Server",
    ]
    assert tcp.stdout.decode().startswith("* welcome user")  # it was a chat member until its end of input
    assert line_client.returncode == 0, line_client.stderr
    assert line_client.stderr.decode().splitlines() == [
        NO_VERIFY_WARNING,
        f"Connected to Server 127.0.0.1:{port} (TLS)",
        "Disconnected from Server",
    ]
    lines = line_client.stdout.decode().splitlines()
    assert any(re.fullmatch(r"\* user\d is now known as zed", line) for line in lines) and lines[-1] == "* bye"


# -- 3. half-close over TLS ----------------------------------------------------------------------------


def test_tcp_client_echo_over_tls_is_byte_exact(certs) -> None:
    """2 MB of random bytes through tcp-client --tls into tcp-server --echo come back unchanged; exit 0."""
    data = os.urandom(2 * 1024 * 1024)
    command = ("tcp-server", "--port", "0", "--tls-cert", certs.cert, "--tls-key", certs.key, "--echo", "--welcome", "", "-q")
    with CliServer(*command, ready=TLS_READY) as server:
        result = run_cli("tcp-client", "--port", str(server.port), "--tls", "--tls-ca", certs.ca, input=data)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
        server.out.wait_for(r"^Client disconnected 127\.0\.0\.1:\d+ \(2097152 bytes received\)$")


def test_library_half_close_over_tls(certs) -> None:
    """connect(tls=...) to WelcomeServer(tls=...): send, shutdown(SHUT_WR), read the echo to EOF; the server saw a clean end."""

    class Recorder(WelcomeServer):
        ends: list[int] = []

        def on_end(self, peer: str, received: int) -> None:
            self.ends.append(received)

    data = os.urandom(2 * 1024 * 1024)
    with serving(Recorder(("127.0.0.1", 0), echo=True, welcome="", payload="quiet", tls=certs.server_context())) as server:
        stream = connect("127.0.0.1", server.server_address[1], TIMEOUT, tls=certs.client_context())
        assert isinstance(stream, TlsStream) and stream.layer.version in ("TLSv1.2", "TLSv1.3")

        def send() -> None:  # the echo comes back meanwhile: read it on this thread, like tcp-client
            stream.sendall(data)
            stream.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        stream.settimeout(TIMEOUT)
        chunks = []
        with stream:
            while chunk := stream.recv(1 << 20):
                chunks.append(chunk)
        sender.join(TIMEOUT)
        assert b"".join(chunks) == data
        wait_until(lambda: Recorder.ends, what="on_end")
        assert Recorder.ends == [len(data)]


# -- 4. the chat over TLS ------------------------------------------------------------------------------


def two_members_in_chess(server: ChatServer, certs: Certs) -> tuple[TlsChatter, TlsChatter]:
    port = server.server_address[1]
    a = TlsChatter(port, certs.client_context())
    assert a.line() == welcome("user1")
    b = TlsChatter(port, certs.client_context())
    assert b.line() == welcome("user2")
    assert a.line() == "* user2 joined lobby"
    a.send("/join chess")
    assert a.line() == "* you are in chess"
    assert b.line() == "* user1 left lobby"
    b.send("/join chess")
    assert b.line() == "* you are in chess"
    assert a.line() == "* user2 joined chess"
    return a, b


def test_two_tls_clients_chat_in_a_room(certs, chat) -> None:
    """Two ChatClients over TLS join chess and each reads the other's lines, exactly."""
    server = chat(tls=certs.server_context())
    a, b = two_members_in_chess(server, certs)
    b.send("hello from b")
    assert a.line() == "<user2> hello from b"
    a.send("hi back, ünïcode too")
    assert b.line() == "<user1> hi back, ünïcode too"
    b.send("/quit")
    assert b.rest() == ["* bye"]
    assert a.line() == "* user2 left chess"
    a.close()


def test_plaintext_and_garbage_on_the_tls_port_close_only_that_connection(certs, chat) -> None:
    """A plaintext line client and random bytes are each told in plain text that the port speaks TLS and
    closed at once; the TLS members go on, nobody else hears of them."""
    server = chat(tls=certs.server_context())
    a, b = two_members_in_chess(server, certs)
    port = server.server_address[1]
    plain = Peer(port)
    plain.send(b"hello, I speak plaintext\n")
    assert read_until_closed(plain.sock) == b"! this port speaks TLS: connect with TLS (socketlab chat connect --tls)\n"
    noise = Peer(port)
    noise.send(garbage(4096))
    assert read_until_closed(noise.sock) == b"! this port speaks TLS: connect with TLS (socketlab chat connect --tls)\n"
    plain.close()
    noise.close()
    a.send("still here")
    assert b.line() == "<user1> still here"
    b.send("/who")
    assert b.line() == "* in chess: user1, user2"
    assert len(server.hub.members) == 2
    wait_until(lambda: server.connection_count == 2, what="the two closed connections forgotten")
    a.close()
    b.close()


def test_a_bad_record_after_the_handshake_drops_that_member_with_tls_error(certs, chat) -> None:
    """A member whose next record is garbage leaves with '(TLS error)' and is closed; the others chat on."""
    server = chat(tls=certs.server_context())
    a, b = two_members_in_chess(server, certs)
    raw = socket.create_connection(server.server_address, TIMEOUT)
    stream = TlsStream.client(raw, certs.client_context(), "127.0.0.1")
    stream.handshake(TIMEOUT)
    stream.sendall(b"/join chess\n")
    assert a.line() == b.line() == "* user3 joined chess"
    raw.sendall(garbage(100))  # not a TLS record
    assert a.line() == b.line() == "* user3 left chess (TLS error)"
    read_until_closed(raw)  # returns: the server closed the connection
    raw.close()
    assert len(server.hub.members) == 2
    b.send("after")
    assert a.line() == "<user2> after"
    wait_until(lambda: server.connection_count == 2, what="the dropped member forgotten")


def test_close_notify_alone_ends_a_members_side(certs, chat) -> None:
    """close_notify without a TCP FIN is the end of the client's side: its unfinished line counts, it leaves,
    the server closes."""
    server = chat(tls=certs.server_context())
    a, b = two_members_in_chess(server, certs)
    raw = socket.create_connection(server.server_address, TIMEOUT)
    stream = TlsStream.client(raw, certs.client_context(), "127.0.0.1")
    stream.handshake(TIMEOUT)
    stream.sendall(b"/join chess\nno newline")
    assert a.line() == b.line() == "* user3 joined chess"
    raw.sendall(stream.layer.close())  # close_notify; the TCP connection stays open both ways
    assert a.line() == b.line() == "<user3> no newline"
    assert a.line() == b.line() == "* user3 left chess (disconnected)"
    stream.settimeout(TIMEOUT)
    received = b""
    while chunk := stream.recv(65536):  # the server's close_notify (or FIN) ends it: no timeout
        received += chunk
    assert received.decode().splitlines() == [welcome("user3"), "* you are in chess"]
    raw.close()


def test_a_client_stuck_in_its_handshake_is_dropped_after_handshake_timeout(certs, chat) -> None:
    """No ClientHello (or half of one) within handshake_timeout: dropped; meanwhile members chat without delay."""
    server = chat(tls=certs.server_context(), handshake_timeout=1.5)  # room for a slow machine before the check
    a, b = two_members_in_chess(server, certs)
    hello = TlsLayer(certs.client_context(), server_side=False, server_hostname="127.0.0.1").start()
    started = time.monotonic()
    silent = socket.create_connection(server.server_address, TIMEOUT)
    partial = socket.create_connection(server.server_address, TIMEOUT)
    partial.sendall(hello[: len(hello) // 2])
    wait_until(lambda: server.connection_count == 4, what="both stuck clients accepted")
    a.send("while they wait")
    assert b.line() == "<user1> while they wait"
    assert is_open(silent) and is_open(partial), "dropped before handshake_timeout"
    for sock in (silent, partial):
        assert read_until_closed(sock) == b""
        sock.close()
    assert 1.5 <= time.monotonic() - started < 4.5
    wait_until(lambda: server.connection_count == 2, what="the stuck clients forgotten")
    assert len(server.hub.members) == 2
    b.send("after")
    assert a.line() == "<user2> after"


@pytest.mark.parametrize("reset", [True, False])
def test_a_client_that_sends_half_a_client_hello_then_leaves_is_logged(certs, chat, caplog, reset) -> None:
    """Half a ClientHello, then a reset (or a close): one 'TLS handshake failed' line, as tcp-server logs it."""
    server = chat(tls=certs.server_context())
    hello = TlsLayer(certs.client_context(), server_side=False, server_hostname="127.0.0.1").start()
    with caplog.at_level("INFO", logger="socketlab.chat"):
        sock = socket.create_connection(server.server_address, TIMEOUT)
        peer = "127.0.0.1:%d" % sock.getsockname()[1]
        sock.sendall(hello[: len(hello) // 2])
        wait_until(lambda: server.connection_count == 1, what="the client accepted")
        close_with_reset(sock) if reset else sock.close()
        wait_until(lambda: server.connection_count == 0, what="the client forgotten")
    reason = "connection reset" if reset else "closed by the client"
    assert [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()] == [
        f"TLS handshake failed with {peer}: {reason}"
    ]


def test_a_client_that_aborts_mid_handshake_leaves_no_trace(certs, chat) -> None:
    """ClientHello sent, ServerHello read, then closed: no member, no notice, no name used, connection_count back."""
    server = chat(tls=certs.server_context())
    a, b = two_members_in_chess(server, certs)
    before = server.connection_count
    layer = TlsLayer(certs.client_context(), server_side=False, server_hostname="127.0.0.1")
    aborted = socket.create_connection(server.server_address, TIMEOUT)
    aborted.sendall(layer.start())
    assert aborted.recv(65536)[:1] == b"\x16"  # the server's handshake records: it is mid-handshake with us
    assert server.connection_count == before + 1 and len(server.hub.members) == 2
    aborted.close()
    wait_until(lambda: server.connection_count == before, what="the aborted connection forgotten")
    assert len(server.hub.members) == 2
    a.send("/who")
    assert a.line() == "* in chess: user1, user2"
    late = TlsChatter(server.server_address[1], certs.client_context())
    assert late.line() == welcome("user3")  # the aborted client took no name
    b.send("and now")
    assert a.line() == "<user2> and now"
    late.close()


# -- 5. the web page and WebSocket over TLS -------------------------------------------------------------


def test_wss_and_https_and_the_https_origin_rule(certs, chat) -> None:
    """With tls, /ws is wss (same chat as TLS line clients), / is https (plain http gets a 400 naming https),
    only https://HOST:PORT is the own origin."""
    server = chat(tls=certs.server_context(), web=("127.0.0.1", 0))
    web_port = server.web_address[1]
    member = TlsChatter(server.server_address[1], certs.client_context())
    assert member.line() == welcome("user1")
    url = f"wss://127.0.0.1:{web_port}/ws"
    own_origin = f"https://127.0.0.1:{web_port}"
    with ws_connect(url, ssl=certs.client_context(), origin=own_origin, open_timeout=TIMEOUT, close_timeout=1) as browser:
        assert browser.recv(timeout=TIMEOUT) == welcome("user2") + "\n"
        assert member.line() == "* user2 joined lobby"
        browser.send("hello over wss")
        assert member.line() == "<user2> hello over wss"
        member.send("hello over tls")
        assert browser.recv(timeout=TIMEOUT) == "<user1> hello over tls\n"
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, ssl=certs.client_context(), origin=f"http://127.0.0.1:{web_port}", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 403
    assert member.line() == "* user2 left lobby (disconnected)"
    with socket.create_connection(server.web_address, TIMEOUT) as plain:  # http:// to the https port
        plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _, body = read_until_closed(plain).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert body == b"This port speaks HTTPS: use https:// (and wss://) for this address.\n"
    page = resources.files("socketlab.chat").joinpath("static", "index.html").read_bytes()
    with urllib.request.urlopen(f"https://127.0.0.1:{web_port}/", context=certs.client_context(), timeout=TIMEOUT) as answer:
        assert (answer.status, answer.headers["Content-Type"], answer.read()) == (200, "text/html; charset=utf-8", page)
    member.close()


# -- 6. TlsLayer, sans-IO: two layers joined by a fake link ---------------------------------------------


class Link:
    """A client and a server TlsLayer joined by a fake wire that delivers bytes in small random pieces."""

    def __init__(
        self, certs: Certs, seed: int, server_context: ssl.SSLContext | None = None, hostname: str = "127.0.0.1"
    ) -> None:
        self.rng = random.Random(seed)
        self.client = TlsLayer(certs.client_context(), server_side=False, server_hostname=hostname)
        self.server = TlsLayer(server_context or certs.server_context(), server_side=True)
        self.peer = {self.client: self.server, self.server: self.client}
        self.wire = {self.client: bytearray(), self.server: bytearray()}  # bytes on their way to each layer
        self.received = {self.client: bytearray(), self.server: bytearray()}

    def put(self, sender: TlsLayer, records: bytes) -> None:
        self.wire[self.peer[sender]] += records

    def run(self) -> None:
        """Deliver until nothing is in flight; each receive() gets 1 to 300 bytes."""
        while any(self.wire.values()):
            for layer, pending in self.wire.items():
                if pending:
                    size = self.rng.choice([1, 2, 3, 5, 17, 300])
                    piece = bytes(pending[:size])
                    del pending[:size]
                    self.received[layer] += layer.receive(piece)
                    self.put(layer, layer.outgoing())

    def handshake(self) -> None:
        self.put(self.client, self.client.start())
        self.run()


def pinned(certs: Certs, version: str) -> ssl.SSLContext:
    """The test server context, speaking only TLS *version* ("TLSv1_2" or "TLSv1_3")."""
    context = certs.server_context()
    context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
    return context


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("seed", range(2))
def test_tls_layers_handshake_and_move_data_both_ways_in_small_pieces(certs, seed, version) -> None:
    """Ciphertext cut into 1..300-byte pieces: the handshake completes and plaintext arrives byte-exact both ways."""
    link = Link(certs, seed, server_context=pinned(certs, version))
    link.handshake()
    assert link.client.handshake_done and link.server.handshake_done
    assert link.client.version == link.server.version == version.replace("_", ".")
    upstream, downstream = os.urandom(50_000), os.urandom(30_000)
    for data, sender in ((upstream, link.client), (downstream, link.server)):
        offset = 0
        while offset < len(data):
            step = link.rng.randint(1, 20_000)
            link.put(sender, sender.send(data[offset : offset + step]))
            offset += step
    link.run()
    assert bytes(link.received[link.server]) == upstream
    assert bytes(link.received[link.client]) == downstream


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_close_sends_close_notify_after_the_data_and_reading_goes_on(certs, version) -> None:
    """close(): what was sent before arrives, then peer_closed; the closing side still reads, and sends nothing more."""
    link = Link(certs, seed=7, server_context=pinned(certs, version))
    assert link.client.close() == b""  # before the handshake there is nothing to close
    link.handshake()
    link.put(link.client, link.client.send(b"last words\n"))
    link.put(link.client, link.client.close())
    assert link.client.close() == b"" and link.client.send(b"more") == b""  # once only; nothing after it
    link.run()
    assert bytes(link.received[link.server]) == b"last words\n"
    assert link.server.peer_closed and not link.client.peer_closed
    link.put(link.server, link.server.send(b"the answer\n"))  # a half-close: the other direction still flows
    link.put(link.server, link.server.close())
    link.run()
    assert bytes(link.received[link.client]) == b"the answer\n"
    assert link.client.peer_closed


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"hello\n", "not TLS (wrong version number)"),
        (b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "not TLS (http request)"),
        (b"\x17\x03\x03\xff\xff" + bytes(100), "not TLS (packet length too long)"),
    ],
    ids=["plaintext", "http", "oversized record"],
)
def test_what_is_not_tls_raises_tls_error_saying_so(certs, data, reason) -> None:
    """Bytes no TLS client sends, fed to a server layer: TlsError 'not TLS (...)'."""
    layer = TlsLayer(certs.server_context(), server_side=True)
    with pytest.raises(TlsError) as raised:
        layer.receive(data)
    assert str(raised.value) == reason


def test_random_garbage_into_a_server_layer_is_not_tls(certs) -> None:
    """Fifty different random garbages fed to a server layer: each raises TlsError 'not TLS (wrong version number)'."""
    for _ in range(50):
        layer = TlsLayer(certs.server_context(), server_side=True)
        with pytest.raises(TlsError) as raised:
            layer.receive(garbage(300))
        assert str(raised.value) == "not TLS (wrong version number)"


def test_verification_failures_in_words(certs) -> None:
    """A client layer names why it refuses the server: expired, or the host name it asked for."""
    for cert, hostname, reason in (
        (certs.expired, "127.0.0.1", "certificate expired"),
        (certs.wrong_name, "localhost", "host name mismatch (the certificate is not valid for 'localhost')"),
        (certs.wrong_name, "127.0.0.1", "IP address mismatch (the certificate is not valid for '127.0.0.1')"),
    ):
        link = Link(certs, seed=1, server_context=certs.server_context(cert), hostname=hostname)
        with pytest.raises(TlsError) as raised:
            link.handshake()
        assert str(raised.value) == f"certificate verification failed: {reason}"


def connected_streams(certs, left: socket.socket, right: socket.socket) -> tuple[TlsStream, TlsStream]:
    """A client TlsStream on *left* and a server one on *right*, their handshake done."""
    server = TlsStream.server(right, certs.server_context())
    handshake = threading.Thread(target=server.handshake, args=(TIMEOUT,))
    handshake.start()
    client = TlsStream.client(left, certs.client_context(), "127.0.0.1")
    client.handshake(TIMEOUT)
    handshake.join(TIMEOUT)
    return client, server


def test_a_bad_record_on_a_tls_stream_is_an_os_error(certs) -> None:
    """TlsStream.recv on a corrupted record raises TlsConnectionError, an OSError, so socket code ends the connection."""
    left, right = socket.socketpair()
    with left, right:
        client, server = connected_streams(certs, left, right)
        server.sendall(b"fine\n")
        client.settimeout(TIMEOUT)
        assert client.recv(100) == b"fine\n"
        right.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))  # application data that does not decrypt
        with pytest.raises(OSError) as raised:
            client.recv(100)
        assert isinstance(raised.value, TlsConnectionError)
        assert raised.value.strerror == str(raised.value) == "decryption failed or bad record mac"


def test_close_notify_alone_ends_a_tls_stream(certs) -> None:
    """A peer's close_notify with the TCP connection still open: recv() returns b"" (and the other direction still works)."""
    left, right = socket.socketpair()
    with left, right:
        client, server = connected_streams(certs, left, right)
        client.sendall(b"last\n")
        left.sendall(client.layer.close())  # close_notify only: no shutdown(SHUT_WR)
        server.settimeout(TIMEOUT)
        assert server.recv(100) == b"last\n"
        assert server.recv(100) == b""
        server.sendall(b"reply\n")
        client.settimeout(TIMEOUT)
        assert client.recv(100) == b"reply\n"


# -- 7. SIGTERM -------------------------------------------------------------------------------------------


def test_sigterm_tells_a_tls_client_and_exits_quickly(certs) -> None:
    """chat serve --tls-cert: SIGTERM exits 0 within 2 s; the TLS client reads '* server shutting down', then EOF."""
    with CliServer("chat", "serve", "--port", "0", "--tls-cert", certs.combined, ready=TLS_READY) as server:
        member = TlsChatter(server.port, certs.client_context())
        assert member.line() == welcome("user1")
        server.out.wait_for(r"^Client connected 127\.0\.0\.1:\d+ as user1$")
        status, seconds = server.stop(signal.SIGTERM)
        assert status == 0 and seconds < 2.0
        assert member.rest() == ["* server shutting down"]
        assert server.out.rest()[-1] == "Server closed"
        member.close()


def test_chat_serve_web_over_tls_prints_https(certs) -> None:
    """chat serve --tls-cert --web 0: 'Web chat on https://127.0.0.1:PORT/' after the TLS listening line."""
    with CliServer("chat", "serve", "--port", "0", "--web", "0", "--tls-cert", certs.combined, ready=TLS_READY) as server:
        web_port = int(server.out.wait_for(r"^Web chat on https://127\.0\.0\.1:(\d+)/$").group(1))
        with urllib.request.urlopen(f"https://127.0.0.1:{web_port}/", context=certs.client_context(), timeout=TIMEOUT) as answer:
            assert answer.status == 200
        assert server.stop()[0] == 0
