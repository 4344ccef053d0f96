"""What a cluster costs each server: run socketlab servers on one Redis (or a Redis Cluster) and measure them.

    python docs/cluster_costs.py [--runs 3] [--servers 1,4] [--members 100] [--interval 0.1] [--duration 20]
                                 [--redis single|cluster] [--cases own,bystander,shared,joins] [--json out.json]
                                 [--build PATH]

Three cases, each run ``--runs`` times with a fresh Redis and fresh servers:

- ``own``: N servers (each of ``--servers``), each with its own ``--members``
  members in rooms of two of its own (``socketlab bench chat --scenario pairs``
  against each server, all at once, every member saying a line every
  ``--interval`` seconds). Reported per server: CPU seconds per second of the
  measured chat, lines per second, p99. A cluster in which each server pays
  only for its own rooms shows the same CPU per server at 1 and at N servers.
- ``bystander``: two servers; all the members on server B; server A has none.
  A's CPU over the same window as a share of B's: what a server pays for
  rooms it has no member in.
- ``joins``: ``--members`` members arrive at one server at once (as after a
  restart): Redis's CPU per arrival and its memory per member, the server's
  memory per member and the storm's length.
- ``shared``: one room spread over N servers (``bench chat --target A,B,...``,
  clients round-robin, 4 senders at ``--rate`` lines a second each): p99 and
  copies per second, against one server.

Every case reports Redis's commands and CPU seconds per line. CPU comes from
/proc (utime + stime) sampled around each bench run, so it includes the
members joining; the window is dominated by the chat when ``--duration`` is
long. ``--build PATH`` runs the servers from another socketlab source tree
(e.g. ``git worktree add /tmp/before COMMIT``), the benchmark unchanged, for
before-and-after figures. Nothing leaves 127.0.0.1. Run it with the Python that has socketlab
installed (``pip install -e '.[redis]'``); Redis Cluster needs redis-cli.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

TICKS = os.sysconf("SC_CLK_TCK")
#: Another socketlab source tree for the servers (--build), e.g. a git worktree of an earlier commit.
BUILD: Path | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not listening yet: nothing to wait on
    raise SystemExit(f"{what} is not listening on {port}")


class Redis:
    """A redis-server, or a Redis Cluster of three masters, persistence off, in a temporary folder."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def start(self) -> str:
        count = 3 if self.kind == "cluster" else 1
        for _ in range(count):
            port = free_port()
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(self.folder), "--logfile", str(self.folder / f"redis-{port}.log")]
            if self.kind == "cluster":
                args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.folder / f"nodes-{port}.conf")]
                args += ["--cluster-port", str(free_port())]  # not port + 10000, which may not exist
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_listening(port, self.procs[-1], "redis-server")
            self.ports.append(port)
        if self.kind == "cluster":
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"], capture_output=True, check=True, timeout=30
            )
            deadline = time.monotonic() + 30
            while not all("cluster_state:ok" in self.cli(port, "CLUSTER", "INFO") for port in self.ports):
                if time.monotonic() > deadline:
                    raise SystemExit("the Redis Cluster did not become ready")
                time.sleep(0.1)  # polling the cluster's own state: it has no event to wait on
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout

    def counters(self) -> tuple[int, float, int]:
        """(commands processed, CPU seconds, bytes of memory used) summed over the nodes."""
        commands, cpu, memory = 0, 0.0, 0
        for port in self.ports:
            fields = dict(line.split(":", 1) for line in self.cli(port, "INFO").splitlines() if ":" in line)
            commands += int(fields["total_commands_processed"])
            cpu += float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])
            memory += int(fields["used_memory"])
        return commands, cpu, memory

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def start_servers(count: int, url: str, members: int) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    cluster = f"costs-{os.getpid()}-{time.monotonic_ns()}"
    for _ in range(count):
        port = free_port()
        command = [sys.executable, "-m", "socketlab", "chat", "serve", "--port", str(port), "-q", "--room-size", "2"]
        command += ["--max-clients", str(max(1000, 2 * members)), "--max-rate", "0", "--redis", url, "--cluster", cluster]
        env = os.environ | ({"PYTHONPATH": str(BUILD)} if BUILD else {})  # and from its folder: `-m` looks there first
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=BUILD))
        wait_listening(port, procs[-1], "socketlab chat serve --redis")
        ports.append(port)
    return procs, ports


def bench_command(targets: list[int], args: list[str]) -> list[str]:
    target = ",".join(f"127.0.0.1:{port}" for port in targets)
    return [sys.executable, "-m", "socketlab", "bench", "chat", "--target", target, "--json", *args]


def run_benches(commands: list[list[str]], servers: list[subprocess.Popen], redis: Redis) -> dict:
    """Run *commands* at once; the servers' and Redis's CPU around them, and each bench's report."""
    before = [cpu_seconds(proc.pid) for proc in servers]
    redis_before = redis.counters()
    started = time.monotonic()
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for command in commands]
    outputs = [proc.communicate(timeout=900) for proc in running]
    wall = time.monotonic() - started
    after = [cpu_seconds(proc.pid) for proc in servers]
    redis_after = redis.counters()
    reports = []
    for proc, (out, err) in zip(running, outputs, strict=True):
        if proc.returncode:
            raise SystemExit(f"bench failed: {err.decode().strip().splitlines()[-1:]}")
        reports.append(json.loads(out))
    return {
        "wall_s": round(wall, 2),
        "server_cpu_s": [round(b - a, 3) for a, b in zip(before, after, strict=True)],
        "redis_commands": redis_after[0] - redis_before[0],
        "redis_cpu_s": round(redis_after[1] - redis_before[1], 3),
        "redis_memory_bytes": redis_after[2] - redis_before[2],
        "benches": reports,
    }


def lines_sent(report: dict) -> int:
    for key in ("lines_sent", "sent", "lines"):
        if key in report:
            return int(report[key])
    return 0


@contextlib.contextmanager
def cluster_of(count: int, options: argparse.Namespace) -> Iterator[tuple[Redis, list[subprocess.Popen], list[int]]]:
    """A fresh Redis and *count* servers on it, stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="socketlab-costs-"))
    redis = Redis(options.redis, folder)
    servers: list[subprocess.Popen] = []
    try:
        url = redis.start()
        servers, ports = start_servers(count, url, options.members)
        yield redis, servers, ports
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


def pairs_args(options: argparse.Namespace, server: subprocess.Popen) -> list[str]:
    pairs = ["--scenario", "pairs", "--clients", str(options.members), "--interval", str(options.interval)]
    return pairs + ["--duration", str(options.duration), "--server-pid", str(server.pid)]


def case_own(count: int, options: argparse.Namespace) -> dict:
    with cluster_of(count, options) as (redis, servers, ports):
        commands = [bench_command([port], pairs_args(options, proc)) for port, proc in zip(ports, servers, strict=True)]
        return run_benches(commands, servers, redis) | {"case": "own", "servers": count}


def case_bystander(options: argparse.Namespace) -> dict:
    with cluster_of(2, options) as (redis, servers, ports):
        result = run_benches([bench_command([ports[1]], pairs_args(options, servers[1]))], servers, redis)
    idle, busy = result["server_cpu_s"]
    return result | {"case": "bystander", "servers": 2, "bystander_share": round(idle / busy, 4) if busy else None}


def case_shared(count: int, options: argparse.Namespace) -> dict:
    with cluster_of(count, options) as (redis, servers, ports):
        fanout = ["--clients", str(options.members), "--senders", "4", "--rate", str(options.rate), "--messages", "1000"]
        fanout += ["--server-pid", ",".join(str(proc.pid) for proc in servers)]
        return run_benches([bench_command(ports, fanout)], servers, redis) | {"case": "shared", "servers": count}


def case_joins(options: argparse.Namespace) -> dict:
    """What arrivals cost Redis: --members members join one server at once (pairs), then a short chat."""
    with cluster_of(1, options) as (redis, servers, ports):
        pairs = ["--scenario", "pairs", "--clients", str(options.members), "--interval", "2", "--duration", "0.5"]
        result = run_benches([bench_command([ports[0]], pairs + ["--server-pid", str(servers[0].pid)])], servers, redis)
    members = options.members
    return result | {
        "case": "joins",
        "servers": 1,
        "redis_cpu_us_per_join": round(result["redis_cpu_s"] / members * 1e6, 1),
        "redis_bytes_per_member": round(result["redis_memory_bytes"] / members),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default="1,4", help="server counts for 'own' and 'shared'")
    parser.add_argument("--members", type=int, default=100, help="members per server ('own', 'bystander'); clients ('shared')")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between one member's lines")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=250.0, help="'shared': lines a second per sender")
    parser.add_argument("--redis", choices=["single", "cluster"], default="single")
    parser.add_argument("--cases", default="own,bystander,shared")
    parser.add_argument("--json", type=Path, help="write every run's raw figures here")
    parser.add_argument("--build", type=Path, help="run the servers from this socketlab source tree (the benchmark stays)")
    options = parser.parse_args()
    global BUILD
    BUILD = options.build
    counts = [int(n) for n in options.servers.split(",")]
    unknown = set(options.cases.split(",")) - {"own", "bystander", "shared", "joins"}
    if unknown:
        parser.error(f"no such case: {', '.join(sorted(unknown))} (choose from own, bystander, shared, joins)")
    raw: list[dict] = []
    for _ in range(options.runs):
        for case in options.cases.split(","):
            if case == "own":
                raw += [case_own(n, options) for n in counts]
            elif case == "bystander":
                raw.append(case_bystander(options))
            elif case == "shared":
                raw += [case_shared(n, options) for n in counts]
            elif case == "joins":
                raw.append(case_joins(options))
            print(json.dumps(raw[-1] | {"benches": len(raw[-1]["benches"])}), file=sys.stderr)
    if options.json:
        options.json.write_text(json.dumps(raw, indent=1))
    print(json.dumps(summarise(raw), indent=1))


def figures(bench: dict) -> dict:
    """One bench report's figures: lines (or copies) per second, p99, the server's CPU per second, losses."""
    if "pairs" in bench:
        run = bench["pairs"]
        rate, sent = run["lines"] / run["seconds"], run["lines"]
    else:
        run = bench["fanout"]
        rate, sent = run["copies_per_second"], run["senders"] * run["messages"]
    return {
        "per_s": rate,
        "sent": sent,
        "p99_ms": run["latency_ms"]["p99"],
        "server_cpu_per_s": run["cpu_seconds"]["server"] / run["seconds"],
        "lost": run["expected"] - run["delivered"],
        "wrong": run["duplicates"] + run["garbled"] + run["order_violations"],
    }


def summarise(raw: list[dict]) -> dict:
    """Medians over the runs, per case and server count (per server for 'own')."""
    groups: dict[str, list[dict]] = {}
    for run in raw:
        groups.setdefault(f"{run['case']}-{run['servers']}", []).append(run)
    summary = {}
    med = statistics.median
    for name, runs in groups.items():
        benches = [figures(bench) for run in runs for bench in run["benches"]]
        entry: dict[str, object] = {"runs": len(runs)}
        if runs[0]["case"] == "bystander":
            entry["bystander_share"] = med(run["bystander_share"] for run in runs)
        if runs[0]["case"] == "joins":
            entry["redis_cpu_us_per_join"] = med(run["redis_cpu_us_per_join"] for run in runs)
            entry["redis_bytes_per_member"] = med(run["redis_bytes_per_member"] for run in runs)
            entry["kib_per_member"] = med(bench["pairs"]["kib_per_member"] for run in runs for bench in run["benches"])
            entry["storm_seconds"] = med(bench["pairs"]["storm_seconds"] for run in runs for bench in run["benches"])
        for key in ("per_s", "p99_ms", "server_cpu_per_s"):
            entry[key] = round(med(bench[key] for bench in benches), 4)
        entry["lost"] = sum(bench["lost"] for bench in benches)
        entry["wrong"] = sum(bench["wrong"] for bench in benches)
        sent = [sum(figures(bench)["sent"] for bench in run["benches"]) for run in runs]
        # Redis's figures cover the whole run (joins and heartbeats too), divided by the lines sent in it.
        entry["redis_cpu_us_per_line"] = round(med(run["redis_cpu_s"] / n * 1e6 for run, n in zip(runs, sent, strict=True)), 2)
        entry["redis_commands_per_line"] = round(med(run["redis_commands"] / n for run, n in zip(runs, sent, strict=True)), 3)
        summary[name] = entry
    return summary


if __name__ == "__main__":
    main()
