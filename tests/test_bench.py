"""``socketlab bench``: runs at a small size and reports what really happened."""

from __future__ import annotations

import json
import socket
import subprocess
import os
import sys
import threading
import time
from typing import Any

import pytest

from socketlab.bench.chat import CountingLoop, spread
from socketlab.bench.placement import Placement, unpin_process
from socketlab.errors import BenchError
from socketlab.bench.tally import Receipts, Totals, make_message, percentile
from support import TIMEOUT, CliServer, run_cli


def test_make_message_is_exactly_size_bytes() -> None:
    """A tagged message fills its size exactly and ends with $ and a newline."""
    message = make_message(3, 17, 123456789, 64)
    assert len(message) == 64
    assert message.startswith(b"~3.17.123456789~") and message.endswith(b"x$\n")


def test_receipts_count_duplicates_order_and_garbled_byte_by_byte() -> None:
    """Prefixed lines fed one byte at a time: dups, reordering and merged lines are each counted."""
    totals = Totals()
    receipts = Receipts(totals, senders=2, messages=10, own=1)
    m = [make_message(0, seq, 1000, 48) for seq in range(6)]
    stream = b"<user1> " + m[0] + m[1] + m[1] + m[3] + m[2] + m[4][:-1] + m[5]
    stream += make_message(1, 0, 1000, 48)  # the receiver's own message: ignored
    for i in range(len(stream)):
        receipts.feed(stream[i : i + 1], 2000)
    receipts.analyse()
    assert (totals.delivered, totals.duplicates, totals.order_violations, totals.garbled) == (4, 1, 1, 1)
    assert totals.latencies_ns == [1000] * 4


def test_percentile_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99."""
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile([], 0.5) == 0


class BrokenRelay:
    """A chat relay with deliberate faults, per sender line index i (mod 10).

    3: dropped; 5: sent twice; 6 and 7: swapped; 8: sent without its newline,
    so it merges with 9 into one garbled line.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        index = 0
        held = None
        for line in reader:
            slot = index % 10
            index += 1
            if slot == 3:
                continue
            if slot == 6:
                held = line
                continue
            out = [line]
            if slot == 5:
                out = [line, line]
            elif slot == 7 and held is not None:
                out = [line, held]
            elif slot == 8:
                out = [line[:-1]]
            self._relay(sock, b"".join(out))

    def _relay(self, sender: socket.socket, data: bytes) -> None:
        with self.lock:
            for client in self.clients:
                if client is not sender:
                    try:
                        client.sendall(data)
                    except OSError:
                        pass

    def close(self) -> None:
        self.running = False
        self.listener.close()
        with self.lock:
            for client in self.clients:
                client.close()


def test_bench_chat_detects_a_broken_relay() -> None:
    """Against the faulty relay: loss, duplicates, order violations and garbled lines are all reported."""
    relay = BrokenRelay()
    try:
        result = run_cli(
            "bench",
            "chat",
            "--target",
            f"127.0.0.1:{relay.port}",
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "50",
            "--workers",
            "1",
            "--json",
            timeout=TIMEOUT * 3,
        )
    finally:
        relay.close()
    assert result.returncode == 0, result.stderr
    fanout = json.loads(result.stdout)["fanout"]
    receivers_per_sender = 3
    groups = 50 // 10
    assert fanout["expected"] == 2 * 50 * receivers_per_sender
    assert fanout["delivered"] == 2 * receivers_per_sender * (50 - 3 * groups)
    assert fanout["duplicates"] == 2 * receivers_per_sender * groups
    assert fanout["order_violations"] == 2 * receivers_per_sender * groups
    assert fanout["garbled"] == 2 * receivers_per_sender * groups
    assert fanout["delivered_share"] == pytest.approx(0.7)


def test_bench_chat_own_server_small_run_is_clean() -> None:
    """A small fanout against socketlab's own server: every copy, no faults, sane figures."""
    result = run_cli("bench", "chat", "--clients", "8", "--senders", "2", "--messages", "100", "--json", timeout=TIMEOUT * 3)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    fanout = report["fanout"]
    assert fanout["expected"] == fanout["delivered"] == 2 * 100 * 7
    assert fanout["duplicates"] == fanout["garbled"] == fanout["order_violations"] == 0
    assert (
        fanout["copies_per_second"] > 0
        and 0 < fanout["latency_ms"]["p50"] <= fanout["latency_ms"]["p99"] <= fanout["latency_ms"]["max"]
    )
    assert fanout["server_rss_kib"]["peak"] > 0
    positions = fanout["latency_by_position"]
    assert [row["position"] for row in positions] == [0, 1, 2, 3, 4, 5]  # six receivers, all probes
    assert all(0 < row["p50"] <= row["p99"] <= fanout["latency_ms"]["max"] for row in positions)


def test_bench_chat_text_report_and_slow_scenario() -> None:
    """The slow scenario prints both runs and the p99 ratio."""
    result = run_cli(
        "bench", "chat", "--scenario", "slow", "--clients", "5", "--senders", "1", "--messages", "50", timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.count("delivered   200 / 200 copies (100.00 %), 0 duplicates, 0 garbled lines, 0 order violations") == 2
    assert "with a never-reading client:" in text and "p99 with the slow client / without:" in text


def test_bench_chat_connections_scenario() -> None:
    """Idle connections are all accepted and served; memory per connection is reported."""
    result = run_cli("bench", "chat", "--scenario", "connections", "--clients", "50", "--json", timeout=TIMEOUT * 3)
    assert result.returncode == 0, result.stderr
    connections = json.loads(result.stdout)["connections"]
    assert connections["connected"] == connections["served"] == 50
    assert connections["kib_per_connection"] is not None


def test_bench_chat_unreachable_target_is_one_line() -> None:
    """A target nobody listens on: one error line, exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("bench", "chat", "--target", f"127.0.0.1:{port}", "--clients", "3", "--workers", "1")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        f"Error: only 0 of 3 clients could connect (cannot connect to 127.0.0.1:{port}: connection refused)"
    )


def bench_with_interpreter(interpreter: str, command: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``socketlab bench COMMAND`` with *interpreter* standing in for its child processes' Python."""
    script = (
        f"import sys; sys.executable = {interpreter!r}; from socketlab.cli import run; "
        f"sys.argv = ['socketlab', 'bench', *{command!r}]; run()"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=TIMEOUT)


COMMANDS = {
    "udp": ["udp", "--count", "10", "--no-peers"],
    "tcp": ["tcp", "--size", "1M", "--no-peers"],
    "chat": ["chat", "--clients", "3"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_bench_that_cannot_start_its_processes_is_one_line(name: str) -> None:
    """The interpreter for the benchmark's own processes is missing: one error line, exit 1."""
    result = bench_with_interpreter("/nonexistent/python3", COMMANDS[name])
    assert result.returncode == 1
    assert result.stderr.decode() == "Error: No such file or directory: /nonexistent/python3\n"


@pytest.mark.parametrize("name", COMMANDS)
def test_bench_whose_server_does_not_start_is_one_line(name: str) -> None:
    """A child that runs but never says it listens (here: echo) is killed and named."""
    result = bench_with_interpreter("/bin/echo", COMMANDS[name])
    server = {"udp": "udp-recv", "tcp": "tcp-server", "chat": "chat serve"}[name]
    assert result.returncode == 1
    assert result.stderr.decode() == f"Error: socketlab {server} did not start\n"


def test_bench_tcp_and_udp_small() -> None:
    """bench tcp counts every byte; bench udp reports sent and received."""
    tcp = run_cli("bench", "tcp", "--size", "4M", "--runs", "1", "--no-peers", "--json", timeout=TIMEOUT * 3)
    assert tcp.returncode == 0, tcp.stderr
    run = json.loads(tcp.stdout)["runs"][0]
    assert run["bytes"] == run["received"] == 4 * 1024 * 1024
    udp = run_cli("bench", "udp", "--count", "2000", "--no-peers", "--json", timeout=TIMEOUT * 3)
    assert udp.returncode == 0, udp.stderr
    run = json.loads(udp.stdout)["runs"][0]
    assert run["sent"] == 2000 and 0 < run["received"] <= 2000


def test_bench_chat_check_probes_counts_every_copy() -> None:
    """--check probes: bulk readers count lines, and every expected copy is still accounted for."""
    result = run_cli(
        "bench",
        "chat",
        "--clients",
        "20",
        "--senders",
        "2",
        "--messages",
        "200",
        "--check",
        "probes",
        "--json",
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    fanout = json.loads(result.stdout)["fanout"]
    assert fanout["expected"] == fanout["delivered"] == 2 * 200 * 19
    assert fanout["duplicates"] == fanout["garbled"] == fanout["order_violations"] == 0


def test_counting_loop_counts_messages_not_notices() -> None:
    """Bulk readers count messages (their closing "$"), however the stream is cut, and skip notices."""
    left, right = socket.socketpair()
    loop = CountingLoop([right], size=64)  # smaller than the stream: several reads
    try:
        stream = b"* user9 joined lobby\n" + make_message(0, 0, 1, 40) + b"<user3> " + make_message(0, 1, 1, 100)
        left.sendall(stream[:30])
        left.sendall(stream[30:])
        left.close()
        counted = 0
        deadline = time.monotonic() + 5
        while loop.open and time.monotonic() < deadline:
            counted += loop.poll(0.1)
        assert counted == 2 and loop.open == 0
    finally:
        loop.analyse()
        right.close()


def test_bench_chat_tiny_window_still_delivers_everything() -> None:
    """Senders held back by --window also read their own copies, and those count:
    the window reopens and every copy arrives (this once stalled the run)."""
    result = run_cli(
        "bench", "chat", "--clients", "6", "--senders", "3", "--messages", "300", "--window", "5", "--json", timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stderr
    fanout = json.loads(result.stdout)["fanout"]
    assert fanout["expected"] == fanout["delivered"] == 3 * 300 * 5
    assert fanout["duplicates"] == fanout["garbled"] == fanout["order_violations"] == 0
    assert fanout["seconds"] < 5


def test_probes_are_spread_over_the_join_order() -> None:
    """Probes sit in the middle of equal shares of the receivers, so the first and last to be served are timed alike."""
    assert spread(8, 96) == [6, 18, 30, 42, 54, 66, 78, 90]
    assert spread(2, 2) == [0, 1]
    assert spread(3, 10) == [1, 5, 8]


TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs 2 CPUs")


@TWO_CPUS
def test_bench_chat_split_placement_pins_server_and_load() -> None:
    """--placement split: the server's threads on the first CPU, the benchmark on the others, as the
    kernel reports them after pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    expected = Placement.named("split").describe()
    assert expected == {"server": cpus[:1], "load": cpus[1:]}
    result = run_cli(
        "bench",
        "chat",
        "--clients",
        "6",
        "--senders",
        "2",
        "--messages",
        "50",
        "--placement",
        "split",
        "--json",
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["placement"] == expected
    assert report["fanout"]["delivered"] == report["fanout"]["expected"] == 2 * 50 * 5


@TWO_CPUS
def test_bench_chat_split_placement_gives_a_target_its_cpus_back() -> None:
    """A --target server is on the first CPU during the run, every thread of it, and where it was before after."""
    cpus = set(os.sched_getaffinity(0))
    with CliServer("chat", "serve", "--port", "0", "--max-rate", "0") as server:
        pid = server.proc.pid
        result = run_cli(
            "bench",
            "chat",
            "--target",
            f"127.0.0.1:{server.port}",
            "--server-pid",
            str(pid),
            "--clients",
            "6",
            "--senders",
            "2",
            "--messages",
            "50",
            "--placement",
            "split",
            "--json",
            timeout=TIMEOUT * 3,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["placement"]["server"] == sorted(cpus)[:1]
        threads = os.listdir(f"/proc/{pid}/task")
        assert len(threads) > 1 and all(os.sched_getaffinity(int(tid)) == cpus for tid in threads)


@TWO_CPUS
def test_split_placement_that_fails_half_way_still_knows_what_to_undo() -> None:
    """The first process is pinned, the second does not exist: what was saved puts the first one back."""
    cpus = set(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        saved: dict[int, dict[int, set[int]]] = {}
        with pytest.raises(BenchError, match=f"no process {2**22 + 1} to place on CPU {min(cpus)}"):
            Placement.named("split").pin_server([child.pid, 2**22 + 1], saved=saved)
        assert os.sched_getaffinity(child.pid) == {min(cpus)}
        assert saved[child.pid][child.pid] == cpus and list(saved) == [child.pid, 2**22 + 1]
        for pid, before in saved.items():
            unpin_process(pid, before)  # the missing one has nothing to undo
        assert os.sched_getaffinity(child.pid) == cpus
    finally:
        child.kill()
        child.wait(TIMEOUT)


def test_bench_chat_split_placement_with_a_target_needs_its_pid() -> None:
    result = run_cli("bench", "chat", "--target", "127.0.0.1:9", "--placement", "split")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == "Error: --placement split with a --target needs the servers' --server-pid"


def test_bench_tcp_buffer_sweep_reports_each_size() -> None:
    """--buffer A,B measures every size, and the receiver still counts every byte."""
    result = run_cli(
        "bench", "tcp", "--size", "2M", "--runs", "1", "--no-peers", "--buffer", "4K,64K", "--json", timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(run["buffer"], run["received"]) for run in report["runs"]] == [(4096, 2 << 20), (65536, 2 << 20)]
    assert set(report["best_mb_per_second"]) == {"socketlab 4096", "socketlab 65536"}


@pytest.mark.parametrize(
    "value, message", [("0", "the size must be positive"), ("65M", "'65M' is more than the largest allowed, 64M")]
)
def test_bench_tcp_bad_buffer_is_one_line(value: str, message: str) -> None:
    result = run_cli("bench", "tcp", "--size", "1M", "--no-peers", "--buffer", value)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1].endswith(message)


@pytest.mark.parametrize(
    "transport", [["--tls"], ["--transport", "ws"], ["--transport", "ws", "--tls"]], ids=["tls", "ws", "wss"]
)
def test_bench_chat_over_tls_and_websocket_counts_every_copy(transport: list[str]) -> None:
    """Clients over TLS and/or WebSocket, inherited by the probe and bulk processes: every copy arrives and is counted."""
    result = run_cli(
        "bench", "chat", *transport, "--clients", "12", "--senders", "2", "--messages", "50", "--json", timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stderr
    fanout = json.loads(result.stdout)["fanout"]
    assert fanout["expected"] == fanout["delivered"] == 2 * 50 * 11  # 8 probes, 2 bulk readers, 2 senders
    assert fanout["duplicates"] == fanout["garbled"] == fanout["order_violations"] == 0
    assert [row["position"] for row in fanout["latency_by_position"]] == [0, 1, 3, 4, 5, 6, 8, 9]


@TWO_CPUS
def test_bench_chat_split_placement_of_a_missing_server_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        pid = 2**22 + 1  # above Linux's largest PID
        result = run_cli("bench", "chat", "--target", f"127.0.0.1:{port}", "--server-pid", str(pid), "--placement", "split")
    assert result.returncode == 1
    assert result.stderr.decode() == f"Error: no process {pid} to place on CPU {sorted(os.sched_getaffinity(0))[0]}\n"


def test_bench_errors_are_one_line_but_bugs_keep_their_traceback() -> None:
    """A BenchError becomes click's one-line error; any other exception (a bug) passes through unchanged."""
    import click

    from socketlab.cli.options import bench_errors

    with pytest.raises(click.ClickException, match="^the abusers did not report$"):
        with bench_errors():
            raise BenchError("the abusers did not report")
    with pytest.raises(RuntimeError, match="a bug"):
        with bench_errors():
            raise RuntimeError("a bug")


# -- Socket.IO clients (bench chat --transport socketio) ---------------------------------------


class ScriptedSocketIOServer:
    """A Socket.IO server's end of one connection, sans-IO: websockets' ServerProtocol, the Engine.IO
    open packet, ``40`` answered, then whatever the test sends. Hands bytes out one at a time."""

    def __init__(self) -> None:
        from websockets.server import ServerProtocol

        self.protocol = ServerProtocol()
        self.received: list[bytes] = []
        self.out = bytearray()

    def settimeout(self, timeout: float) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Request

        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self.protocol.send_response(self.protocol.accept(event))
                self.text(b'0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')
            elif event.opcode is Opcode.TEXT:
                self.received.append(event.data)
                if event.data == b"40":
                    self.text(b'40{"sid":"c1"}')
                    self.text(b'42["notice","welcome user1, you are in lobby (type /help)"]')

    def text(self, message: bytes, fin: bool = True) -> None:
        self.protocol.send_text(message, fin=fin)
        self.out += b"".join(self.protocol.data_to_send())

    def recv(self, size: int) -> bytes:
        data, self.out = bytes(self.out[:1]), self.out[1:]
        return data

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


def test_socketio_wire_connects_joins_and_turns_events_into_lines_byte_by_byte() -> None:
    """The handshake read a byte at a time; then chat message events become lines, other events are dropped,
    an event that cannot be read is a garbled line, pings are answered with pongs, lines go out one event each."""
    from websockets.frames import Opcode

    from socketlab.bench.tally import Receipts
    from socketlab.bench.wire import GARBLED, SocketIOWire

    server = ScriptedSocketIOServer()
    wire = SocketIOWire(server, ("127.0.0.1", 3000), room="r1")
    assert server.received == [b"40", b'42["room","r1"]']
    assert wire.take_pending() == b""  # the welcome notice is not a chat line
    server.text(b'42["chat message","<user2> ' + make_message(0, 0, 5, 40).rstrip(b"\n") + b'"]')
    server.text(b'42["notice","user3 joined r1"]')
    server.text(b"2")  # an Engine.IO ping
    server.text(b'421["chat message","asks for an ack"]')
    server.text(b'42["chat message",{"not":"a string"}]')
    server.text(b'42["chat me', fin=False)
    server.protocol.send_continuation(b'ssage","caf\\u00e9 in two parts"]', fin=True)
    server.out += b"".join(server.protocol.data_to_send())
    server.text(b'42/admin,["chat message","another namespace"]')
    server.text(b'42["chat message","not json')
    lines = b""
    for byte in server.take():
        lines += wire.decode(bytes([byte]))
    expected = [
        b"<user2> " + make_message(0, 0, 5, 40).rstrip(b"\n"),
        b"asks for an ack",
        GARBLED.encode(),
        "café in two parts".encode(),
        GARBLED.encode(),
    ]
    assert lines.split(b"\n")[:-1] == expected
    server.protocol.receive_data(wire.take_replies())
    assert [(frame.opcode, frame.data) for frame in server.protocol.events_received()] == [(Opcode.TEXT, b"3")]
    server.sendall(wire.encode(b"one\n" + b'two "quoted"\n'))
    assert server.received[2:] == [b'42["chat message","one"]', b'42["chat message","two \\"quoted\\""]']
    totals = Totals()
    receipts = Receipts(totals, senders=1, messages=1)
    receipts.feed(lines, 10)
    receipts.analyse()
    assert (totals.delivered, totals.garbled) == (1, 2)


def test_receipts_count_echoes_apart_from_copies() -> None:
    """A receiver's own messages coming back (Socket.IO's echo) are not copies: feed() leaves them out and
    analyse() counts them as echoes, on the fast path and on the line-by-line one alike."""
    totals = Totals()
    receipts = Receipts(totals, senders=12, messages=10, own=1)
    mine, theirs = make_message(1, 0, 1000, 48), make_message(11, 0, 1000, 48)
    assert receipts.feed(mine + theirs + make_message(1, 1, 1000, 48), 2000) == 1
    assert receipts.feed(b"~broken\n" + make_message(1, 2, 1000, 48) + make_message(11, 1, 1000, 48), 2000) == 1
    receipts.analyse()
    assert (totals.delivered, totals.echoes, totals.garbled) == (2, 3, 1)
    assert receipts.echoes_fed == 3


class RoomStandIn:
    """A Socket.IO client as confirm_joins() uses it, over a socketpair: what the first one sends
    reaches the clients in ``room`` at that moment (the server's relay, played by the test)."""

    has_pending = False

    def __init__(self) -> None:
        self.near, self.far = socket.socketpair()
        self.near.setblocking(False)
        self.room: list[RoomStandIn] = []
        self.sent = 0
        self.on_send: Any = None

    def frame(self, payload: bytes) -> bytes:
        return payload

    def take_replies(self) -> bytes:
        return b""

    def sendall(self, data: bytes) -> None:
        self.sent += 1
        for member in self.room:
            member.far.sendall(data)
        if self.on_send is not None:
            self.on_send(self.sent)

    def recv(self, size: int) -> bytes:
        return self.near.recv(size)

    def settimeout(self, timeout: float) -> None:
        pass

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return self.near.fileno()

    def close(self) -> None:
        self.near.close()
        self.far.close()


def test_confirm_joins_waits_for_late_joins_and_gives_up_on_the_rest() -> None:
    """A client whose join the server handled after the first check hears a later one; a client never in
    the room is closed and left out once the limit passes; the others come back in their order."""
    from socketlab.bench.joins import confirm_joins

    prober, early, late, never = clients = [RoomStandIn() for _ in range(4)]
    prober.room = [prober, early]
    prober.on_send = lambda sent: prober.room.append(late) if sent == 1 else None
    try:
        started = time.monotonic()
        assert confirm_joins(clients, limit=1.5) == [prober, early, late]
        assert 1.5 <= time.monotonic() - started < TIMEOUT
        assert prober.sent >= 2 and never.near.fileno() == -1
    finally:
        for client in clients:
            client.close()


def test_bench_chat_over_socketio_against_an_in_process_server(web_chat) -> None:
    """Socket.IO clients against a socketlab chat server with --web (in this process): they join the room,
    every copy arrives and is counted once; the senders' echoes are all there and counted apart."""
    server = web_chat(max_rate=0)
    result = run_cli(
        "bench",
        "chat",
        "--transport",
        "socketio",
        "--target",
        f"127.0.0.1:{server.web_address[1]}",
        "--clients",
        "6",
        "--senders",
        "2",
        "--messages",
        "100",
        "--json",
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transport"] == "socketio"
    fanout = report["fanout"]
    assert fanout["expected"] == fanout["delivered"] == 2 * 100 * 5
    assert fanout["duplicates"] == fanout["garbled"] == fanout["order_violations"] == 0
    assert fanout["echoes"] == 2 * 100
    assert [row["position"] for row in fanout["latency_by_position"]] == [0, 1, 2, 3]
    assert 0 < fanout["latency_ms"]["p50"] <= fanout["latency_ms"]["p99"]


def test_bench_chat_over_socketio_text_report_and_paced_run() -> None:
    """Its own server started with --web, paced: all copies, and the echo named in the report."""
    result = run_cli(
        "bench",
        "chat",
        "--transport",
        "socketio",
        "--clients",
        "5",
        "--senders",
        "2",
        "--messages",
        "40",
        "--rate",
        "40",
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "delivered   320 / 320 copies (100.00 %), 0 duplicates, 0 garbled lines, 0 order violations" in text
    assert "echoes      80 copies of senders' own lines came back to them (not counted as copies)" in text
    assert "cpu/copy    server " in text


def test_bench_chat_socketio_connections_scenario_reports_memory_per_member() -> None:
    """Idle Socket.IO members are all in the room and served; the server's memory per member is reported."""
    result = run_cli(
        "bench", "chat", "--transport", "socketio", "--scenario", "connections", "--clients", "30", "--json", timeout=TIMEOUT * 3
    )
    assert result.returncode == 0, result.stderr
    connections = json.loads(result.stdout)["connections"]
    assert connections["connected"] == connections["served"] == 30
    assert connections["kib_per_connection"] is not None


def test_bench_chat_transport_socketio_options() -> None:
    """--transport socketio is offered and explained, reaches the fanout as Socket.IO clients, and refuses flood."""
    from click.testing import CliRunner

    import socketlab.bench.chat
    from socketlab.cli import main

    help_text = CliRunner().invoke(main, ["bench", "chat", "--help"]).output
    assert "[tcp|ws|socketio]" in help_text and "echo" in help_text
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_fanout(address: Any, **options: Any) -> None:
        seen.update(options, address=address)
        raise Stop

    original = socketlab.bench.chat.run_fanout
    socketlab.bench.chat.run_fanout = fake_fanout  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(main, ["bench", "chat", "--transport", "socketio", "--target", "127.0.0.1:4000"])
    finally:
        socketlab.bench.chat.run_fanout = original  # type: ignore[assignment]
    assert isinstance(result.exception, Stop), result.output
    kind = seen["kind"]
    assert (kind.web, kind.socketio, kind.room, kind.tls) == (True, True, "bench", None)
    assert seen["address"].addresses == (("127.0.0.1", 4000),)
    result = CliRunner().invoke(main, ["bench", "chat", "--transport", "socketio", "--scenario", "flood"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: --scenario flood measures the line protocol's flood control: use --transport tcp or ws"
    )
    result = CliRunner().invoke(main, ["bench", "chat", "--transport", "engineio"])
    assert result.exit_code == 2 and "'engineio' is not one of 'tcp', 'ws', 'socketio'" in result.output


def test_bench_chat_over_socketio_answers_engineio_pings_during_the_run(web_chat) -> None:
    """A server that pings every half second and gives up 2 s after an unanswered ping: every client,
    the senders among them (their pongs go between whole frames of their own), keeps its session."""
    server = web_chat(max_rate=0, socketio_ping_interval=0.5, socketio_ping_timeout=2.0)
    result = run_cli(
        "bench",
        "chat",
        "--transport",
        "socketio",
        "--target",
        f"127.0.0.1:{server.web_address[1]}",
        "--clients",
        "5",
        "--senders",
        "2",
        "--messages",
        "75",
        "--rate",
        "25",
        "--json",
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    fanout = json.loads(result.stdout)["fanout"]
    assert fanout["seconds"] > 2.5  # several pings came and went
    assert fanout["expected"] == fanout["delivered"] == 2 * 75 * 4
    assert fanout["echoes"] == 2 * 75
