"""`chat connect` through pipes: refusals end it with status 1 and one reason, a TLS port is named as
one, UNIX domain sockets, and the WebSocket endpoint of `chat serve --web` (ws:// and wss://)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Callable, Iterator

import pytest

from certs import Certs, make_certs
from support import CLI, TIMEOUT, CliServer, Peer, run_cli

pytestmark = pytest.mark.timeout(30)

WEB_LINE = r"Web chat on http://127\.0\.0\.1:(\d+)/$"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().splitlines()


def connect_silently(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`chat connect ARGS` whose stdin stays open and silent until it exits: it sends nothing of its own."""
    proc = subprocess.Popen(
        CLI + ["chat", "connect", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(TIMEOUT)  # its output is a few lines: the pipes cannot fill
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class StandIn:
    """A stand-in server on a TCP or UNIX socket: each connection is given to *handle* on its own thread."""

    def __init__(self, handle: Callable[[socket.socket], None], path: str | None = None) -> None:
        if path is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.address: Any = self.listener.getsockname()
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.listener.listen()
            self.address = path
        self.handle = handle
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        with conn:
            try:
                self.handle(conn)
            except OSError:
                pass

    def __enter__(self) -> "StandIn":
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(TIMEOUT)
        for thread in self.threads:
            thread.join(TIMEOUT)
        assert not self.thread.is_alive() and not any(thread.is_alive() for thread in self.threads)


def line_chat(conn: socket.socket) -> None:
    """A tiny chat server: a welcome, each line back as '<user1> LINE', '* bye' and a close on /quit."""
    conn.sendall(b"* welcome user1, you are in lobby (type /help)\n")
    for raw in conn.makefile("rb"):
        line = raw.rstrip(b"\r\n")
        if line == b"/quit":
            conn.sendall(b"* bye\n")
            return
        conn.sendall(b"<user1> " + line + b"\n")


# -- options the server would refuse -------------------------------------------------------------------


RULE = "1 to 32 letters or digits (any script), _ or -; no spaces"


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("--name", "bad!", f"Invalid value for '--name': invalid nickname 'bad!': {RULE}"),
        ("--name", "User7", "Invalid value for '--name': nickname User7 is reserved: names user<N> are the server's to give"),
        ("--room", "two words", f"Invalid value for '--room': invalid room name 'two words': {RULE}"),
        ("--room", "r" * 33, f"Invalid value for '--room': invalid room name '{'r' * 33}': {RULE}"),
    ],
)
def test_a_name_or_room_the_server_would_refuse_is_a_usage_error_before_connecting(option: str, value: str, error: str) -> None:
    """Status 2 and one Error line, nothing sent: nothing listens on the port, and no connection error is reported."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = run_cli("chat", "connect", "--port", str(port), option, value, input=b"hello\n")
    assert result.returncode == 2
    assert stderr_lines(result)[-1] == f"Error: {error}"
    assert result.stdout == b""


def test_a_name_is_taken_in_the_form_the_server_compares_names_in() -> None:
    """'cafe' + a combining acute accent is 'café' (NFC), as the server's /nick would have it."""
    with CliServer("chat", "serve", "--port", "0") as server:
        result = run_cli("chat", "connect", "--port", str(server.port), "--name", "cafe\u0301", "--room", "r1", input=b"")
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines()[1:3] == ["* user1 is now known as café", "* you are in r1"]


# -- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, reason", [("--max-clients", "server full"), ("--max-per-ip", "too many connections from your address")]
)
def test_a_refused_client_exits_1_with_the_reason(option: str, reason: str) -> None:
    """The server's refusal line becomes status 1 and 'Error: refused by HOST:PORT: REASON' on stderr."""
    with CliServer("chat", "serve", "--port", "0", option, "1") as server:
        first = Peer(server.port)
        try:
            assert first.line().startswith("* welcome")
            result = connect_silently("--port", str(server.port))
        finally:
            first.close()
    assert result.returncode == 1, result
    where = f"127.0.0.1:{server.port}"
    assert stderr_lines(result) == [f"Connected to Server {where}", f"Error: refused by {where}: {reason}"]
    assert result.stdout.decode() == f"! {reason}\n"


@pytest.mark.parametrize(
    "said",
    [b"! chat backend unavailable, try again later\n", b"! server full\n"],
    ids=["backend unavailable", "server full"],
)
def test_any_refusal_line_before_the_welcome_is_a_refusal(said: bytes) -> None:
    """A '! ...' line then a close, with no welcome, is a refusal (a cluster whose Redis is down says this)."""
    with StandIn(lambda conn: conn.sendall(said)) as server:
        result = connect_silently("--port", str(server.port))
    assert result.returncode == 1
    reason = said.decode()[2:-1]
    assert stderr_lines(result)[-1] == f"Error: refused by 127.0.0.1:{server.port}: {reason}"


def test_a_close_before_any_welcome_exits_1() -> None:
    """A server that closes without a word (--deny, or not a chat server): status 1, and TLS named as a cause."""
    with StandIn(lambda conn: None) as server:
        result = connect_silently("--port", str(server.port))
    assert result.returncode == 1
    assert stderr_lines(result)[-1] == (
        f"Error: 127.0.0.1:{server.port} closed the connection without a word (if it speaks TLS, try --tls)"
    )
    assert result.stdout == b""


def test_a_server_that_closes_before_the_sender_starts_gets_no_quit(monkeypatch) -> None:
    """The sender thread started after the server had closed (seen once under load): it sent /quit anyway,
    and a silent close was then blamed on TLS ('it seems to speak TLS'), since bytes had been sent."""
    from socketlab.chat.client import ChatClient, ChatRefused, run_session

    real_thread = threading.Thread
    receivers: list[threading.Thread] = []

    class SenderLast(real_thread):  # type: ignore[misc, valid-type]
        """The session's sender starts only once its receiver has seen the close."""

        def start(self) -> None:
            if self.name == "chat-receive":
                receivers.append(self)
            elif self.name == "chat-send":
                receivers[-1].join(TIMEOUT)
            super().start()

    monkeypatch.setattr(threading, "Thread", SenderLast)
    read_end, write_end = os.pipe()  # input that never comes
    with StandIn(lambda conn: None) as server, open(read_end) as stdin, open(write_end, "w"):
        client = ChatClient.connect("127.0.0.1", server.port)
        try:
            with pytest.raises(ChatRefused) as refused:
                run_session(client, stdin=stdin, out=open(os.devnull, "w"), interactive=False)
        finally:
            client.close()
    assert str(refused.value) == f"127.0.0.1:{server.port} closed the connection without a word (if it speaks TLS, try --tls)"
    assert client.sent == 0


def test_a_welcomed_client_that_the_server_leaves_exits_0() -> None:
    """After a welcome, the server closing is the end of a session, not a refusal."""
    with CliServer("chat", "serve", "--port", "0") as server:
        proc = subprocess.Popen(
            CLI + ["chat", "connect", "--port", str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith(b"* welcome")
            server.stop()
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    assert proc.returncode == 0, err
    assert out.decode().splitlines()[-1] == "* server shutting down"
    assert err.decode().splitlines()[-1] == "Disconnected from Server"


# -- a plaintext client at a TLS port -----------------------------------------------------------------


TLS_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])  # a fatal protocol_version alert


def answers_with_an_alert(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(TLS_ALERT)


def test_a_tls_alert_in_answer_says_try_tls() -> None:
    """A TLS record in answer to plaintext: 'seems to speak TLS: try --tls', not the record as a line."""
    with StandIn(answers_with_an_alert) as server:
        result = run_cli("chat", "connect", "--port", str(server.port), "--name", "alice")
    assert result.returncode == 1
    assert stderr_lines(result)[-1] == f"Error: 127.0.0.1:{server.port} seems to speak TLS: try --tls"
    assert result.stdout == b""


def test_a_real_tls_server_is_named_as_one(certs: Certs) -> None:
    """tcp-server --tls-cert (OpenSSL's answer to plaintext) and chat serve --tls-cert (its own hint) both say TLS."""
    for command in (["tcp-server"], ["chat", "serve"]):
        ready = r"listening on (?:.*):(\d+)"
        with CliServer(*command, "--port", "0", "--tls-cert", certs.combined, ready=ready) as server:
            result = run_cli("chat", "connect", "--port", str(server.port), "--name", "alice")
        assert result.returncode == 1, command
        error = stderr_lines(result)[-1]
        assert error.startswith("Error: ") and "TLS" in error and "--tls" in error, (command, error)


# -- UNIX domain sockets --------------------------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A path for a UNIX socket in a folder of its own (pytest's tmp_path can pass the ~100-byte limit)."""
    folder = tempfile.mkdtemp(prefix="socketlab-unix-", dir="/tmp")
    yield os.path.join(folder, "chat.sock")
    shutil.rmtree(folder, ignore_errors=True)


def test_chat_connect_unix(socket_path: str) -> None:
    """--unix PATH: the same session on a UNIX domain socket, byte for byte."""
    with StandIn(line_chat, path=socket_path):
        result = run_cli("chat", "connect", "--unix", socket_path, "--name", "pipe", input="one\nzwei 둘\n".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (
        "* welcome user1, you are in lobby (type /help)\n<user1> /nick pipe\n<user1> one\n<user1> zwei 둘\n* bye\n"
    )
    assert stderr_lines(result) == [f"Connected to Server {socket_path}", "Disconnected from Server"]


def test_chat_connect_unix_errors(socket_path: str) -> None:
    """No socket file, a stale one (nobody listening), and options that do not apply: one line each."""
    missing = run_cli("chat", "connect", "--unix", socket_path)
    assert missing.returncode == 1
    assert stderr_lines(missing) == [f"Error: cannot connect to {socket_path}: no such socket file"]

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)
    stale.close()  # the file stays, nobody listens
    result = run_cli("chat", "connect", "--unix", socket_path)
    assert result.returncode == 1
    assert stderr_lines(result) == [
        f"Error: cannot connect to {socket_path}: nobody is listening on it (a server that stopped left the file behind?)"
    ]

    for extra in (["--tls"], ["--port", "3001"]):
        usage = run_cli("chat", "connect", "--unix", socket_path, *extra)
        assert usage.returncode == 2 and "--unix" in usage.stderr.decode(), usage.stderr


# -- the WebSocket endpoint --------------------------------------------------------------------------


def web_port(server: CliServer, line: str = WEB_LINE) -> int:
    """The port of a `chat serve --web` server's page, from its log."""
    found = [re.search(line, seen) for seen in server.out.seen]
    match = next((match for match in found if match), None) or server.out.wait_for(line)
    return int(match.group(1))


@pytest.fixture
def web_server() -> Iterator[tuple[CliServer, int]]:
    with CliServer("chat", "serve", "--port", "0", "--web", "0") as server:
        yield server, web_port(server)


def test_chat_connect_over_websocket_is_the_same_session(web_server: tuple[CliServer, int]) -> None:
    """ws://HOST:PORT/ws: the same lines in and out as over TCP, beside a TCP member of the room."""
    server, web_port = web_server
    listener = Peer(server.port)
    try:
        listener.line()
        url = f"ws://127.0.0.1:{web_port}/ws"
        result = run_cli("chat", "connect", url, "--name", "web", "--room", "lobby", input="one\nzwei 둘\n".encode())
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            "* welcome user2, you are in lobby (type /help)",
            "* user2 is now known as web",
            "* you are in lobby",
            "* bye",
        ]
        assert stderr_lines(result) == [f"Connected to Server {url}", "Disconnected from Server"]
        assert listener.lines(5) == [
            "* user2 joined lobby",
            "* user2 is now known as web",
            "<web> one",
            "<web> zwei 둘",
            "* web left lobby",
        ]
    finally:
        listener.close()


def test_websocket_refusal_and_errors() -> None:
    """A full server over WebSocket is a refusal (status 1); a wrong path names the HTTP answer; bad URLs are usage errors."""
    with CliServer("chat", "serve", "--port", "0", "--web", "0", "--max-clients", "1") as server:
        port = web_port(server)
        first = Peer(server.port)
        try:
            first.line()
            url = f"ws://127.0.0.1:{port}/ws"
            full = connect_silently(url)
            assert full.returncode == 1
            assert stderr_lines(full)[-1] == f"Error: refused by {url}: server full"
        finally:
            first.close()
        wrong = run_cli("chat", "connect", f"ws://127.0.0.1:{port}/nope")
        assert wrong.returncode == 1
        answer = "the server answered HTTP 404 Not Found"
        assert stderr_lines(wrong) == [f"Error: cannot open ws://127.0.0.1:{port}/nope: {answer}"]
    for args in (["http://127.0.0.1:1/ws"], ["ws://127.0.0.1:1/ws", "--tls"], ["ws://127.0.0.1:1/ws", "--port", "5"]):
        usage = run_cli("chat", "connect", *args)
        assert usage.returncode == 2, (args, usage.stderr)


def test_chat_connect_over_wss(certs: Certs) -> None:
    """wss:// with --tls-ca: verified TLS to the web port; without the CA, the failed verification is named."""
    ready = r"listening on (?:.*):(\d+)"
    with CliServer("chat", "serve", "--port", "0", "--web", "0", "--tls-cert", certs.combined, ready=ready) as server:
        port = web_port(server, r"Web chat on https://127\.0\.0\.1:(\d+)/$")
        url = f"wss://127.0.0.1:{port}/ws"
        result = run_cli("chat", "connect", url, "--tls-ca", certs.ca, "--name", "sec", input=b"hi\n")
        assert result.returncode == 0, result.stderr
        assert stderr_lines(result) == [f"Connected to Server {url} (TLS)", "Disconnected from Server"]
        assert result.stdout.decode().splitlines()[-1] == "* bye"
        untrusted = run_cli("chat", "connect", url)
        assert untrusted.returncode == 1
        assert stderr_lines(untrusted) == [
            f"Error: TLS handshake with 127.0.0.1:{port} failed: certificate verification failed: unknown issuer"
        ]


# -- the rules alone, without sockets -------------------------------------------------------------------


class Ended:
    """A client whose connection has ended, as Welcome.check sees it."""

    address = "127.0.0.1:3000"
    tls = False

    def __init__(self, not_chat: str | None = None) -> None:
        self._not_chat = not_chat

    def not_chat(self) -> str | None:
        return self._not_chat


@pytest.mark.parametrize(
    "lines, error",
    [
        (["* welcome user1, you are in lobby (type /help)", "! idle for 5 s, disconnecting"], None),
        (["! server full"], "refused by 127.0.0.1:3000: server full"),
        (
            ["! lost contact", "! chat backend unavailable, try again later"],
            "refused by 127.0.0.1:3000: chat backend unavailable, try again later",
        ),
        (["hello from some other server"], "127.0.0.1:3000 closed the connection before any welcome"),
        ([], "127.0.0.1:3000 closed the connection before any welcome"),
    ],
)
def test_welcome_tells_a_refusal_from_a_session(lines: list[str], error: str | None) -> None:
    """Welcomed: no error, whatever follows; otherwise the last '! ' line before the end is the reason."""
    from socketlab.chat.client import ChatRefused, Welcome

    welcome = Welcome()
    for line in lines:
        welcome.see(line)
    if error is None:
        welcome.check(Ended())
        return
    with pytest.raises(ChatRefused) as refused:
        welcome.check(Ended())
    assert str(refused.value) == error


def test_input_rows_follow_the_terminal_width() -> None:
    """Where readline's cursor is and how many rows prompt and text fill, for the fallback without rl_clear_visible_line."""
    from socketlab.chat.client import input_rows

    assert input_rows(2, 5, 11, 40) == (0, 1)
    assert input_rows(2, 60, 60, 40) == (1, 2)  # 62 columns: two rows, the cursor on the second
    assert input_rows(2, 10, 60, 40) == (0, 2)
    assert input_rows(2, 38, 38, 40) == (1, 2)  # exactly full: readline has moved to the next row


def test_a_server_that_answers_a_websocket_handshake_with_a_line_and_closes_is_one_error() -> None:
    """ws:// at a plain TCP port whose server greets and closes: however the handshake and the close race
    inside websockets' client, the user sees one Error line and status 1, never a traceback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def greet_and_close() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"Welcome to Socket Server\n")

    thread = threading.Thread(target=greet_and_close, daemon=True)
    thread.start()
    try:
        for _ in range(8):
            result = run_cli("chat", "connect", f"ws://127.0.0.1:{port}/ws", input=b"")
            lines = result.stderr.decode().splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.stderr
            assert lines[0].startswith(f"Error: cannot open ws://127.0.0.1:{port}/ws: "), lines
    finally:
        stop.set()
        thread.join(TIMEOUT)
        listener.close()
