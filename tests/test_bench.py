"""``socketlab bench``: runs at a small size and reports what really happened."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import os
import sys
import threading
import time
from typing import Any

import pytest

from socketlab.bench.chat import CountingLoop, cpu_seconds, cpu_times, spread
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


@pytest.mark.timeout(30)
def test_cpu_times_split_a_process_s_own_work_from_the_kernel_s() -> None:
    """A process that only reads /dev/zero spends its time in the kernel; one that only computes, in itself."""
    reader = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\nfd = os.open('/dev/zero', os.O_RDONLY)\nbuf = bytearray(1 << 20)\n"
         "for _ in range(15000): os.readv(fd, [buf])\nprint('done', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    computer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsum(i * i for i in range(6000000))\nprint('done', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for proc in (reader, computer):
            assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        read, computed = cpu_times(reader.pid), cpu_times(computer.pid)
        assert read[1] > 0.15 and read[1] > 2 * read[0], read  # copying 15 GiB of zeros is the kernel's work
        assert computed[0] > 0.15 and computed[1] < computed[0] / 2, computed
        both = cpu_times([reader.pid, computer.pid])
        assert both == pytest.approx((read[0] + computed[0], read[1] + computed[1]), abs=0.05)
        assert cpu_seconds(computer.pid) == pytest.approx(sum(computed), abs=0.05)
    finally:
        for proc in (reader, computer):
            proc.kill()
            proc.wait()


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


@pytest.mark.parametrize("transport", ["tcp", "ws", "socketio"])
def test_bench_chat_churn_scenario_replaces_members_while_the_probes_talk(transport: str) -> None:
    """Members are replaced at the rate asked, none refused or dropped; every probe line arrives, timed."""
    result = run_cli(
        "bench", "chat", "--scenario", "churn", "--transport", transport, "--clients", "30", "--churn-rate", "20",
        "--duration", "1", "--json", timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    churn = json.loads(result.stdout)["churn"]
    assert churn["members"] == 30 and 15 <= churn["replaced"] <= 20, churn
    assert (churn["failed"], churn["dropped"], churn["probe_lost"]) == (0, 0, 0), churn
    assert churn["probe_lines"] >= 30 and 0 < churn["latency_ms"]["p50"] <= churn["latency_ms"]["max"], churn
    assert 0 < churn["server_rss_kib"]["start"] <= churn["server_rss_kib"]["peak"], churn
    assert churn["server_cpu_us_per_replacement"] > 0 and 0 < churn["server_cpu_share"] < 2, churn


def test_bench_chat_churn_text_report() -> None:
    result = run_cli(
        "bench", "chat", "--scenario", "churn", "--clients", "10", "--churn-rate", "10", "--duration", "0.5",
        timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "churn: 10 members, 10 replaced a second for 0.5 s", lines
    assert re.fullmatch(r"  replaced    [45] \(0 could not connect; 0 closed by the server\)", lines[1]), lines
    latency = r"latency p50 [\d.]+ ms   p99 [\d.]+ ms   max [\d.]+ ms"
    assert re.fullmatch(rf"  probes      2\d lines, 0 lost; {latency}", lines[2]), lines


def test_churn_report_warns_when_the_benchmark_fell_behind_the_rate() -> None:
    from socketlab.bench.churn import ChurnResult
    from socketlab.bench.report import churn_lines

    behind = ChurnResult(
        members=100, rate=150, seconds=60, replaced=1209, failed=0, dropped=0, dropped_before=0, probe_lines=3000, probe_lost=0
    )
    warning = "  warning     9,000 asked for: the benchmark could not connect new members that fast"
    assert warning in churn_lines(behind)
    kept_up = ChurnResult(
        members=100, rate=150, seconds=60, replaced=8997, failed=1, dropped=0, dropped_before=0, probe_lines=3000, probe_lost=0
    )
    assert not any(line.startswith("  warning") for line in churn_lines(kept_up))


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


def test_bench_chat_churn_against_an_unreachable_target_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("bench", "chat", "--scenario", "churn", "--target", f"127.0.0.1:{port}", "--clients", "3")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"Error: only 0 of 3 members could connect (cannot connect to 127.0.0.1:{port}: connection refused)\n"
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


def test_receipts_time_arrival_and_read_apart() -> None:
    """Given the kernel's arrival time and the read time, a copy's latency runs to the first and its read latency
    to the second; without a read time, only the latency is kept."""
    totals = Totals()
    receipts = Receipts(totals, senders=2, messages=4, own=0)
    receipts.feed(make_message(1, 0, 1_000, 48), 4_000, 9_000)
    receipts.feed(make_message(1, 1, 5_000, 48), 7_000)
    receipts.analyse()
    assert totals.latencies_ns == [3_000, 2_000] and totals.read_latencies_ns == [8_000]


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


def socketio_fanout(server: Any, *options: str) -> dict[str, Any]:
    """`bench chat --transport socketio --json` against *server*'s web port: its report, after exit 0."""
    target = f"127.0.0.1:{server.web_address[1]}"
    result = run_cli("bench", "chat", "--transport", "socketio", "--target", target, *options, "--json", timeout=TIMEOUT * 3)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bench_chat_over_socketio_against_an_in_process_server(web_chat) -> None:
    """Socket.IO clients against a socketlab chat server with --web (in this process): they join the room,
    every copy arrives and is counted once; the senders' echoes are all there and counted apart."""
    server = web_chat(max_rate=0)
    report = socketio_fanout(server, "--clients", "6", "--senders", "2", "--messages", "100")
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
    fanout = socketio_fanout(server, "--clients", "5", "--senders", "2", "--messages", "75", "--rate", "25")["fanout"]
    assert fanout["seconds"] > 2.5  # several pings came and went
    assert fanout["expected"] == fanout["delivered"] == 2 * 75 * 4
    assert fanout["echoes"] == 2 * 75


# -- the rooms workloads (bench chat --scenario pairs, mixed) ----------------------------------

#: Every rooms run: a line each half second for one second, so every member says exactly two lines.
ROOMS_PACE = ["--duration", "1", "--interval", "0.5"]
#: A rooms test's bound: a server start, the joins, the run and its tail, twice over on a busy machine.
ROOMS_TIMEOUT = 60


def test_room_plans_lay_out_pairs_and_the_documented_mix() -> None:
    """pairs: rooms of two; mixed: one big room of min(500, N/4), about half the rest in rooms of 20, then pairs."""
    from socketlab.bench.rooms import RoomPlan

    assert RoomPlan.named("pairs", 40).sizes == (2,) * 20
    assert RoomPlan.named("mixed", 40).sizes == (10, 20, 2, 2, 2, 2, 2)
    assert RoomPlan.named("mixed", 2000).layout() == {"500": 1, "20": 38, "2": 370}
    assert RoomPlan.named("mixed", 19000).layout() == {"500": 1, "20": 463, "2": 4620}
    assert RoomPlan.named("mixed", 9).sizes == (3, 2, 2, 2)  # the odd one out joins the big room
    for scenario, members in (("pairs", 19000), ("mixed", 19000), ("mixed", 41), ("mixed", 8)):
        assert RoomPlan.named(scenario, members).members == members
    with pytest.raises(ValueError, match="pairs need an even number of members"):
        RoomPlan.named("pairs", 41)
    with pytest.raises(ValueError, match="at least 8 members"):
        RoomPlan.named("mixed", 7)


def test_room_plan_spreads_start_times_evenly_and_counts_lines() -> None:
    """Start times are the N evenly spaced points of one interval, each once, a big room's spread over all of it;
    a member says a line every interval until the duration is over."""
    from socketlab.bench.rooms import RoomPlan

    plan = RoomPlan.named("mixed", 2000, interval=2.0, duration=3.0)
    offsets = [plan.offset_ns(member) for member in range(plan.members)]
    assert sorted(offsets) == [rank * 2_000_000_000 // 2000 for rank in range(2000)]
    big = sorted(offsets[: plan.sizes[0]])
    assert big[0] < 0.05e9 and big[-1] > 1.95e9
    assert max(b - a for a, b in zip(big, big[1:], strict=False)) < 0.05e9  # no gap of more than a few ranks
    assert {plan.lines_of(member) for member in range(plan.members) if offsets[member] < 1e9} == {2}
    assert {plan.lines_of(member) for member in range(plan.members) if offsets[member] >= 1e9} == {1}
    assert plan.max_lines == 2


def test_room_plan_split_keeps_rooms_whole_and_members_balanced() -> None:
    """Load processes get whole rooms, and about as many members each."""
    from socketlab.bench.rooms import RoomPlan

    plan = RoomPlan.named("mixed", 2000)
    shares = plan.split(3)
    assert sorted(room for share in shares for room in share) == list(range(len(plan.sizes)))
    loads = [sum(plan.sizes[room] for room in share) for share in shares]
    assert sum(loads) == 2000 and max(loads) - min(loads) <= 20


def test_process_count_follows_the_open_file_limit() -> None:
    """Processes: at least one per 5,000 members and per what the open-file limit allows; a room too big for any is an error."""
    from socketlab.bench.pairs import process_count
    from socketlab.bench.rooms import RoomPlan

    pairs = RoomPlan.named("pairs", 19000)
    assert process_count(pairs, 1, 20000) == 4
    assert process_count(pairs, 6, 20000) == 6
    assert process_count(pairs, 1, 1064) == 19
    with pytest.raises(BenchError, match="a room of 500 members does not fit in one load process"):
        process_count(RoomPlan.named("mixed", 2000), 1, 400)


def test_receipts_count_copies_from_another_room_as_strays() -> None:
    """A receiver told who its room-mates are counts a copy from anyone else as a stray, not a delivery."""
    totals = Totals()
    receipts = Receipts(totals, [7, 9], messages=4, own=8)
    receipts.feed(make_message(7, 0, 1, 48) + make_message(3, 0, 1, 48) + make_message(8, 0, 1, 48), 5)
    receipts.analyse()
    assert (totals.delivered, totals.strays, totals.echoes) == (1, 1, 1)


def test_line_speaker_is_welcomed_by_the_first_line_and_refused_by_an_error() -> None:
    """A TCP member: welcomed once the server's first line is whole, read a byte at a time; '! ...' first is a refusal."""
    from socketlab.bench.speakers import LineSpeaker

    speaker = LineSpeaker()
    for byte in b"* welcome user1, you are in lobby (type /help)\n":
        assert not speaker.welcomed
        speaker.receive(bytes([byte]))
    assert speaker.welcomed and speaker.refused is None
    speaker.join("bench-1")
    speaker.say(b"hello\n")
    assert speaker.take_output() == b"/join bench-1\nhello\n"
    refused = LineSpeaker()
    refused.receive(b"! server is full (1000 clients), try again later\n")
    assert refused.refused == "server is full (1000 clients), try again later" and not refused.welcomed
    assert speaker.join_refused is None
    speaker.receive(b"* user2 joined lobby\n! room bench-1 is full (2/2)\n")
    assert speaker.join_refused == "room bench-1 is full (2/2)"


def test_websocket_speaker_opens_without_blocking_byte_by_byte() -> None:
    """A WebSocket member: its upgrade request, the 101 and welcome read a byte at a time, lines as text messages;
    a refused upgrade is a refusal."""
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    from socketlab.bench.speakers import WebSocketSpeaker

    server = ServerProtocol()
    speaker = WebSocketSpeaker(("127.0.0.1", 3000))
    server.receive_data(speaker.opening())
    request = server.events_received()[0]
    assert isinstance(request, Request) and request.path == "/ws"
    server.send_response(server.accept(request))
    server.send_text(b"* welcome user1, you are in lobby (type /help)\n")
    lines = b""
    for byte in b"".join(server.data_to_send()):
        lines += speaker.receive(bytes([byte]))
    assert speaker.welcomed and lines == b"* welcome user1, you are in lobby (type /help)\n"
    speaker.join("bench-1")
    speaker.say(make_message(0, 0, 1, 48))
    server.receive_data(speaker.take_output())
    assert [event.data for event in server.events_received()] == [b"/join bench-1\n", make_message(0, 0, 1, 48)]
    refused = WebSocketSpeaker(("127.0.0.1", 3000))
    refused.opening()
    refused.receive(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert refused.refused == "HTTP 503" and not refused.welcomed


def test_socketio_speaker_connects_joins_and_answers_pings() -> None:
    """A Socket.IO member: '40' after the open packet, welcomed by the namespace's answer, the event 'room' to join,
    'chat message' to speak; pings get pongs; a refused namespace is a refusal."""
    from socketlab.bench.speakers import SocketIOSpeaker

    server = ScriptedSocketIOServer()
    speaker = SocketIOSpeaker(("127.0.0.1", 3000))
    server.sendall(speaker.opening())
    for _ in range(2):  # the upgrade's answer and the open packet, then the namespace's answer to 40
        for byte in server.take():
            speaker.receive(bytes([byte]))
            server.sendall(speaker.take_output())
    assert server.received == [b"40"] and speaker.welcomed
    speaker.join("bench-1")
    speaker.say(make_message(0, 0, 1, 48))
    server.text(b"2")
    server.text(b'42["chat message","' + make_message(1, 0, 1, 48).rstrip(b"\n") + b'"]')
    assert speaker.receive(server.take()) == make_message(1, 0, 1, 48)
    server.sendall(speaker.take_output())
    assert server.received[1:] == [
        b'42["room","bench-1"]',
        b'42["chat message","' + make_message(0, 0, 1, 48).rstrip(b"\n") + b'"]',
        b"3",
    ]
    assert speaker.join_refused is None
    server.text(b'42["result","failed"]')
    assert speaker.receive(server.take()) == b"" and speaker.join_refused is not None
    refused = SocketIOSpeaker(("127.0.0.1", 3000))
    server = ScriptedSocketIOServer()
    server.sendall(refused.opening())
    opening = server.take()
    server.protocol.send_text(b'44{"message":"not authorized"}')
    refused.receive(opening + b"".join(server.protocol.data_to_send()))
    assert refused.refused == '{"message":"not authorized"}' and not refused.welcomed


def rooms_report(result: subprocess.CompletedProcess[bytes], scenario: str) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scenario"] == scenario
    rooms: dict[str, Any] = report[scenario]
    return rooms


@pytest.mark.timeout(ROOMS_TIMEOUT)
@pytest.mark.parametrize("transport", ["tcp", "ws", "socketio"])
def test_bench_chat_pairs_against_its_own_server(transport: str) -> None:
    """20 members in pairs on socketlab's own server (--room-size 2): all joined, every copy once, in order, timed;
    the storm, the server's cost per line, per connection-second and per member, and the bench's busy share reported."""
    result = run_cli(
        "bench", "chat", "--scenario", "pairs", "--transport", transport, "--clients", "20", *ROOMS_PACE, "--json",
        timeout=ROOMS_TIMEOUT - 5,
    )  # fmt: skip
    pairs = rooms_report(result, "pairs")
    assert pairs["rooms"] == {"2": 10} and pairs["members"] == 20
    assert pairs["connected"] == pairs["welcomed"] == pairs["joined"] == 20
    assert pairs["refused"] == pairs["failed"] == pairs["dropped"] == 0
    assert pairs["lines"] == 40 and pairs["expected"] == pairs["delivered"] == 40
    assert pairs["duplicates"] == pairs["garbled"] == pairs["order_violations"] == pairs["strays"] == 0
    assert pairs["echoes"] == (40 if transport == "socketio" else 0)
    assert 0 < pairs["latency_ms"]["p50"] <= pairs["latency_ms"]["p99"] <= pairs["latency_ms"]["max"]
    # Latencies run to each copy's arrival in the kernel; read by the load process, no copy is earlier.
    assert pairs["latency_clock"] == "kernel"
    assert all(pairs["latency_ms"][name] <= pairs["latency_read_ms"][name] for name in ("p50", "p99", "max"))
    assert 0 < pairs["storm_seconds"] < 10 and 0 < pairs["welcome_ms"]["p50"] <= pairs["welcome_ms"]["max"]
    assert pairs["server_us_per_line"] is not None and pairs["server_us_per_connection_second"] is not None
    assert pairs["server_rss_kib"]["joined"] > 0 and pairs["kib_per_member"] is not None
    assert {"server", "server_system", "server_storm", "bench"} <= set(pairs["cpu_seconds"])
    assert 0 <= pairs["cpu_seconds"]["server_system"] <= pairs["cpu_seconds"]["server"]
    assert 0 <= pairs["server_system_us_per_line"] <= pairs["server_us_per_line"]
    assert 0 <= pairs["bench_busy"]["share"] <= 1 and pairs["bench_busy"]["load_cpus"] >= 1
    assert pairs["processes"] == 1 and pairs["source_addresses"] == 8 and pairs["warnings"] == []


@pytest.mark.timeout(ROOMS_TIMEOUT)
@pytest.mark.parametrize("transport", ["tcp", "ws", "socketio"])
def test_bench_chat_mixed_against_an_in_process_server(web_chat, transport: str) -> None:
    """The mixed rooms (10, 20 and five pairs), members in two load processes, ten connecting at a time, against a
    server in this process: every copy of every room arrives once, none crosses rooms."""
    server = web_chat(max_rate=0, room_size=20)
    port = server.server_address[1] if transport == "tcp" else server.web_address[1]
    result = run_cli(
        "bench", "chat", "--scenario", "mixed", "--transport", transport, "--target", f"127.0.0.1:{port}",
        "--clients", "40", "--workers", "2", "--connect-window", "10", *ROOMS_PACE, "--json",
        timeout=ROOMS_TIMEOUT - 5,
    )  # fmt: skip
    mixed = rooms_report(result, "mixed")
    assert mixed["rooms"] == {"20": 1, "10": 1, "2": 5} and mixed["processes"] == 2 and mixed["connect_window"] == 10
    assert mixed["joined"] == 40 and mixed["lines"] == 80
    assert mixed["expected"] == mixed["delivered"] == 2 * (20 * 19 + 10 * 9 + 5 * 2)
    assert mixed["duplicates"] == mixed["garbled"] == mixed["order_violations"] == mixed["strays"] == 0
    assert mixed["echoes"] == (80 if transport == "socketio" else 0)
    assert mixed["cpu_seconds"].keys() == {"bench"} and mixed["server_rss_kib"] == {}  # no --server-pid


@pytest.mark.timeout(ROOMS_TIMEOUT)
def test_bench_chat_rooms_fuller_than_the_server_allows(web_chat) -> None:
    """The mixed rooms against a server with a room size of 2: two members of each big room get in, the others
    are refused at once (not after the join limit), and the pairs run as usual."""
    server = web_chat(max_rate=0, room_size=2)
    started = time.monotonic()
    result = run_cli(
        "bench", "chat", "--scenario", "mixed", "--target", f"127.0.0.1:{server.server_address[1]}", "--clients", "40",
        *ROOMS_PACE, "--json", timeout=ROOMS_TIMEOUT - 5,
    )  # fmt: skip
    mixed = rooms_report(result, "mixed")
    assert (mixed["joined"], mixed["refused"], mixed["failed"]) == (14, 26, 0)
    assert mixed["first_problem"].startswith("refused a room: room bench-") and "is full (2/2)" in mixed["first_problem"]
    assert mixed["expected"] == mixed["delivered"] == 2 * 14
    assert mixed["warnings"] == [f"26 of 40 members did not join: {mixed['first_problem']}"]
    assert time.monotonic() - started < 10  # the join limit (10 s) never ran out


@pytest.mark.timeout(ROOMS_TIMEOUT)
def test_bench_chat_pairs_text_report() -> None:
    """The text report of a pairs run names the storm, every copy's latency, the server's costs and the bench's."""
    result = run_cli("bench", "chat", "--scenario", "pairs", "--clients", "4", *ROOMS_PACE, timeout=ROOMS_TIMEOUT - 5)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.startswith("pairs over tcp: 4 members in rooms (2 of 2), a line of 64 bytes every 0.5 s each for 1 s")
    assert "joined      4 of 4 (4 connected, 4 welcomed; 0 refused, 0 failed)" in text
    assert "delivered   8 / 8 copies of 8 lines (100.00 %), 0 duplicates, 0 garbled lines, 0 order violations" in text
    for part in ("storm       all connecting:", "(every copy, to its arrival at the member's socket)",
                 "us per connection-second", "KiB per member", "% of its"):  # fmt: skip
        assert part in text
    assert re.search(r"\n  read        p50 [\d.]+ ms   p99 [\d.]+ ms   max [\d.]+ ms \(to its read by the load process", text)


@pytest.mark.timeout(ROOMS_TIMEOUT)
def test_bench_chat_pairs_with_nobody_listening_is_one_line() -> None:
    """No server: one error line naming why no member joined, exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("bench", "chat", "--scenario", "pairs", "--target", f"127.0.0.1:{port}", "--clients", "4", *ROOMS_PACE)
    assert result.returncode == 1
    assert result.stderr.decode() == "Error: no member could join a room: cannot connect: Connection refused\n"


@pytest.mark.timeout(ROOMS_TIMEOUT)
def test_bench_chat_rooms_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """pairs and mixed are offered with their options, reach run_rooms as a plan, and refuse what they cannot do."""
    from click.testing import CliRunner

    import socketlab.bench.pairs
    from socketlab.cli import main

    help_text = CliRunner().invoke(main, ["bench", "chat", "--help"]).output
    for part in ("pairs|mixed", "--duration", "--interval", "--connect-window", "min(500, N/4)"):
        assert part in help_text
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_rooms(address: Any, plan: Any, **options: Any) -> None:
        seen.update(options, address=address, plan=plan)
        raise Stop

    monkeypatch.setattr(socketlab.bench.pairs, "run_rooms", fake_rooms)
    arguments = ["bench", "chat", "--scenario", "pairs", "--target", "127.0.0.1:4000", "--clients", "6", "--size", "48"]
    pace = ["--duration", "30", "--interval", "3", "--workers", "3", "--connect-window", "200"]
    result = CliRunner().invoke(main, [*arguments, *pace, "--transport", "ws"])
    assert isinstance(result.exception, Stop), result.output
    plan = seen["plan"]
    assert (plan.scenario, plan.sizes, plan.interval, plan.duration, plan.size) == ("pairs", (2, 2, 2), 3.0, 30.0, 48)
    assert plan.prefix.startswith("bench-") and len(plan.room_name(9999)) <= 32
    assert (seen["transport"], seen["processes"], seen["connect_window"]) == ("ws", 3, 200)
    assert seen["address"].addresses == (("127.0.0.1", 4000),)
    result = CliRunner().invoke(main, ["bench", "chat", "--scenario", "mixed", "--target", "127.0.0.1:4000", "--clients", "40"])
    assert isinstance(result.exception, Stop) and seen["plan"].sizes == (10, 20, 2, 2, 2, 2, 2)
    for extra, message in (
        (["--clients", "7"], "Error: pairs need an even number of members (not 7)"),
        (["--tls"], "Error: --scenario pairs does not speak TLS: leave out --tls"),
        (["--duration", "0.1"], "Error: Invalid value for '--duration': 0.1 is not in the range 0.5<=x<=3600."),
    ):
        result = CliRunner().invoke(main, [*arguments, *extra])
        assert result.exit_code == 2 and result.output.splitlines()[-1] == message


@pytest.mark.timeout(ROOMS_TIMEOUT)
def test_bench_chat_flood_over_ws_floods_and_abuses_the_line_port() -> None:
    """--scenario flood --transport ws: the fanout speaks WebSocket, while the flooder and the abusers, which
    speak TCP lines, go to the same server's line port (sent to the web port, they were an HTTP client that
    the server read and dropped, and the abuse's members never got a welcome: 'Error: timed out')."""
    result = run_cli(
        "bench", "chat", "--scenario", "flood", "--transport", "ws", "--clients", "4", "--messages", "10",
        "--abusers", "2", "--abuse-seconds", "1", "--json", timeout=ROOMS_TIMEOUT - 5,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transport"] == "ws" and report["fanout"]["delivered"] == report["fanout"]["expected"]
    assert 0 < report["flooded"]["flooder_bytes"] < 64 << 20  # held back by flood control, not read and dropped
    abuse = report["abuse"]
    assert abuse["round_trips"] > 0 and abuse["newcomers"] > 0 and abuse["newcomers_refused"] == 0


def test_bench_chat_flood_over_ws_needs_the_line_port() -> None:
    from click.testing import CliRunner

    from socketlab.cli import main

    result = CliRunner().invoke(main, ["bench", "chat", "--transport", "ws", "--scenario", "flood", "--target", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "Error: --scenario flood over ws with a --target: its abusers speak TCP lines" in result.output
