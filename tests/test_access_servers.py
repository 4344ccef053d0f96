"""--allow, --deny and --max-per-ip on real servers, with real source addresses from 127.0.0.0/8."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from socketlab.access import AccessRules
from socketlab.chat.server import ChatServer
from socketlab.tcp import WelcomeServer
from socketlab.udp import DatagramReceiver
from support import TIMEOUT, CliServer, Peer, has_ipv6, read_until_closed, run_cli, serving, wait_until

pytestmark = pytest.mark.timeout(60)


def connect_from(source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def test_tcp_server_lets_in_only_allowed_peers_and_logs_the_others() -> None:
    """--allow 127.0.0.2: that peer is welcomed; 127.0.0.3 is closed before anything is sent, and logged."""
    with CliServer("tcp-server", "--port", "0", "--allow", "127.0.0.2") as server:
        allowed = connect_from("127.0.0.2", server.port)
        assert allowed.recv(100) == b"Welcome to Socket Server\n"
        refused = connect_from("127.0.0.3", server.port)
        assert read_until_closed(refused) == b""
        server.out.wait_for(r"^Refused 127\.0\.0\.3:\d+: not allowed$")
        allowed.close()
        refused.close()


def test_deny_wins_over_allow_and_files_hold_rules(tmp_path) -> None:
    """A CIDR --allow with a --deny @FILE inside it: the denied address is refused, its neighbour is not."""
    rules = tmp_path / "deny.txt"
    rules.write_text("# no .3\n127.0.0.3   # the noisy one\n\n")
    access = AccessRules.parse(allow=["127.0.0.0/24"], deny=[f"@{rules}"])
    with serving(WelcomeServer(("127.0.0.1", 0), access=access)) as server:
        port = server.server_address[1]
        ok = connect_from("127.0.0.2", port)
        assert ok.recv(100) == b"Welcome to Socket Server\n"
        denied = connect_from("127.0.0.3", port)
        assert read_until_closed(denied) == b""
        ok.close()
        denied.close()


def test_chat_refuses_a_peer_over_max_per_ip_with_one_line() -> None:
    """--max-per-ip 2: the third connection from one address is told so and closed; another address
    still gets in, and a slot freed is usable again."""
    with serving(ChatServer(("127.0.0.1", 0), max_per_ip=2)) as server:
        port = server.server_address[1]
        first, second = connect_from("127.0.0.2", port), connect_from("127.0.0.2", port)
        for sock in (first, second):
            assert sock.recv(100).startswith(b"* welcome")
        third = connect_from("127.0.0.2", port)
        assert read_until_closed(third) == b"! too many connections from your address\n"
        other = connect_from("127.0.0.3", port)
        assert other.recv(100).startswith(b"* welcome")
        first.close()
        wait_until(lambda: server.acceptor.per_ip.count("127.0.0.2") == 1, what="the slot freed")
        again = connect_from("127.0.0.2", port)
        assert again.recv(100).startswith(b"* welcome")
        for sock in (second, third, other, again):
            sock.close()


def test_chat_rules_apply_to_the_web_listener_too() -> None:
    """--deny 127.0.0.1 on a chat with --web: a browser from there is closed without an HTTP answer."""
    access = AccessRules.parse(deny=["127.0.0.1"])
    with serving(ChatServer(("127.0.0.1", 0), web=("127.0.0.1", 0), access=access)) as server:
        web = connect_from("127.0.0.1", server.web_address[1])
        web.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(web) == b""
        allowed = connect_from("127.0.0.2", server.web_address[1])
        allowed.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(allowed).startswith(b"HTTP/1.1 200 OK\r\n")
        web.close()
        allowed.close()


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this machine")
def test_ipv4_mapped_peers_match_their_ipv4_rules() -> None:
    """On a dual-stack '::' listener an IPv4 peer is '::ffff:127.0.0.3', and --deny 127.0.0.3 still refuses it."""
    access = AccessRules.parse(deny=["127.0.0.3"])
    with serving(WelcomeServer(("::", 0), access=access)) as server:
        port = server.server_address[1]
        assert read_until_closed(connect_from("127.0.0.3", port)) == b""
        ok = connect_from("127.0.0.2", port)
        assert ok.recv(100) == b"Welcome to Socket Server\n"
        ok.close()
        v6 = connect_from("::1", port, host="::1")
        assert v6.recv(100) == b"Welcome to Socket Server\n"
        v6.close()


def test_udp_recv_drops_and_counts_datagrams_from_denied_senders() -> None:
    """--deny 127.0.0.3: its datagrams are dropped and counted as refused; the others are received."""
    access = AccessRules.parse(deny=["127.0.0.3"])
    receiver = DatagramReceiver(("127.0.0.1", 0), access=access, payload="quiet", max_datagrams=2)
    with receiver, serving_udp(receiver):
        port = receiver.server_address[1]
        for source, payload in (("127.0.0.3", b"no"), ("127.0.0.3", b"no"), ("127.0.0.2", b"yes"), ("127.0.0.4", b"yes")):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((source, 0))
                sock.sendto(payload, ("127.0.0.1", port))
        wait_until(lambda: receiver.totals.datagrams == 2, what="two datagrams")
    assert receiver.totals.refused == 2
    assert receiver.totals.describe() == "2 datagrams, 6 bytes from 2 senders, 2 refused"


class serving_udp:
    """Run a DatagramReceiver's serve_forever() on a thread; stop and join it at the end."""

    def __init__(self, receiver: DatagramReceiver) -> None:
        import threading

        self.receiver = receiver
        self.thread = threading.Thread(target=receiver.serve_forever, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            self.receiver.shutdown()
            self.thread.join(TIMEOUT)


@pytest.mark.parametrize("command", ["tcp-server", "udp-recv", "chat serve"])
def test_a_bad_rule_is_one_error_line_before_anything_listens(command: str) -> None:
    """An invalid --allow rule: one Error line naming it, exit 1, no traceback."""
    result = run_cli(*command.split(), "--port", "0", "--allow", "10.0.0.300")
    assert result.returncode == 1
    assert result.stderr.decode() == "Error: invalid --allow rule '10.0.0.300': not an address or CIDR block\n"
    assert result.stdout == b""


def test_a_flood_of_refusals_is_logged_a_few_lines_a_second() -> None:
    """200 refused connections leave at most a dozen log lines and one summary, not 200 lines."""
    with CliServer("tcp-server", "--port", "0", "--deny", "127.0.0.3") as server:
        for _ in range(200):
            connect_from("127.0.0.3", server.port).close()
        ok = connect_from("127.0.0.2", server.port)
        assert ok.recv(100) == b"Welcome to Socket Server\n"
        ok.close()
        server.out.wait_for(r"^Client disconnected 127\.0\.0\.2")
        deadline = time.monotonic() + 1.2  # the limiter lets one more line through each second
        while time.monotonic() < deadline:
            connect_from("127.0.0.3", server.port).close()
        server.out.wait_for(r"^\.\.\. and \d+ more refused connections not logged$")
    refusals = [line for line in server.out.seen if line.startswith("Refused 127.0.0.3")]
    assert 1 <= len(refusals) <= 15, len(refusals)


def test_sigterm_still_ends_a_server_whose_stdout_nobody_reads() -> None:
    """With stdout a pipe nobody reads and refusals logged, SIGTERM ends tcp-server within a second."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "tcp-server", "--port", "0", "--max-clients", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])
        holder = socket.create_connection(("127.0.0.1", port))
        for _ in range(3000):  # refusals, each logged until the pipe is full
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.recv(100)
        newcomer_ok = holder.recv(100) == b"Welcome to Socket Server\n"
        start = time.monotonic()
        proc.terminate()
        proc.wait(TIMEOUT)
        assert time.monotonic() - start < 1.0
        assert newcomer_ok
        assert proc.returncode == 0
        holder.close()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("refusal", ["per-ip", "full"])
def test_a_refusal_arrives_even_when_the_client_is_already_sending(refusal: str) -> None:
    """The server reads and drops what a refused client sends until it closes (a lingering close): closing
    with its input unread would reset the connection and destroy the refusal line before it is read."""
    options = {"max_per_ip": 1} if refusal == "per-ip" else {"max_clients": 1}
    expected = b"! too many connections from your address\n" if refusal == "per-ip" else b"! server full\n"
    with serving(ChatServer(("127.0.0.1", 0), **options)) as server:  # type: ignore[arg-type]
        first = Peer(server.server_address[1])
        assert first.line().startswith("* welcome user1")
        for _ in range(20):  # the race was lost more often than not; every try must win now
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
                sock.sendall(b"hello, anyone there?\n" * 200)
                received = b""
                while not received.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    assert chunk, f"closed after {received!r}"
                    received += chunk
                assert received == expected
                sock.sendall(b"more after the refusal\n")
                sock.settimeout(TIMEOUT)
                assert sock.recv(4096) == b""  # our side ended: EOF, not a reset
        first.close()
