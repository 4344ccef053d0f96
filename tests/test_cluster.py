"""chat serve --redis: several servers, one chat, through a real redis-server and a real Redis Cluster.

Every test that needs Redis runs twice: on one redis-server, and on a Redis
Cluster of three masters (``redis_kind``). Each runs its own chat cluster (a
fresh --cluster name) on a Redis shared by the module; the tests that stop,
freeze or restart Redis get one of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from redis_cluster import REDIS_CLI, ClusterAsServer
from redis_server import REDIS_SERVER, RedisServer, free_port
from support import TIMEOUT, Browser, CliServer, Peer, run_cli, serving, wait_until

if REDIS_SERVER is None:
    pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)", allow_module_level=True)
pytest.importorskip("redis", reason="the redis package is not installed (pip install 'socketlab[redis]')")

from socketlab.chat import cluster  # noqa: E402  (imports redis only when a ClusterService is made)
from socketlab.chat.server import ChatServer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNAVAILABLE = "! chat backend unavailable, retrying"
BACK = "* chat backend is back"
NOT_DELIVERED = "! not delivered: 1 line (chat backend unavailable)"


def welcome(number: int) -> str:
    return f"* welcome user{number}, you are in lobby (type /help)"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def redis_kind(request: pytest.FixtureRequest) -> str:
    """One redis-server, or a Redis Cluster of three masters: every test that needs Redis runs on both."""
    if request.param == "redis-cluster" and REDIS_CLI is None:
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")
    return str(request.param)


def new_redis(kind: str, directory: Any, tcp: bool = False) -> Any:
    return ClusterAsServer(directory) if kind == "redis-cluster" else RedisServer(directory, tcp=tcp)


@pytest.fixture(scope="module")
def redis_server(redis_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the module: a redis-server on a Unix socket and a TCP port, or a Redis Cluster."""
    with new_redis(redis_kind, tmp_path_factory.mktemp("redis"), tcp=True) as server:
        yield server


@pytest.fixture
def own_redis(redis_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of the test's own (of the same kind), to stop, freeze or restart."""
    with new_redis(redis_kind, tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def cluster_name() -> str:
    return f"test-{secrets.token_hex(4)}"


class ClusterServer(CliServer):
    """``socketlab chat serve --redis URL --cluster NAME`` in a subprocess; killed if it never gets ready."""

    def __init__(self, *args: str) -> None:
        try:
            super().__init__(*args)
        except BaseException:
            if hasattr(self, "proc"):
                self.__exit__()
            raise


@pytest.fixture
def start(redis_server: RedisServer, cluster_name: str) -> Iterator[Any]:
    """Start chat servers of this test's cluster (on the module's Redis unless *url* says otherwise)."""
    with contextlib.ExitStack() as stack:

        def start(*options: str, url: str | None = None) -> ClusterServer:
            args = ("chat", "serve", "--port", "0", "--redis", url or redis_server.url, "--cluster", cluster_name)
            return stack.enter_context(ClusterServer(*args, *options))

        yield start


def arrive(port: int, number: int, lobby: list[Peer]) -> Peer:
    """A new client on the server at *port*: welcomed as user<number>; everyone in *lobby* hears it."""
    peer = Peer(port)
    assert peer.line() == welcome(number)
    for other in lobby:
        assert other.line() == f"* user{number} joined lobby"
    return peer


def hear(peers: list[Peer], line: str) -> None:
    """Each of *peers* receives *line* next."""
    for peer in peers:
        assert peer.line() == line


# -- one chat across servers -------------------------------------------------------------------------


def _clients_of(pid: int, port: int) -> int:
    """How many established connections to local *port* process *pid* holds (its sockets' inodes matched
    against the kernel's table)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    return len(inodes & held)


def test_servers_of_one_cluster_share_a_port_with_reuse_port(start) -> None:
    """--reuse-port: two servers of one cluster listen on the same port; the kernel spreads 20 clients over
    both (each server holds some of them), and they are one chat: a line said in a room reaches everyone."""
    port = free_port()
    servers = [start("--port", str(port), "--reuse-port") for _ in range(2)]
    assert [server.port for server in servers] == [port, port]
    for server in servers:  # the same address: the process tells them apart in the logs
        server.out.wait_for(rf"Joined cluster \S+ as 127\.0\.0\.1:{port} \(pid {server.proc.pid}\)$")
    peers = [Peer(port) for _ in range(20)]
    names = []
    for peer in peers:
        welcomed = peer.line()
        assert welcomed.startswith("* welcome user") and welcomed.endswith(", you are in lobby (type /help)")
        names.append(welcomed.split()[2].rstrip(","))
    held = [_clients_of(server.proc.pid, port) for server in servers]
    assert sum(held) == 20 and min(held) > 0  # all on one server: 2 in a million
    for peer in peers:
        peer.send(b"/join hall\n")
        peer.until("* you are in hall")
    peers[0].send(b"hello from one port\n")
    for peer in peers[1:]:
        peer.until(f"<{names[0]}> hello from one port")


def test_reuse_port_needs_redis() -> None:
    """Without a cluster, servers sharing a port would each be a chat of its own: refused, in one line."""
    result = run_cli("chat", "serve", "--port", "0", "--reuse-port")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == (
        "Error: --reuse-port needs --redis URL: servers sharing a port must be one cluster, or the chat is split among them."
    )
    with pytest.raises(ValueError, match="reuse_port needs redis"):
        ChatServer(("127.0.0.1", 0), reuse_port=True)


def test_servers_form_one_chat(start, redis_server: RedisServer) -> None:
    """Names, user<N>, /who, /rooms, /msg and room lines span two, then three servers (the third started late)."""
    a_server = start(url=redis_server.tcp_url)  # redis:// and unix:// reach the same cluster
    b_server = start()
    a = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a])
    a.send(b"/nick alice\n")
    hear([a, b], "* user1 is now known as alice")
    b.send(b"/nick alice\n/nick ALICE\n/nick bob\n")
    assert b.line() == "! nickname alice is taken"
    assert b.line() == "! nickname ALICE is taken"
    hear([a, b], "* user2 is now known as bob")

    c_server = start()  # a late joiner: it replays what happened before it started
    c = arrive(c_server.port, 3, [a, b])
    c.send(b"/who\n/nick bob\n")
    assert c.line() == "* in lobby: alice, bob, user3"
    assert c.line() == "! nickname bob is taken"

    a.send(b"/join chess\n")
    assert a.line() == "* you are in chess"
    hear([b, c], "* alice left lobby")
    b.send(b"/join chess\n")
    assert b.line() == "* you are in chess"
    assert a.line() == "* bob joined chess"
    assert c.line() == "* bob left lobby"
    c.send(b"/rooms\n/msg alice psst\n/msg BOB hi bob\n/msg zed hello?\n")
    assert c.line() == "* rooms: chess (2), lobby (1)"
    assert a.line() == "<user3> (private) psst"
    assert b.line() == "<user3> (private) hi bob"
    assert c.lines(3) == ["* to alice: psst", "* to bob: hi bob", "! no such user zed"]

    a.send(b"hello chess\n")
    assert b.line() == "<alice> hello chess"
    c.send(b"/who\n")
    assert c.line() == "* in lobby: user3"  # nothing from chess reached the lobby
    c.send(b"/join chess\n")
    assert c.line() == "* you are in chess"
    hear([a, b], "* user3 joined chess")
    b.send(b"/who\n")
    assert b.line() == "* in chess: alice, bob, user3"
    for sender, others in ((a, [b, c]), (b, [a, c]), (c, [a, b])):
        sender.send(b"one line for everyone\n")
        name = {a: "alice", b: "bob", c: "user3"}[sender]
        hear(others, f"<{name}> one line for everyone")

    d = arrive(b_server.port, 4, [])  # the lobby is empty now; numbering goes on across servers
    d.send(b"/rooms\n")
    assert d.line() == "* rooms: chess (3), lobby (1)"

    assert c_server.stop()[0] == 0
    hear([a, b], "* user3 left chess (server shutting down)")
    b.send(b"/who\n")
    assert b.line() == "* in chess: alice, bob"


def test_every_member_on_every_server_sees_one_order(start) -> None:
    """Two senders on two servers, 200 lines each: members on all three servers see the same interleaving."""
    servers = [start("--max-rate", "0") for _ in range(3)]
    ports = [servers[0].port, servers[1].port, servers[0].port, servers[1].port, servers[2].port]
    peers: list[Peer] = []
    for number, port in enumerate(ports, 1):
        peers.append(arrive(port, number, peers))
    for peer in peers:
        peer.send(b"/join order\n")
        peer.until("* you are in order")
    for peer in peers[:-1]:  # a barrier: each has heard the last join, so every join is behind it (one order)
        peer.until("* user5 joined order")
    for peer in peers:  # /who is the room's node's answer: it may list user5 before user5's join is heard
        peer.send(b"/who\n")
        peer.until("* in order: user1, user2, user3, user4, user5")
    sender1, sender2, *receivers = peers
    count = 200

    def send(peer: Peer, tag: str) -> None:
        lines = [f"{tag} line {i:03d}\n".encode() for i in range(count)]
        for at in range(0, count, 10):
            peer.send(b"".join(lines[at : at + 10]))

    threads = [threading.Thread(target=send, args=args) for args in ((sender1, "one"), (sender2, "two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    seen = [receiver.lines(2 * count) for receiver in receivers]
    assert seen[0] == seen[1] == seen[2]
    from_one = [line for line in seen[0] if line.startswith("<user1> ")]
    from_two = [line for line in seen[0] if line.startswith("<user2> ")]
    assert from_one == [f"<user1> one line {i:03d}" for i in range(count)]
    assert from_two == [f"<user2> two line {i:03d}" for i in range(count)]
    assert sender1.lines(count) == from_two
    assert sender2.lines(count) == from_one


def test_last_seat_goes_to_one_of_two_servers(start) -> None:
    """--room-size 2: two joins from two servers at once for the last seat; exactly one gets it, ten times over."""
    a_server, b_server, c_server = (start("--room-size", "2") for _ in range(3))
    holder = arrive(a_server.port, 1, [])
    rivals = {"user2": arrive(b_server.port, 2, [holder])}
    rivals["user3"] = arrive(c_server.port, 3, [holder, rivals["user2"]])
    holder.send(b"/join r0\n")
    assert holder.line() == "* you are in r0"
    hear(list(rivals.values()), "* user1 left lobby")
    for round_ in range(10):
        room = f"r{round_}"
        if round_:
            holder.send(f"/join {room}\n".encode())  # alone in the last room: nobody hears it
            assert holder.line() == f"* you are in {room}"
        for peer in rivals.values():  # back to back, to two servers
            peer.sock.sendall(f"/join {room}\n".encode())
        first = {name: peer.line() for name, peer in rivals.items()}
        won = [name for name, line in first.items() if line == f"* you are in {room}"]
        assert len(won) == 1, first
        winner, loser = won[0], ({"user2", "user3"} - set(won)).pop()
        # The refusal is the loser's own answer, the winner's departure the lobby's news: no order between them.
        assert sorted([first[loser], rivals[loser].line()]) == sorted([f"* {winner} left lobby", f"! room {room} is full (2/2)"])
        assert holder.line() == f"* {winner} joined {room}"
        rivals[winner].send(b"/leave\n")
        assert rivals[winner].line() == "* you are in lobby"
        assert holder.line() == f"* {winner} left {room}"
        assert rivals[loser].line() == f"* {winner} joined lobby"


def test_members_of_a_killed_server_leave_as_server_lost(start) -> None:
    """SIGKILL a server: the others announce its members '* NAME left ROOM (server lost)' within 5 s
    (silent for ALIVE_FOR after its last heartbeat, noticed at the next heartbeat of another)."""
    a_server, b_server, c_server = start(), start(), start()
    a1 = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a1])
    c = arrive(c_server.port, 3, [a1, b])
    a4 = arrive(a_server.port, 4, [a1, b, c])
    a4.send(b"/join chess\n")
    assert a4.line() == "* you are in chess"
    hear([a1, b, c], "* user4 left lobby")
    b.send(b"/join chess\n")
    assert b.line() == "* you are in chess"
    assert a4.line() == "* user2 joined chess"
    hear([a1, c], "* user2 left lobby")

    begin = time.monotonic()
    a_server.proc.kill()
    a_server.proc.wait(TIMEOUT)
    assert b.line() == "* user4 left chess (server lost)"
    assert c.line() == "* user1 left lobby (server lost)"
    assert time.monotonic() - begin < cluster.ALIVE_FOR + 2 * cluster.HEARTBEAT
    b.send(b"/who\n")
    assert b.line() == "* in chess: user2"
    c.send(b"/rooms\n")
    assert c.line() == "* rooms: chess (1), lobby (1)"
    for server in (b_server, c_server):
        assert server.stop()[0] == 0


# -- joining the cluster ------------------------------------------------------------------------------


def test_unreachable_redis_and_bad_urls_are_one_error_line(cluster_name: str) -> None:
    """No Redis at the URL: exit 1 and one Error line (password redacted); a non-redis URL is a usage error."""
    port = free_port()
    for url, shown in (
        (f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"),
        (f"redis://me:s3cret@127.0.0.1:{port}/0", f"redis://me:***@127.0.0.1:{port}/0"),
        ("unix:///nonexistent/redis.sock", "unix:///nonexistent/redis.sock"),
    ):
        result = run_cli("chat", "serve", "--port", "0", "--redis", url, "--cluster", cluster_name)
        errors = result.stderr.decode().splitlines()
        assert result.returncode == 1, errors
        assert len(errors) == 1 and errors[0].startswith(f"Error: cannot reach Redis at {shown}: "), errors
        assert "s3cret" not in errors[0]
    result = run_cli("chat", "serve", "--port", "0", "--redis", "http://127.0.0.1/", env={"SOCKETLAB_REDIS": ""})
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == (
        "Error: Invalid value for '--redis': 'http://127.0.0.1/' is not a URL like redis://HOST:PORT/DB"
    )
    result = run_cli("chat", "serve", "--port", "0", env={"SOCKETLAB_REDIS": "memcached://127.0.0.1/"})
    assert result.returncode == 2


def test_servers_that_disagree_on_room_size_refuse_to_join(start, redis_server: RedisServer, cluster_name: str) -> None:
    """A server given another --room-size than its cluster's exits 1 with one Error line naming the option."""
    first = start("--room-size", "2")
    joining = ("chat", "serve", "--port", "0", "--redis", redis_server.url, "--cluster", cluster_name)
    result = run_cli(*joining, "--room-size", "3")
    assert result.returncode == 1
    assert result.stderr.decode() == "Error: this cluster's servers use --room-size 2; this one was given 3\n"
    assert result.stdout == b""
    result = run_cli(*joining, "--room-size", "2", "--max-line", "100")
    assert result.returncode == 1
    assert result.stderr.decode() == "Error: this cluster's servers use --max-line 4096; this one was given 100\n"
    peer = arrive(first.port, 1, [])  # the cluster itself goes on
    peer.send(b"/rooms\n")
    assert peer.line() == "* rooms: lobby (1)"


# -- Redis lost while running --------------------------------------------------------------------------


def read_until(peer: Peer, wanted: str, timeout: float = 2 * TIMEOUT) -> list[str]:
    """Lines up to and including *wanted*, waiting up to *timeout* for each."""
    peer.sock.settimeout(timeout)
    try:
        return peer.until(wanted)
    finally:
        peer.sock.settimeout(TIMEOUT)


def test_frozen_redis_then_thawed_chat_goes_on(own_redis: RedisServer, start) -> None:
    """SIGSTOP Redis: members are told, lines meanwhile are refused or delivered later, never lost; SIGCONT: chat goes on."""
    a_server, b_server = start(url=own_redis.url), start(url=own_redis.url)
    a = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a])
    a.send(b"/nick alice\n")
    hear([a, b], "* user1 is now known as alice")
    b.send(b"/nick bob\n")
    hear([a, b], "* user2 is now known as bob")

    own_redis.pause()
    frozen_at = time.monotonic()
    try:
        a.send(b"in flight\n")  # on its way when Redis stopped answering
        newcomer = Peer(b_server.port)  # arrives on the other server while Redis is frozen
        assert read_until(a, UNAVAILABLE) == [UNAVAILABLE]
        assert read_until(b, UNAVAILABLE) == [UNAVAILABLE]
        b.send(b"while down\n")
        assert b.line() == NOT_DELIVERED
        # Not synchronisation: stay frozen past the servers' command timeout, so that the XADDs of the
        # line (on A) and of the arrival (on B) fail while Redis still holds them, to run them when thawed.
        # Whether they went through is unknown to the servers, which must neither lose nor double them.
        time.sleep(max(0.0, frozen_at + cluster.REDIS_TIMEOUT + 0.5 - time.monotonic()))
    finally:
        own_redis.resume()
    a_lines = read_until(a, BACK)
    assert read_until(b, BACK) == [BACK]
    assert read_until(newcomer, welcome(3)) == [UNAVAILABLE, BACK, welcome(3)]
    a.send(b"/who\nafter\n")
    a_lines += read_until(a, "* in lobby: alice, bob, user3")  # the newcomer joined once: no ghosts
    b_lines = read_until(b, "<alice> after")
    newcomer_lines = read_until(newcomer, "<alice> after")

    refused = a_lines.count(NOT_DELIVERED)
    delivered = b_lines.count("<alice> in flight")
    assert refused + delivered == 1, (a_lines, b_lines)  # told it failed, or delivered: never both, never neither
    assert [line for line in a_lines if line != "* user3 joined lobby"] == (
        [NOT_DELIVERED] * refused + [BACK, "* in lobby: alice, bob, user3"]
    )
    assert sorted(b_lines) == sorted(["* user3 joined lobby", "<alice> after"] + ["<alice> in flight"] * delivered)
    assert newcomer_lines in (["<alice> after"], ["<alice> in flight"] * delivered + ["<alice> after"])
    b.send(b"and on\n")
    hear([a, newcomer], "<bob> and on")
    for server in (a_server, b_server):
        assert server.proc.poll() is None
        assert server.stop()[0] == 0


def who(peer: Peer) -> str:
    """The reply to /who (notices before it skipped)."""
    peer.send(b"/who\n")
    while not (line := peer.line()).startswith("* in "):
        pass
    return line


def test_redis_restarted_empty_starts_a_new_epoch(own_redis: RedisServer, start, cluster_name: str) -> None:
    """Redis restarted empty: a new epoch, members re-announced (names, rooms), departures meanwhile kept, chat goes on."""
    epoch_key = f"socketlab:{{{cluster_name}}}:epoch"
    a_server, b_server = start(url=own_redis.url), start(url=own_redis.url)
    a = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a])
    a.send(b"/nick alice\n/join chess\n")
    hear([a, b], "* user1 is now known as alice")
    assert a.line() == "* you are in chess"
    assert b.line() == "* alice left lobby"
    b.send(b"/nick bob\n/join chess\n")
    assert b.lines(2) == ["* user2 is now known as bob", "* you are in chess"]
    assert a.line() == "* bob joined chess"
    leaver = arrive(b_server.port, 3, [])
    leaver.send(b"/join chess\n")
    assert leaver.line() == "* you are in chess"
    hear([a, b], "* user3 joined chess")
    client = own_redis.client()
    epoch = client.get(epoch_key)
    client.close()

    own_redis.stop()
    for peer in (a, b, leaver):
        assert read_until(peer, UNAVAILABLE) == [UNAVAILABLE]
    leaver.close()  # its departure waits for Redis
    a.send(b"while down\n")
    assert a.line() == NOT_DELIVERED
    own_redis.start()
    assert read_until(a, BACK) == [BACK]
    assert read_until(b, BACK) == [BACK]
    assert b.line() == "* user3 left chess (disconnected)"  # restored, then gone: b's own server publishes both in order
    # Each server re-announces its own members: the room's joining order is now the order of the re-announcements.
    both = ("* in chess: alice, bob", "* in chess: bob, alice")
    listing = wait_until(lambda: (line := who(a)) in both and line, what="both members re-announced")
    client = own_redis.client()
    assert client.get(epoch_key) not in (None, epoch)
    client.close()
    a.send(b"back again\n")
    assert b.line() == "<alice> back again"
    b.send(b"/who\n")
    assert b.line() == listing
    c = arrive(b_server.port, 4, [])  # numbering goes on from the members kept
    c.send(b"/rooms\n")
    assert c.line() == "* rooms: chess (2), lobby (1)"
    for server in (a_server, b_server):
        assert server.proc.poll() is None
        assert server.stop()[0] == 0


# -- transports, imports, late servers ------------------------------------------------------------------


def test_a_browser_and_a_terminal_on_two_servers_share_a_room(start) -> None:
    """A WebSocket member on one server and a TCP member on another: one room, lines both ways."""
    from websockets.sync.client import connect

    a_server = start("--web", "0")
    web_port = int(a_server.out.wait_for(r"Web chat on http://127\.0\.0\.1:(\d+)/$").group(1))
    b_server = start()
    with connect(f"ws://127.0.0.1:{web_port}/ws", open_timeout=TIMEOUT, close_timeout=1) as conn:
        browser = Browser(conn)
        assert browser.line() == welcome(1)
        terminal = Peer(b_server.port)
        assert terminal.line() == welcome(2)
        assert browser.line() == "* user2 joined lobby"
        browser.send("/nick web\n/join chess")
        assert browser.line() == "* user1 is now known as web"
        assert browser.line() == "* you are in chess"
        assert terminal.lines(2) == ["* user1 is now known as web", "* web left lobby"]
        terminal.send(b"/join chess\n")
        assert terminal.line() == "* you are in chess"
        assert browser.line() == "* user2 joined chess"
        browser.send("hello from a browser")
        assert terminal.line() == "<web> hello from a browser"
        terminal.send(b"hello from a terminal\n/who\n")
        assert browser.line() == "<user2> hello from a terminal"
        assert terminal.line() == "* in chess: web, user2"


def test_without_redis_the_redis_package_is_not_imported() -> None:
    """A server without --redis, and the CLI module, never import redis."""
    script = (
        "import sys; import socketlab.cli; from socketlab.chat.server import ChatServer\n"
        "server = ChatServer(('127.0.0.1', 0)); server.server_close()\n"
        "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if 'redis' in m)\n"
        "import socketlab.chat.cluster\n"
        "assert 'redis' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"ok\n", b"")


def test_a_server_listens_only_to_the_rooms_its_members_are_in(redis_server: RedisServer, cluster_name: str) -> None:
    """A room's channel has a listener on a server while a member of that server is in the room, and only then:
    the other rooms' events never reach it. Counted by Redis itself (PUBSUB SHARDNUMSUB)."""
    client = redis_server.client()
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        a_port, b_port = (
            stack.enter_context(
                serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=cluster_name))
            ).server_address[1]
            for _ in range(2)
        )

        def listeners(room: str) -> int:
            return redis_server.listeners(f"socketlab:{{{cluster_name}:r:{room}}}:channel")

        a = arrive(a_port, 1, [])
        b = arrive(b_port, 2, [a])
        assert listeners("lobby") == 2
        assert listeners("chess") == 0
        a.send(b"/join chess\n")
        assert a.line() == "* you are in chess"
        assert b.line() == "* user1 left lobby"
        assert listeners("chess") == 1
        wait_until(lambda: listeners("lobby") == 1, what="server A to stop listening to the lobby, its member gone")
        a.send(b"only the chess room hears this\n/join go\n")
        assert a.line() == "* you are in go"
        wait_until(lambda: listeners("chess") == 0, what="server A to stop listening to chess")
        b.send(b"/join go\n")
        assert b.line() == "* you are in go"
        assert a.line() == "* user2 joined go"
        assert listeners("go") == 2
        wait_until(lambda: listeners("lobby") == 0, what="server B to stop listening to the lobby")


def test_lines_missed_while_a_server_was_not_listening_come_from_the_rooms_log(
    redis_server: RedisServer, cluster_name: str
) -> None:
    """A server whose channels broke tells its members, listens again, and delivers what its rooms said
    meanwhile from their logs, in order, once; then live lines go on."""
    with contextlib.ExitStack() as stack:
        a_chat = stack.enter_context(serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=cluster_name)))
        b_port = stack.enter_context(
            serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=cluster_name))
        ).server_address[1]
        a = arrive(a_chat.server_address[1], 1, [])
        b = arrive(b_port, 2, [a])
        service = a_chat.service
        service._subscriber.reset()  # type: ignore[union-attr]  # server A hears nothing from now on
        b.send(b"".join(b"missed %d\n" % i for i in range(50)))
        b.send(b"/who\n")
        assert b.line() == "* in lobby: user1, user2"  # the lines went out before the answer
        service._unavailable(ConnectionError("a test broke the channels"))  # type: ignore[union-attr]
        assert a.line() == cluster.UNAVAILABLE.decode().strip()
        assert a.line() == cluster.BACK.decode().strip()
        assert a.lines(50) == [f"<user2> missed {i}" for i in range(50)]
        b.send(b"live again\n")
        assert a.line() == "<user2> live again"


def test_a_socketio_member_and_a_terminal_on_two_servers_share_a_room_of_two(start) -> None:
    """The tutorial's events across servers: `room` joins within the cluster-wide cap, `chat message`
    reaches the terminal on the other server and comes back to the sender; a third member is refused."""
    import socketio

    a_server = start("--web", "0", "--room-size", "2")
    web_port = int(a_server.out.wait_for(r"Web chat on http://127\.0\.0\.1:(\d+)/$").group(1))
    b_server = start("--room-size", "2")
    client = socketio.SimpleClient(reconnection=False)
    client.connect(f"http://127.0.0.1:{web_port}", transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        assert client.receive(timeout=TIMEOUT) == ["notice", welcome(1)[2:]]
        terminal = Peer(b_server.port)
        assert terminal.line() == welcome(2)
        terminal.send(b"/join chess\n")
        assert terminal.line() == "* you are in chess"
        assert client.call("room", "chess", timeout=TIMEOUT) == "ok"
        assert terminal.line() == "* user1 joined chess"
        client.emit("chat message", "across servers")
        assert terminal.line() == "<user1> across servers"
        terminal.send(b"and back\n")
        seen = []
        while len(seen) < 2 or seen[-1] != ["chat message", "<user2> and back"]:
            seen.append(client.receive(timeout=TIMEOUT))
        assert ["chat message", "<user1> across servers"] in seen
        third = Peer(a_server.port)
        assert third.line() == welcome(3)
        third.send(b"/join chess\n")
        assert third.line() == "! room chess is full (2/2)"
    finally:
        client.disconnect()


def test_the_settings_bind_running_servers_only(start, redis_server: RedisServer, cluster_name: str) -> None:
    """Once every server of a cluster has stopped, it may start again with other settings; a server
    logs the cluster it joined, by name and address, and the others name it by its address when it is lost."""
    first = start("--room-size", "2")
    assert first.out.wait_for(r"^Joined cluster (\S+) as (127\.0\.0\.1:\d+)$").groups() == (
        cluster_name,
        f"127.0.0.1:{first.port}",
    )
    second = start("--room-size", "2")
    member = arrive(second.port, 1, [])  # a member makes the first server watch the second
    watcher = arrive(first.port, 2, [member])
    second.proc.kill()  # no goodbye: the first names it when it finds it lost
    assert read_until(watcher, "* user1 left lobby (server lost)")[-1] == "* user1 left lobby (server lost)"
    second.proc.wait(TIMEOUT)
    first.out.wait_for(rf"^Server 127\.0\.0\.1:{second.port} of the cluster is lost; its members leave$", timeout=4 * TIMEOUT)
    assert first.stop()[0] == 0
    client = redis_server.client()
    config = f"socketlab:{{{cluster_name}}}:config"
    wait_until(lambda: not client.exists(config), what="the settings expired", timeout=3 * TIMEOUT)
    client.close()
    member.close()
    watcher.close()
    again = start("--room-size", "3")
    peer = Peer(again.port)
    assert peer.line().startswith("* welcome user")
    peer.send(b"/join chess\n")
    assert peer.line() == "* you are in chess"


def test_quit_in_a_cluster_says_bye_and_ends_cleanly_even_with_more_input_behind_it(start) -> None:
    """/quit takes the same path as on one server: the bye arrives, then our side ends and what the
    client still sends is read and dropped, so no reset destroys the bye; the room hears a plain departure."""
    server = start()
    other = arrive(server.port, 1, [])
    quitter = arrive(server.port, 2, [other])
    quitter.send(b"/quit\n" + b"after the quit, never relayed\n" * 5000)
    quitter.sock.settimeout(TIMEOUT)
    received = b""
    while chunk := quitter.sock.recv(65536):  # a reset raises ConnectionResetError here
        received += chunk
    assert received.decode().splitlines()[-1] == "* bye"
    assert other.line() == "* user2 left lobby"
    other.send(b"/who\n")
    assert other.line() == "* in lobby: user1"


# -- faults: a frozen server, a Redis Cluster master lost -------------------------------------------------


def both_in_chess(a: Peer, b: Peer) -> None:
    """user1 (*a*) then user2 (*b*), both in the lobby, move to chess."""
    a.send(b"/join chess\n")
    assert a.line() == "* you are in chess"
    assert b.line() == "* user1 left lobby"
    b.send(b"/join chess\n")
    assert b.line() == "* you are in chess"
    assert a.line() == "* user2 joined chess"


def test_a_server_frozen_past_the_deadline_is_counted_lost_and_closes_its_members_when_thawed(start) -> None:
    """SIGSTOP a server: the others announce its members lost (within 5 s of its last heartbeat and a
    claim); SIGCONT: it learns it was counted lost and closes them with a line, instead of leaving ghosts."""
    a_server, b_server = start(), start()
    a = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a])
    both_in_chess(a, b)

    a_server.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert read_until(b, "* user1 left chess (server lost)") == ["* user1 left chess (server lost)"]
        assert time.monotonic() - stopped < cluster.ALIVE_FOR + 2 * cluster.HEARTBEAT + 3
        b.send(b"/who\n")
        assert b.line() == "* in chess: user2"
    finally:
        a_server.proc.send_signal(signal.SIGCONT)
    assert read_until(a, "! lost contact with the chat cluster, disconnecting")[-1] == (
        "! lost contact with the chat cluster, disconnecting"
    )
    a.sock.settimeout(TIMEOUT)
    assert a.sock.recv(100) == b""  # closed by its server
    newcomer = arrive(a_server.port, 3, [])  # the thawed server serves again
    newcomer.send(b"/join chess\n")
    assert newcomer.line() == "* you are in chess"
    assert b.line() == "* user3 joined chess"
    b.send(b"/who\n")
    assert b.line() == "* in chess: user2, user3"  # no ghost of user1, nobody twice
    for server in (a_server, b_server):
        assert server.stop()[0] == 0


def test_a_redis_cluster_master_killed_and_restarted(own_redis: Any, redis_kind: str, start, cluster_name: str) -> None:
    """Kill the master that holds a room (and restart it empty): members are told, lines meanwhile are
    refused visibly, and when it is back every server puts its members back: the room and /who as before."""
    if redis_kind != "redis-cluster":
        pytest.skip("a Redis Cluster's own fault")
    a_server, b_server = start(url=own_redis.url), start(url=own_redis.url)
    a = arrive(a_server.port, 1, [])
    b = arrive(b_server.port, 2, [a])
    both_in_chess(a, b)
    node = own_redis.cluster.node_for(f"socketlab:{{{cluster_name}:r:chess}}:members")
    own_redis.cluster.kill_master(node)
    for peer in (a, b):
        assert read_until(peer, UNAVAILABLE)[-1] == UNAVAILABLE
    a.send(b"while the master is down\n")
    assert read_until(a, NOT_DELIVERED)[-1] == NOT_DELIVERED
    own_redis.cluster.restart_master(node)
    for peer in (a, b):
        assert read_until(peer, BACK)[-1] == BACK
    listing = wait_until(
        lambda: (line := who(a)) in ("* in chess: user1, user2", "* in chess: user2, user1") and line,
        what="both members put back in chess",
    )
    a.send(b"after the restart\n")
    assert read_until(b, "<user1> after the restart")[-1] == "<user1> after the restart"
    b.send(b"/who\n")
    assert read_until(b, listing)[-1] == listing
    c = Peer(b_server.port)
    assert c.line().startswith("* welcome user")
    for server in (a_server, b_server):
        assert server.proc.poll() is None
        assert server.stop()[0] == 0


def test_a_member_whose_steps_wait_for_redis_is_not_read_until_they_are_out(
    own_redis: Any, cluster_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis slow (frozen for a moment): a member with MEMBER_QUEUE steps waiting is no longer read (TCP
    holds the rest), the others still are; when Redis answers, every step goes out in order, nothing lost."""
    from socketlab.chat.cluster import service as cluster_service

    monkeypatch.setattr(cluster_service, "MEMBER_QUEUE", 4)
    with serving(ChatServer(("127.0.0.1", 0), redis=own_redis.url, cluster=cluster_name)) as chat:
        port = chat.server_address[1]
        busy = arrive(port, 1, [])
        other = arrive(port, 2, [busy])
        own_redis.pause()
        try:
            busy.send(b"/who\n" * 10 + b"after the queries\n")
            wait_until(lambda: len(chat.reader._core_held) == 1, what="the busy member held back")
            other.send(b"still read\n")
            others_member = next(m for m in chat.service.local_members() if m.number == 2)  # type: ignore[attr-defined]
            wait_until(lambda: others_member.waiting == 1, what="the other member's line read and queued")
        finally:
            own_redis.resume()
        assert busy.lines(11) == ["* in lobby: user1, user2"] * 10 + ["<user2> still read"]
        assert other.line() == "<user1> after the queries"
        wait_until(lambda: not chat.reader._core_held, what="the busy member read again")
        busy.send(b"and on\n")
        assert read_until(other, "<user1> and on")[-1] == "<user1> and on"


def test_a_member_far_ahead_of_the_publisher_is_refused_visibly(redis_server: RedisServer, cluster_name: str) -> None:
    """A member whose lines the reader cannot hold back (a Socket.IO member) with MEMBER_QUEUE_MAX steps
    waiting: its next lines are refused with a line saying so, not queued without bound."""
    from socketlab.chat.cluster import service as cluster_service

    with serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=cluster_name)) as chat:
        peer = arrive(chat.server_address[1], 1, [])
        member = chat.service.local_members()[0]  # type: ignore[attr-defined]
        member.waiting += cluster_service.MEMBER_QUEUE_MAX  # as if that many steps were waiting
        assert chat.service.receive(member, [b"one", b"two"]) is False
        assert peer.line() == "! not delivered: 2 lines (this server is behind)"
        member.waiting -= cluster_service.MEMBER_QUEUE_MAX
        peer.send(b"/who\n")
        assert peer.line() == "* in lobby: user1"


def test_nothing_a_member_sends_after_quit_is_taken(redis_server: RedisServer, cluster_name: str) -> None:
    """A /quit in one read and another in the next (as `chat connect` sends at the end of its input):
    one bye, as on one server, however soon the second arrives."""
    with serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=cluster_name)) as chat:
        other = arrive(chat.server_address[1], 1, [])
        quitter = arrive(chat.server_address[1], 2, [other])
        member = next(m for m in chat.service.local_members() if m.number == 2)  # type: ignore[attr-defined]
        chat.service.receive(member, [b"/quit"])
        chat.service.receive(member, [b"/quit", b"never relayed"])
        quitter.sock.settimeout(TIMEOUT)
        received = b""
        while chunk := quitter.sock.recv(65536):
            received += chunk
        assert received.decode().splitlines() == ["* bye"]
        assert other.line() == "* user2 left lobby"
