"""Run socketlab's chat benchmarks against socketlab and its peers, side by side.

    python docs/compare_peers.py [--runs 3] [--scenarios flat,paced,...] [--bench-args "--window 8000"]
                                 [--peers socketlab,node,ncat,floor,build] [--node-server PATH] [--build PATH]
                                 [--placement split|shared] [--json out.json]
    python docs/compare_peers.py --peers socketlab-socketio,node-socketio --scenarios paced,flat,connections
    python docs/compare_peers.py --peers socketlab,ws,socketlab-socketio,node-socketio --scenarios pairs \
                                 --bench-args "--clients 10000"
    python docs/compare_peers.py --reanalyse out.json

Starts each chat server on a free loopback port -- ``socketlab chat serve``,
the tutorial's Node server (needs ``node``) and ``ncat --broker --chat``
(Debian's ncat) -- runs ``socketlab bench chat`` against it for every
scenario, and prints the medians over the runs as JSON, with socketlab's
ratio to each peer and a 95 % bootstrap interval for it (an interval that
contains 1.0 means the runs cannot tell the two apart). Peers that are not
installed are skipped. Nothing leaves 127.0.0.1. Run it with the Python that has
socketlab installed: it runs `python -m socketlab` with that interpreter.

The peer ``floor`` is ``ncat --broker`` without ``--chat``: a relay that
only copies bytes from each client to the others, the thinnest server
there is, so its figures are the instrument's floor (the most the
benchmark can measure on this machine).

With ``--placement split`` (the default on a machine with 2 CPUs or more)
every server -- redis-server included -- runs on the first CPU and the
benchmark on the others, alike for every peer; each report tells how much
CPU the benchmark itself used (``bench_cpu_s``, and ``load_busy``, the
share of its CPUs' time it kept busy: near 1.0 the instrument, not the
server, set the pace).

The peer ``ws`` is socketlab's own server measured through WebSocket
clients (``chat serve --web``, ``bench chat --transport ws``), and ``tls``
the same server with TLS (a certificate made with openssl, ``bench chat
--tls``). ``redis1`` and ``redis3`` are one and three socketlab
servers joined through a redis-server started for the run (``chat serve
--redis``), measured as one chat (``bench chat --target A,B,C``); their
reports add Redis's commands and CPU seconds. The peer
``build`` is another socketlab source tree (``--build PATH``, e.g. a
``git worktree`` of an earlier commit) serving the chat, so two builds are
measured side by side by the same benchmark.

The peers ``socketlab-socketio`` and ``node-socketio`` are measured through
Socket.IO clients (``bench chat --transport socketio``: WebSocket only, every
client in one room, each line one ``chat message`` event; the senders' own
echoed lines are not counted as copies): socketlab's ``chat serve --web``
answering ``/socket.io/``, and the tutorial's Socket.IO rooms server
(``--socketio-server``, a folder with its ``index.js`` and pinned
``package-lock.json``; copied to a temporary folder and installed there with
``npm ci`` once per run of this script, then started as ``ROOM_SIZE=0
PORT=... node index.js``). Their ratio is reported as
``socketlab_socketio_over``; the scenario ``connections`` gives each one's
memory per idle member (``kib_per_connection``).

The scenario ``pairs`` is the tutorial's rooms at scale (``bench chat
--scenario pairs``: members in pairs, a room each, every member saying a
line every 2 s; 2,000 members unless ``--bench-args "--clients N"`` says
otherwise). It runs for the peers with rooms -- ``socketlab`` (TCP),
``ws``, ``socketlab-socketio``, ``node-socketio`` and ``build`` -- each
started with a room size of 2 (``--room-size 2``; the Node server with
``ROOM_SIZE=2``, the tutorial's) and room for every member; the others are
skipped. Its summary gives the members joined, every copy's p50 and p99,
the server's CPU per line and per connection-second, its memory per
member, the accept storm's length and the benchmark's busy share; the
Socket.IO pair's ratios compare p99, CPU per line and memory per member.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

from socketlab.bench.placement import Placement
from socketlab.bench.transfer import Certificate, free_port, wait_listening
from socketlab.errors import BenchError
from socketlab.serving import allow_open_files

HERE = pathlib.Path(__file__).resolve().parent
_WORKDIR = tempfile.TemporaryDirectory(prefix="compare-peers-")
#: The peer 'tls' serves with this certificate (made when first needed).
CERTIFICATE: Certificate
#: Where servers and the benchmark run (set from --placement).
PLACEMENT = Placement()
DEFAULT_NODE = HERE.parent.parent / "shared" / "peers" / "node" / "server_chat.js"
DEFAULT_SOCKETIO = HERE.parent.parent / "shared" / "peers" / "node" / "socketio"
#: The peers measured through Socket.IO clients (bench chat --transport socketio, at their web address).
SOCKETIO_PEERS = ("socketlab-socketio", "node-socketio")
#: Each socketlab build whose ratios are reported, and the peers it is compared with (None: all but the Socket.IO pair).
RIVALS: dict[str, tuple[str, ...] | None] = {"socketlab": None, "socketlab-socketio": ("node-socketio",)}
#: The tutorial's Socket.IO server, installed by prepare_socketio() (None until then).
SOCKETIO_DIR: pathlib.Path | None = None

SCENARIOS = {
    "flat": ["--messages", "20000"],
    "lines": ["--messages", "20000", "--batch", "1"],
    "checked": ["--messages", "20000", "--check", "all"],
    "paced": ["--rate", "250", "--messages", "2000"],
    "slow": ["--scenario", "slow", "--messages", "20000"],
    "connections": ["--scenario", "connections", "--clients", "2000"],
    "pairs": ["--scenario", "pairs", "--clients", "2000"],
}
#: Scenarios whose members join rooms, and the peers that have rooms to join (the others are skipped).
ROOM_SCENARIOS = ("pairs",)
ROOM_PEERS = ("socketlab", "ws", "socketlab-socketio", "node-socketio", "build")
#: Not a chat scenario: bulk TCP through ``bench tcp --buffer`` (socketlab and socat), a sweep of buffer sizes.
OTHER_SCENARIOS = ("bulk",)


def start(
    peer: str,
    port: int,
    node_server: pathlib.Path,
    build: pathlib.Path | None = None,
    web_port: int = 0,
    room_size: int = 0,
    clients: int = 0,
) -> subprocess.Popen:
    """Start *peer* on *port* (and *web_port*); with *room_size*, rooms are capped (the lobby excepted), and
    the server takes at least *clients* members."""
    cwd: pathlib.Path | None = build if peer == "build" else None  # python -m puts the working directory first on the path
    if peer in ("socketlab", "build", "ws", "tls", "socketlab-socketio"):
        max_clients = str(max(5000, clients + 100))
        command = [sys.executable, "-m", "socketlab", "chat", "serve", "--port", str(port), "-q", "--max-clients", max_clients]
        if peer != "build" or has_flood_control(build):  # flood control off, like the peers
            command += ["--max-rate", "0"]
        if room_size:
            command += ["--room-size", str(room_size)]
        if peer in ("ws", "socketlab-socketio"):
            command += ["--web", str(web_port)]
        if peer == "tls":
            command += ["--tls-cert", CERTIFICATE.cert, "--tls-key", CERTIFICATE.key]
        env = {**os.environ, "PYTHONPATH": str(build)} if peer == "build" else None
    elif peer == "node":
        command, env = ["node", str(node_server)], {**os.environ, "PORT": str(port)}
    elif peer == "node-socketio":  # one room for every client: no cap (the tutorial's is 2), unless rooms are capped
        assert SOCKETIO_DIR is not None, "prepare_socketio() first"
        env = {**os.environ, "PORT": str(port), "ROOM_SIZE": str(room_size)}
        command, cwd = ["node", "index.js"], SOCKETIO_DIR
    else:
        chat = ["--chat"] if peer == "ncat" else []  # the floor relays bytes only
        command, env = ["ncat", "--broker", *chat, "--max-conns", "5000", "-l", "127.0.0.1", str(port)], None
    log_path = pathlib.Path(_WORKDIR.name) / f"{peer}-{port}.log"  # its complaints, should it not start
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
    PLACEMENT.pin_server([proc.pid])
    try:
        wait_listening(port, proc, peer)
    except BenchError as error:
        said = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise BenchError(" / ".join([str(error), *said])) from None
    return proc


def prepare_socketio(source: pathlib.Path) -> pathlib.Path:
    """A copy of the Socket.IO server's folder *source*, its pinned dependencies installed (``npm ci``)."""
    target = pathlib.Path(_WORKDIR.name) / "node-socketio"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules"))
    for path in [target, *target.rglob("*")]:  # the source may be read-only
        path.chmod(path.stat().st_mode | 0o200)
    out = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel", "error"], cwd=target, capture_output=True, text=True, timeout=600
    )
    if out.returncode:
        lines = (out.stderr or out.stdout).strip().splitlines() or ["(no output)"]
        raise SystemExit(f"npm ci for the peer node-socketio failed: {lines[-1]}")
    return target


def has_flood_control(build: pathlib.Path | None) -> bool:
    """Whether the socketlab tree *build* has ``chat serve --max-rate`` (older builds have no flood control)."""
    assert build is not None, "the peer 'build' needs --build"
    return '"--max-rate"' in (build / "socketlab" / "cli.py").read_text()


def start_cluster(count: int) -> tuple[subprocess.Popen, list[subprocess.Popen], list[int]]:
    """A redis-server (persistence off) and *count* socketlab servers joined through it."""
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            _WORKDIR.name,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    PLACEMENT.pin_server([redis.pid])
    wait_listening(redis_port, redis, "redis-server")
    servers, ports = [], []
    for _ in range(count):
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "socketlab",
            "chat",
            "serve",
            "--port",
            str(port),
            "-q",
            "--max-clients",
            "5000",
            "--max-rate",
            "0",
            "--redis",
            f"redis://127.0.0.1:{redis_port}/0",
        ]
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        PLACEMENT.pin_server([servers[-1].pid])
        wait_listening(port, servers[-1], "socketlab chat serve --redis")
        ports.append(port)
    return redis, servers, [redis_port, *ports]


def redis_counters(port: int) -> tuple[int, float]:
    """(commands processed, CPU seconds used) of the redis-server on *port*."""
    info = subprocess.run(["redis-cli", "-p", str(port), "INFO"], capture_output=True, text=True, timeout=10).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(fields["total_commands_processed"]), float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def bench_cluster(count: int, scenario: str, extra: list[str]) -> dict:
    """The fanout against *count* servers sharing one Redis; the report gains Redis's commands and CPU."""
    redis, servers, (redis_port, *ports) = start_cluster(count)
    try:
        commands, cpu = redis_counters(redis_port)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "socketlab",
                "bench",
                "chat",
                "--target",
                ",".join(f"127.0.0.1:{p}" for p in ports),
                "--server-pid",
                ",".join(str(server.pid) for server in servers),
                "--json",
                *placement_args(),
                *SCENARIOS[scenario],
                *extra,
            ],
            capture_output=True,
            timeout=900,
        )
        if out.returncode:
            return {"error": out.stderr.decode().strip().splitlines()[-1]}
        report = json.loads(out.stdout)
        after_commands, after_cpu = redis_counters(redis_port)
        report["redis"] = {"commands": after_commands - commands, "cpu_seconds": round(after_cpu - cpu, 3)}
        return report
    finally:
        for proc in [*servers, redis]:
            proc.terminate()
            proc.wait(10)


def placement_args() -> list[str]:
    """The bench's own --placement: it pins itself, and the servers again (threads started since)."""
    return ["--placement", "split" if PLACEMENT.server else "shared"]


def clients_in(arguments: list[str]) -> int:
    """The last ``--clients N`` (or ``--clients=N``) in *arguments* (click takes the last one), 0 if none."""
    found = 0
    for index, argument in enumerate(arguments):
        if argument == "--clients" and index + 1 < len(arguments) and arguments[index + 1].isdigit():
            found = int(arguments[index + 1])
        elif argument.startswith("--clients=") and argument[10:].isdigit():
            found = int(argument[10:])
    return found


def bench(peer: str, scenario: str, node_server: pathlib.Path, extra: list[str], build: pathlib.Path | None = None) -> dict:
    if peer in ("redis1", "redis3"):
        return bench_cluster(int(peer[-1]), scenario, extra)
    port, web_port = free_port(), free_port()
    rooms = scenario in ROOM_SCENARIOS
    clients = clients_in([*SCENARIOS[scenario], *extra])
    proc = start(peer, port, node_server, build, web_port, room_size=2 if rooms else 0, clients=clients)
    if peer in ("ws", "socketlab-socketio"):
        wait_listening(web_port, proc, "socketlab chat serve --web")
        port = web_port
    if peer == "ws":
        extra = ["--transport", "ws", *extra]
    if peer in SOCKETIO_PEERS:
        extra = ["--transport", "socketio", *extra]
    if peer == "tls":
        extra = ["--tls", *extra]
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "socketlab",
                "bench",
                "chat",
                "--target",
                f"127.0.0.1:{port}",
                "--server-pid",
                str(proc.pid),
                "--json",
                *placement_args(),
                *SCENARIOS[scenario],
                *extra,
            ],
            capture_output=True,
            timeout=900,
        )
        if out.returncode:
            return {"error": out.stderr.decode().strip().splitlines()[-1]}
        return json.loads(out.stdout)
    finally:
        proc.terminate()
        proc.wait(10)


def bench_bulk(buffers: str, size: str) -> dict:
    """One run of ``socketlab bench tcp`` (socketlab and socat) at every buffer size in *buffers*."""
    out = subprocess.run(
        [sys.executable, "-m", "socketlab", "bench", "tcp", "--json", "--runs", "1", "--size", size, "--buffer", buffers],
        capture_output=True,
        timeout=900,
    )
    if out.returncode:
        return {"error": out.stderr.decode().strip().splitlines()[-1]}
    return json.loads(out.stdout)


def summarise_bulk(reports: list[dict]) -> dict:
    """Median MB/s per tool and buffer size, and socketlab over socat with its 95 % interval."""
    values: dict[int, dict[str, list[float]]] = {}
    for report in reports:
        for run in report.get("runs", []):
            values.setdefault(run["buffer"], {}).setdefault(run["tool"].split()[0], []).append(run["mb_per_second"])
    table = {}
    for buffer, tools in sorted(values.items()):
        row: dict = {tool: statistics.median(mbps) for tool, mbps in tools.items()}
        if "socketlab" in tools and "socat" in tools:
            row["socketlab_over_socat"] = ratio_interval(tools["socketlab"], tools["socat"])
        table[str(buffer)] = row
    return table


def summarise(scenario: str, reports: list[dict]) -> dict:
    ok = [r for r in reports if "error" not in r]
    if not ok:
        return {"error": reports[-1]["error"]}
    if scenario == "bulk":
        return summarise_bulk(ok)
    med = lambda values: statistics.median(values)
    if scenario in ROOM_SCENARIOS:
        rows = [r[scenario] for r in ok]
        return {
            "members": med([r["members"] for r in rows]),
            "joined": med([r["joined"] for r in rows]),
            "delivered_share": min(r["delivered_share"] for r in rows),
            "faults": sum(r["duplicates"] + r["garbled"] + r["order_violations"] + r["strays"] for r in rows),
            "p50_ms": med([r["latency_ms"]["p50"] for r in rows]),
            "p99_ms": med([r["latency_ms"]["p99"] for r in rows]),
            "max_ms": med([r["latency_ms"]["max"] for r in rows]),
            "server_us_per_line": med([r["server_us_per_line"] or 0 for r in rows]),
            "server_system_us_per_line": med([r.get("server_system_us_per_line") or 0 for r in rows]),
            "server_us_per_connection_second": med([r["server_us_per_connection_second"] or 0 for r in rows]),
            "kib_per_member": med([r["kib_per_member"] or 0 for r in rows]),
            "storm_s": med([r["storm_seconds"] for r in rows]),
            "load_busy": med([r["bench_busy"]["share"] for r in rows]),
            "busiest_load_process": med([r["bench_busy"]["busiest_process"] for r in rows]),
        }
    if scenario == "connections":
        rows = [r["connections"] for r in ok]
        return {
            "connected": med([r["connected"] for r in rows]),
            "served": med([r["served"] for r in rows]),
            "kib_per_connection": med([r["kib_per_connection"] or 0 for r in rows]),
        }
    key = "slow" if scenario == "slow" else "fanout"  # flat, capacity and paced report a fanout
    rows = [r[key] for r in ok]
    summary = {
        "copies_per_second": med([r["copies_per_second"] for r in rows]),
        "delivered_share": min(r["delivered_share"] for r in rows),
        "faults": sum(r["duplicates"] + r["garbled"] + r["order_violations"] for r in rows),
        "p50_ms": med([r["latency_ms"]["p50"] for r in rows]),
        "p99_ms": med([r["latency_ms"]["p99"] for r in rows]),
        "server_cpu_s": med([r["cpu_seconds"].get("server", 0) for r in rows]),
        "server_ns_per_copy": med([server_ns_per_copy(r) for r in rows]),
        "bench_cpu_s": med([bench_cpu(r) for r in rows]),
        "load_busy": med([round(bench_cpu(r) / max(r["seconds"], 1e-3) / load_cpus(ok[0]), 3) for r in rows]),
        **(
            {
                "redis_commands": med([r["redis"]["commands"] for r in ok]),
                "redis_cpu_s": med([r["redis"]["cpu_seconds"] for r in ok]),
            }
            if all("redis" in r for r in ok)
            else {}
        ),
        "rss_growth_kib": med([r["server_rss_kib"]["peak"] - r["server_rss_kib"]["before"] for r in rows]),
    }
    if scenario == "slow":
        summary["p99_base_ms"] = med([r["fanout"]["latency_ms"]["p99"] for r in ok])
        summary["p99_ratio"] = med([r["p99_ratio"] for r in ok])
    return summary


def server_ns_per_copy(fanout: dict) -> float:
    """The server's CPU time per delivered copy: what it costs whatever the instrument could read."""
    return round(fanout["cpu_seconds"].get("server", 0) / max(fanout["delivered"], 1) * 1e9, 1)


def bench_cpu(fanout: dict) -> float:
    """CPU seconds the benchmark's own processes used in a fanout."""
    return round(sum(seconds for name, seconds in fanout["cpu_seconds"].items() if name.startswith("bench")), 3)


def load_cpus(report: dict) -> int:
    """How many CPUs the benchmark ran on."""
    return len(report.get("placement", {}).get("load", [])) or os.cpu_count() or 1


def ratio_interval(ours: list[float], theirs: list[float], resamples: int = 4000) -> list[float]:
    """[low, ratio, high]: median(ours) / median(theirs) and its 95 % bootstrap interval.

    The seed is fixed, so the same runs always give the same interval.
    """
    rng = random.Random(0)
    med = statistics.median
    ratios = sorted(med(rng.choices(ours, k=len(ours))) / med(rng.choices(theirs, k=len(theirs))) for _ in range(resamples))
    low, high = ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]
    return [round(low, 3), round(med(ours) / med(theirs), 3), round(high, 3)]


def ratios(scenario: str, reports: dict[str, list[dict]], ours: str = "socketlab") -> dict:
    """*ours* / each of its rivals (RIVALS) in *reports*, for copies/s, p99 and server CPU per copy of a fanout scenario."""
    if scenario in ("connections", "slow") or ours not in reports:
        return {}
    rivals = RIVALS.get(ours)
    picks: dict[str, Callable[[dict], float]]
    if scenario in ROOM_SCENARIOS:
        key = scenario
        picks = {
            "p99_ms": lambda r: r["latency_ms"]["p99"],
            "server_us_per_line": lambda r: r["server_us_per_line"] or 0.0,
            "kib_per_member": lambda r: r["kib_per_member"] or 0.0,
        }
    else:
        key = "fanout"
        picks = {
            "copies_per_second": lambda r: r["copies_per_second"],
            "p99_ms": lambda r: r["latency_ms"]["p99"],
            "server_ns_per_copy": server_ns_per_copy,
        }

    def values(peer: str, metric: str) -> list[float]:
        return [picks[metric](r[key]) for r in reports[peer] if "error" not in r]

    metrics = tuple(picks)
    mine = {metric: values(ours, metric) for metric in metrics}
    result = {}
    for peer in reports:
        if peer == ours or (peer not in rivals if rivals is not None else peer in SOCKETIO_PEERS):
            continue
        theirs = {metric: values(peer, metric) for metric in metrics}
        if mine[metrics[0]] and theirs[metrics[0]]:
            result[peer] = {
                metric: ratio_interval(mine[metric], theirs[metric]) for metric in metrics if mine[metric] and theirs[metric]
            }
    return result


def analyse(raw: dict) -> dict:
    """Medians per scenario and peer, and socketlab's ratios to the peers."""
    table: dict = {}
    for scenario, reports in raw.items():
        table[scenario] = {peer: summarise(scenario, rows) for peer, rows in reports.items()}
        for ours in RIVALS:
            over = ratios(scenario, reports, ours)
            if over:
                table[scenario][f"{ours.replace('-', '_')}_over"] = over
    return table


def machine() -> dict:
    """This machine, as the figures must name it: CPUs, model, per-core caches, hypervisor."""
    facts: dict = {"cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for line in lscpu.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("Model name", "Hypervisor vendor"):
            facts[name.strip()] = " ".join(value.split())
    caches = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(caches.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            facts[f"L{level}{'d' if kind == 'Data' else ''} per core" if level != "3" else "L3"] = size
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--node-server", type=pathlib.Path, default=DEFAULT_NODE)
    parser.add_argument(
        "--socketio-server",
        type=pathlib.Path,
        default=DEFAULT_SOCKETIO,
        help="the peer node-socketio: a folder with index.js and a package-lock.json (installed with npm ci into a copy)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"of {', '.join([*SCENARIOS, *OTHER_SCENARIOS])}")
    parser.add_argument("--json", type=pathlib.Path, help="also write every raw report here")
    parser.add_argument("--bench-args", default="", help='more options for every run, e.g. "--window 8000"')
    parser.add_argument("--reanalyse", type=pathlib.Path, help="only summarise the raw reports of an earlier --json")
    parser.add_argument(
        "--peers",
        default="socketlab,node,ncat,floor",
        help="which servers to run (those installed), of socketlab, node, ncat, floor, ws, tls, redis1, redis3, build, "
        "socketlab-socketio, node-socketio",
    )
    parser.add_argument("--build", type=pathlib.Path, help="the peer 'build': another socketlab source tree")
    parser.add_argument("--bulk-buffers", default="16K,64K,256K,1M,4M", help="the scenario 'bulk': buffer sizes swept")
    parser.add_argument("--bulk-size", default="1G", help="the scenario 'bulk': bytes per stream")
    parser.add_argument(
        "--placement",
        choices=["split", "shared"],
        default="split" if len(os.sched_getaffinity(0)) > 1 else "shared",
        help="split: servers on the first CPU, the benchmark on the others (default with 2 CPUs or more)",
    )
    args = parser.parse_args()
    if args.reanalyse:
        print(json.dumps(analyse(json.loads(args.reanalyse.read_text())["raw"]), indent=1))
        return
    installed = {
        "socketlab": True,
        "ws": True,
        "tls": bool(shutil.which("openssl")),
        "redis1": bool(shutil.which("redis-server")),
        "redis3": bool(shutil.which("redis-server")),
        "node": bool(shutil.which("node")) and args.node_server.exists(),
        "ncat": bool(shutil.which("ncat")),
        "floor": bool(shutil.which("ncat")),
        "build": bool(args.build and (args.build / "socketlab" / "__init__.py").exists()),
        "socketlab-socketio": True,
        "node-socketio": bool(shutil.which("node") and shutil.which("npm")) and (args.socketio_server / "index.js").exists(),
    }
    peers = [peer for peer in args.peers.split(",") if installed.get(peer)]
    unknown = [name for name in args.scenarios.split(",") if name not in SCENARIOS and name not in OTHER_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join([*SCENARIOS, *OTHER_SCENARIOS])}")
    global PLACEMENT
    PLACEMENT = Placement.named(args.placement)
    allow_open_files()  # the servers started from here inherit it (the Node ones cannot raise it themselves)
    if "tls" in peers:
        global CERTIFICATE
        CERTIFICATE = Certificate.make(_WORKDIR.name)
    if "node-socketio" in peers:
        global SOCKETIO_DIR
        SOCKETIO_DIR = prepare_socketio(args.socketio_server)
    raw: dict = {}
    for scenario in args.scenarios.split(","):
        if scenario == "bulk":  # bulk TCP is not a chat: socketlab and socat, through bench tcp
            for run in range(args.runs):
                raw.setdefault("bulk", {}).setdefault("bulk", []).append(bench_bulk(args.bulk_buffers, args.bulk_size))
                print(f"bulk run {run + 1}: done", file=sys.stderr)
            continue
        for run in range(args.runs):
            # Interleaved, so drift in the machine hits every peer alike, and each run starts
            # with a different peer, so no peer always follows the same one.
            able = [peer for peer in peers if scenario not in ROOM_SCENARIOS or peer in ROOM_PEERS]
            if not able:
                print(f"{scenario}: none of the peers has rooms (those that do: {', '.join(ROOM_PEERS)})", file=sys.stderr)
                break
            shift = run % len(able)
            for peer in able[shift:] + able[:shift]:
                report = bench(peer, scenario, args.node_server, args.bench_args.split(), args.build)
                raw.setdefault(scenario, {}).setdefault(peer, []).append(report)
                print(f"{scenario} run {run + 1} {peer}: done", file=sys.stderr)
    facts = {"machine": machine(), "placement": PLACEMENT.describe(), "raw": raw}
    if args.json:  # the runs first: an analysis that fails must not lose them (--reanalyse)
        args.json.write_text(json.dumps(facts, indent=1))
    table = analyse(raw)
    if args.json:
        args.json.write_text(json.dumps({**facts, "summary": table}, indent=1))
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
