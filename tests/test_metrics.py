"""chat serve --metrics: Prometheus's text format, read from the server at scrape time; and the open-file limit.

The counters are checked for exact values after a known sequence of events: what each client
read is what the server says it delivered.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

from support import CLI, TIMEOUT, Browser, CliServer, LineReader, Peer, serving, wait_until

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed (pip install 'socketlab[metrics]')")

from socketlab import metrics  # noqa: E402
from socketlab.chat.server import ChatServer  # noqa: E402
from socketlab.serving import (  # noqa: E402
    DEFAULT_BACKLOG,
    MAX_LINGERING,
    SPARE_OPEN_FILES,
    listen,
    listen_backlog,
    somaxconn,
)

pytestmark = pytest.mark.timeout(60)

#: The line a metrics-serving chat server logs once it serves them.
METRICS_LINE = r"Metrics on (http://127\.0\.0\.1:\d+/metrics)$"


def scrape(url: str) -> dict[str, float]:
    """Every sample of a scrape of *url*, by its name and labels as Prometheus's text shows them."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def read_lines(client: Peer | Browser, last: str) -> list[str]:
    """What *client* receives up to and including *last*."""
    return client.until(last)


def size(lines: list[str]) -> int:
    """Bytes of *lines* with their line ends."""
    return sum(len(line.encode()) + 1 for line in lines)


@pytest.fixture
def metrics_chat() -> Iterator[Any]:
    """A running ChatServer factory serving metrics on a free port of 127.0.0.1."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> ChatServer:
            return stack.enter_context(serving(ChatServer(("127.0.0.1", 0), metrics=("127.0.0.1", 0), **options)))

        yield start


# -- in-process ----------------------------------------------------------------------------------------


def test_members_lines_copies_bytes_and_a_refusal_are_exact(metrics_chat) -> None:
    """2 TCP and 1 WebSocket member, N lines in their room: every figure is what the clients saw."""
    from websockets.sync.client import connect

    server = metrics_chat(web=("127.0.0.1", 0), max_clients=3)
    url = server.metrics.url
    port = server.server_address[1]
    before = scrape(url)
    assert before['socketlab_chat_members{transport="tcp"}'] == 0
    assert before["socketlab_chat_rooms"] == 0
    assert before["socketlab_chat_lines_delivered_total"] == 0
    assert before['socketlab_chat_refusals_total{reason="server_full"}'] == 0

    seen: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    a = Peer(port)
    seen["a"] += read_lines(a, "* welcome user1, you are in lobby (type /help)")
    b = Peer(port)
    seen["b"] += read_lines(b, "* welcome user2, you are in lobby (type /help)")
    seen["a"] += read_lines(a, "* user2 joined lobby")
    with connect(f"ws://127.0.0.1:{server.web_address[1]}/ws", open_timeout=TIMEOUT, close_timeout=1) as ws:
        c = Browser(ws)
        seen["c"] += read_lines(c, "* welcome user3, you are in lobby (type /help)")
        for name, peer in (("a", a), ("b", b)):
            seen[name] += read_lines(peer, "* user3 joined lobby")
        sent = ["/join room"]
        a.send(b"/join room\n")
        seen["a"] += read_lines(a, "* you are in room")
        seen["b"] += read_lines(b, "* user1 left lobby")
        seen["c"] += read_lines(c, "* user1 left lobby")
        b.send(b"/join room\n")
        seen["b"] += read_lines(b, "* you are in room")
        seen["a"] += read_lines(a, "* user2 joined room")
        seen["c"] += read_lines(c, "* user2 left lobby")
        c.send("/join room\n")
        seen["c"] += read_lines(c, "* you are in room")
        seen["a"] += read_lines(a, "* user3 joined room")
        seen["b"] += read_lines(b, "* user3 joined room")
        sent *= 3
        lines = [f"line {n} of the test" for n in range(25)]
        a.send("".join(f"{line}\n" for line in lines).encode())
        sent += lines
        for name, client in (("b", b), ("c", c)):
            seen[name] += read_lines(client, f"<user1> {lines[-1]}")
            assert seen[name][-len(lines) :] == [f"<user1> {line}" for line in lines]
        refused = Peer(port)
        assert refused.line() == "! server full"
        after = scrape(url)
        refused.close()

    copies = sum(len(lines_seen) for lines_seen in seen.values())
    assert copies == 15 + 2 * len(lines)  # welcomes, notices and replies (15), then each line to two members
    assert after['socketlab_chat_members{transport="tcp"}'] == 2
    assert after['socketlab_chat_members{transport="websocket"}'] == 1
    assert after['socketlab_chat_members{transport="socketio"}'] == 0
    assert after["socketlab_chat_rooms"] == 1  # the lobby is empty
    assert after["socketlab_chat_connections"] == 3
    assert after["socketlab_chat_max_clients"] == 3
    assert after["socketlab_chat_joins_total"] == 3
    assert after["socketlab_chat_departures_total"] == 0
    assert after["socketlab_chat_lines_received_total"] == len(sent)
    assert after["socketlab_chat_received_bytes_total"] == size(sent)
    assert after["socketlab_chat_lines_delivered_total"] == copies
    assert after["socketlab_chat_delivered_bytes_total"] == sum(size(lines_seen) for lines_seen in seen.values())
    assert after['socketlab_chat_refusals_total{reason="server_full"}'] == 1
    assert after['socketlab_chat_refusals_total{reason="not_allowed"}'] == 0
    assert after["socketlab_chat_dropped_too_slow_total"] == 0
    assert after["socketlab_chat_flood_held_clients"] == 0
    assert after["socketlab_chat_backlog_bytes"] == 0
    assert after["process_open_fds"] > 0
    a.close()
    b.close()


def test_a_client_that_never_reads_is_counted_as_dropped_too_slow(metrics_chat) -> None:
    """A member whose backlog overflows leaves as too slow: dropped_too_slow and departures count it."""
    server = metrics_chat(max_backlog=4096)
    port = server.server_address[1]
    sender = Peer(port)
    sender.line()
    slow = Peer(port, rcvbuf=4096)  # never reads
    assert sender.line() == "* user2 joined lobby"
    left = threading.Event()

    def wait_for_departure() -> None:
        sender.until("* user2 left lobby (too slow)")
        left.set()

    watcher = threading.Thread(target=wait_for_departure, daemon=True)
    watcher.start()
    chunk = (b"x" * 1000 + b"\n") * 64
    wait_until(lambda: left.is_set() or sender.send(chunk), what="the slow client to be dropped")
    watcher.join(TIMEOUT)
    after = scrape(server.metrics.url)
    assert after["socketlab_chat_dropped_too_slow_total"] == 1
    assert after["socketlab_chat_departures_total"] == 1
    assert after['socketlab_chat_members{transport="tcp"}'] == 1
    slow.close()
    sender.close()


def test_a_client_held_by_flood_control_is_counted(metrics_chat) -> None:
    """Over its --max-rate budget a client is held back: flood_held_clients says so while it is."""
    server = metrics_chat(max_rate=1.0)
    peer = Peer(server.server_address[1])
    peer.line()
    peer.send(b"".join(b"line %d\n" % n for n in range(10)))  # a burst of 2 is let through, 8 wait
    assert peer.line().startswith("! sending too fast: 8 lines held back")
    assert scrape(server.metrics.url)["socketlab_chat_flood_held_clients"] == 1
    peer.close()


def test_a_socketio_member_is_counted_by_its_transport(metrics_chat) -> None:
    """A Socket.IO client over WebSocket is a member of transport socketio."""
    socketio = pytest.importorskip("socketio")
    server = metrics_chat(web=("127.0.0.1", 0))
    client = socketio.SimpleClient(reconnection=False)
    client.connect(f"http://127.0.0.1:{server.web_address[1]}", transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        assert client.receive(timeout=TIMEOUT) == ["notice", "welcome user1, you are in lobby (type /help)"]
        after = scrape(server.metrics.url)
        assert after['socketlab_chat_members{transport="socketio"}'] == 1
        assert after['socketlab_chat_members{transport="tcp"}'] == 0
        assert after["socketlab_chat_connections"] == 1
    finally:
        client.disconnect()


def test_line_members_of_a_unix_socket_are_counted_as_unix(tmp_path) -> None:
    """A server on a UNIX socket names its line members' transport unix, not tcp."""
    import socket

    from socketlab.unix import UnixAddress

    path = str(tmp_path / "chat.sock")
    server = ChatServer(UnixAddress(path), metrics=("127.0.0.1", 0))
    with serving(server), socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT)
        client.connect(path)
        assert client.makefile("rb").readline() == b"* welcome user1, you are in lobby (type /help)\n"
        figures = scrape(server.metrics.url)
    assert figures['socketlab_chat_members{transport="unix"}'] == 1
    assert 'socketlab_chat_members{transport="tcp"}' not in figures


def test_every_refusal_reason_is_a_message_the_servers_log() -> None:
    """Refusals are counted by the message they log: each known one is still logged somewhere, verbatim."""
    from pathlib import Path

    import socketlab
    from socketlab.metrics import REFUSAL_REASONS

    sources = "".join(path.read_text() for path in Path(socketlab.__file__).parent.rglob("*.py"))
    for message in REFUSAL_REASONS:
        assert f'"{message}"' in sources, message


def test_the_metrics_port_closes_with_the_server() -> None:
    """shutdown() stops the metrics thread and closes its port."""
    server = ChatServer(("127.0.0.1", 0), metrics=("127.0.0.1", 0))
    with serving(server):
        url = server.metrics.url
        assert scrape(url)["socketlab_chat_joins_total"] == 0
    assert not any(thread.name == "metrics-http" for thread in threading.enumerate())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=TIMEOUT)


def test_the_cluster_figures_come_from_its_core_and_are_left_out_when_redis_is_away() -> None:
    """With --redis the cluster's figures are what its core reports; when Redis fails they are simply absent."""
    from socketlab.metrics import ChatFigures, _read_cluster

    class Core:  # what _read_cluster asks of a ClusterService
        class backend:
            errors = (OSError,)

        def __init__(self, figures: dict[str, float] | None) -> None:
            self._figures = figures

        def figures(self) -> dict[str, float]:
            if self._figures is None:
                raise ConnectionRefusedError("Redis is away")
            return self._figures

    figures = ChatFigures()
    _read_cluster(Core({"members": 7, "rooms": 3, "listening": 2, "unpublished": 5, "lag_seconds": 0.25}), figures)
    assert (figures.cluster_members, figures.rooms, figures.cluster_listening) == (7, 3, 2)
    assert (figures.cluster_unpublished, figures.cluster_lag_seconds) == (5, 0.25)
    families = {family.name: family.samples[0].value for family in metrics.families(figures) if family.samples}
    assert families["socketlab_chat_cluster_rooms_listened"] == 2
    assert families["socketlab_chat_cluster_lag_seconds"] == 0.25
    away = ChatFigures()
    _read_cluster(Core(None), away)
    assert (away.cluster_members, away.cluster_unpublished, away.cluster_lag_seconds) == (None, None, None)


def test_a_cluster_member_reports_lag_and_the_clusters_members(tmp_path) -> None:
    """A server in a cluster, caught up: nothing behind, nothing unpublished, its members and the cluster's."""
    pytest.importorskip("redis")
    from redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path) as redis_server, contextlib.ExitStack() as stack:
        name = f"test-{secrets.token_hex(4)}"
        servers = [
            stack.enter_context(
                serving(ChatServer(("127.0.0.1", 0), redis=redis_server.url, cluster=name, metrics=("127.0.0.1", 0)))
            )
            for _ in range(2)
        ]
        first = Peer(servers[0].server_address[1])
        assert first.line() == "* welcome user1, you are in lobby (type /help)"
        second = Peer(servers[1].server_address[1])
        assert second.line() == "* welcome user2, you are in lobby (type /help)"
        assert first.line() == "* user2 joined lobby"

        def both_members() -> dict[str, float] | None:
            figures = scrape(servers[0].metrics.url)
            return figures if figures["socketlab_chat_cluster_members"] == 2 else None

        figures = wait_until(both_members, what="the second member in the first server's copy of the chat")
        assert figures['socketlab_chat_members{transport="tcp"}'] == 1
        assert figures["socketlab_chat_cluster_rooms_listened"] == 1  # the lobby, where its member is
        assert figures["socketlab_chat_cluster_lag_seconds"] == 0
        assert figures["socketlab_chat_cluster_unpublished_events"] == 0
        assert figures["socketlab_chat_rooms"] == 1
        assert figures["socketlab_chat_joins_total"] == 1  # this server's own
        first.close()
        second.close()


# -- the command line ------------------------------------------------------------------------------


def test_chat_serve_metrics_in_a_subprocess() -> None:
    """chat serve --metrics 0: the URL is logged, scrapes are exact, SIGTERM stops both ports."""
    with CliServer("chat", "serve", "--port", "0", "--metrics", "0", "--max-clients", "2", "--max-rate", "0") as server:
        url = server.out.wait_for(METRICS_LINE).group(1)
        a = Peer(server.port)
        a.line()
        b = Peer(server.port)
        b.line()
        assert a.line() == "* user2 joined lobby"
        lines = [f"hello {n}" for n in range(10)]
        for line in lines:
            a.send(f"{line}\n".encode())
        b.until(f"<user1> {lines[-1]}")
        refused = Peer(server.port)
        assert refused.line() == "! server full"
        figures = scrape(url)
        assert figures['socketlab_chat_members{transport="tcp"}'] == 2
        assert figures["socketlab_chat_lines_received_total"] == 10
        assert figures["socketlab_chat_lines_delivered_total"] == 3 + 10  # two welcomes, one notice, the lines
        assert figures["socketlab_chat_delivered_bytes_total"] == size(
            ["* welcome user1, you are in lobby (type /help)", "* welcome user2, you are in lobby (type /help)"]
            + ["* user2 joined lobby"]
            + [f"<user1> {line}" for line in lines]
        )
        assert figures['socketlab_chat_refusals_total{reason="server_full"}'] == 1
        status, _seconds = server.stop()
        assert status == 0
        for peer in (a, b, refused):
            peer.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=TIMEOUT)


def test_a_metrics_port_in_use_is_one_error_line() -> None:
    """--metrics at an address taken: one Error line naming it, exit 1, nothing left listening."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "chat", "serve", "--port", "0", "--metrics", f"127.0.0.1:{port}"], capture_output=True, timeout=TIMEOUT
        )
    assert result.returncode == 1
    assert result.stderr.decode() == f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"


#: Runs the CLI as if prometheus_client were not installed (an import of it fails).
WITHOUT_PROMETHEUS = (
    "import sys; sys.modules['prometheus_client'] = None; "
    "sys.argv = ['socketlab', 'chat', 'serve', '--port', '0', '--metrics', '0']; "
    "from socketlab.cli import run; run()"
)


def test_metrics_without_the_extra_is_one_error_line() -> None:
    """Without prometheus_client, --metrics exits 1 with the install command, before anything listens."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_PROMETHEUS], capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "Error: --metrics needs the prometheus_client package: pip install 'socketlab[metrics]', "
        "or pip install '.[metrics]' from a checkout\n"
    )
    assert result.stdout == b""


# -- the open-file limit ---------------------------------------------------------------------------


def limited(soft: int, hard: int) -> Any:
    """A preexec_fn giving the child process these open-file limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_open_files(pid: int) -> int:
    """The soft open-file limit of process *pid* (Linux)."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files line")


def test_a_hard_limit_too_low_for_max_clients_is_one_error_line() -> None:
    """--max-clients beyond what the hard open-file limit allows: one line saying so and what to do."""
    result = subprocess.run(
        [*CLI, "chat", "serve", "--port", "0", "--max-clients", "1000"],
        capture_output=True,
        timeout=TIMEOUT,
        preexec_fn=limited(256, 512),
    )
    needed = 1000 + SPARE_OPEN_FILES
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"Error: --max-clients 1000 needs {needed} open files, but this process may open at most 512 "
        f"(its hard limit): lower --max-clients to {1000 - (needed - 512)} or less, or raise the hard limit "
        f"(ulimit -Hn {needed} as root, or LimitNOFILE={needed} in a systemd unit)\n"
    )
    assert result.stdout == b""


@contextlib.contextmanager
def serving_with_limits(soft: int, hard: int, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, LineReader]]:
    """``chat serve --port 0 ARGS`` started under these open-file limits: (process, port, its output) once it listens."""
    proc = subprocess.Popen(
        [*CLI, "chat", "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limited(soft, hard),
    )
    try:
        out = LineReader(proc.stdout)
        port = int(out.wait_for(r"listening on (?:.*):(\d+)$").group(1))
        yield proc, port, out
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def test_the_soft_limit_is_raised_to_what_max_clients_needs() -> None:
    """A soft limit of 256 under a hard one of 4096: chat serve raises it for its 1000 clients."""
    with serving_with_limits(256, 4096, "--max-clients", "1000") as (proc, _port, _out):
        assert soft_open_files(proc.pid) == 1000 + SPARE_OPEN_FILES + MAX_LINGERING


def _can_allow(files: int) -> bool:
    """Whether a child process may be given a hard open-file limit of *files* (CAP_SYS_RESOURCE, or already that high)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= files:
        return True
    try:
        subprocess.run([sys.executable, "-c", ""], timeout=TIMEOUT, preexec_fn=limited(1024, files), check=True)
    except subprocess.SubprocessError:
        return False
    return True


def listen_queue(port: int) -> int | None:
    """The listen backlog the kernel kept for the listener on *port* (ss's Send-Q), or None without ss."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    listing = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    return int(re.split(r"\s+", listing.strip())[2])


def test_a_listen_backlog_of_100000_is_taken_and_capped_by_the_kernel() -> None:
    """A server of 100,000 clients asks for a backlog of 100,000; the kernel keeps min(that, somaxconn)."""
    assert listen_backlog(100_000) == 100_000
    assert listen_backlog(10) == DEFAULT_BACKLOG
    with contextlib.closing(listen(("127.0.0.1", 0), listen_backlog(100_000))) as listener:
        kept = listen_queue(listener.getsockname()[1])
    if kept is not None:
        assert kept == min(100_000, somaxconn() or 100_000)


def test_max_clients_of_100000_fits_where_the_machine_allows() -> None:
    """--max-clients 100000 under a hard limit that allows it: the soft limit and the listen backlog follow."""
    needed = 100_000 + SPARE_OPEN_FILES + MAX_LINGERING
    if not _can_allow(needed):
        pytest.skip("this process may not give a child a hard open-file limit above 100,320")
    hard = max(needed, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if hard == resource.RLIM_INFINITY:
        hard = needed
    with serving_with_limits(1024, hard, "--max-clients", "100000") as (proc, port, out):
        assert soft_open_files(proc.pid) == needed
        cap = somaxconn()
        if cap is not None and cap < 100_000:
            out.wait_for(rf"The kernel queues at most {cap} connections before accept")
        kept = listen_queue(port)
        if kept is not None:
            assert kept == min(100_000, cap or 100_000)
