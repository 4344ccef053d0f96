"""``socketlab bench chat --scenario pairs`` (and ``mixed``): thousands of members in many small rooms.

The workload (who is in which room, when each one speaks) is a
:class:`~socketlab.bench.rooms.RoomPlan`; this module runs it:

1. *Load processes* are forked, each holding whole rooms (at most
   :data:`MEMBERS_PER_PROCESS` members, and never more than its open-file
   limit allows, raised to the hard limit first). Each one drives its
   members through one epoll loop (:mod:`socketlab.bench.load`) -- no
   thread per member -- and binds their sockets to
   :data:`SOURCE_ADDRESSES` loopback addresses in turn (``127.0.0.2``
   onwards), so the ephemeral port range never limits the count.
2. *The accept storm*: on one signal every process connects all of its
   members at once, as clients do after a server restarts. A member is
   welcomed by the server's first line (Socket.IO: the namespace's connect
   answer), then asks to join its room. The storm lasts from the first
   connect to the last welcome.
3. *Joins are confirmed* the transport-neutral way of
   :mod:`socketlab.bench.joins`: a room's first member sends a check line
   every :data:`~socketlab.bench.joins.JOIN_RETRY` seconds until every
   member heard one (a member that hears it is in the room, and so is the
   one that sent it). Members not confirmed within
   :data:`~socketlab.bench.joins.JOIN_LIMIT` are closed and left out.
4. *The measurement*: every joined member says one tagged line (see
   :mod:`socketlab.bench.tally`) every ``interval`` seconds, start times
   spread evenly, for ``duration`` seconds; members read as data comes and
   every copy is timed and checked (duplicates, garbling, order per
   sender, copies from outside the room). A Socket.IO server's echo of a
   member's own line is counted apart.

Around it the parent reads the server's CPU time and resident memory from
/proc (given its PIDs), and each process reports its own CPU time, so the
report says what the instrument cost and warns when it may have set the
pace.
"""

from __future__ import annotations

import array
import math
import multiprocessing
import multiprocessing.connection
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from socketlab.bench.chat import SETTLE_LIMIT, Targets, cpu_seconds, cpu_times, rss_kib
from socketlab.bench.joins import JOIN_LIMIT
from socketlab.bench.load import STORM_LIMIT, TAIL_LIMIT, LoadJob, load_process
from socketlab.bench.rooms import RoomPlan
from socketlab.bench.tally import percentile
from socketlab.errors import BenchError
from socketlab.serving import allow_open_files

#: Members one load process holds at most: more processes keep each loop short (and use more CPUs, if any).
MEMBERS_PER_PROCESS = 5000
#: Descriptors a load process keeps for other things than members (its pipe, epoll, the interpreter's own).
RESERVED_FILES = 64
#: Loopback addresses members connect from, in turn (127.0.0.2 onwards) when the server is on 127.0.0.0/8:
#: each has an ephemeral port range of its own (28,232 ports with Linux's default 32768-60999).
SOURCE_ADDRESSES = 8
#: The measurement starts this long after the signal, so every process starts on the same schedule.
GO_DELAY = 0.1
#: The instrument's busy share above which the report warns that it may have set the pace.
BUSY_WARNING = 0.8
#: How often the parent samples the server's memory and shows progress.
SAMPLE_EVERY = 0.25

Progress = Callable[[str], None]


@dataclass
class RoomsResult:
    """What one rooms run saw; times in ms unless named otherwise."""

    scenario: str
    members: int
    #: Rooms by size, largest first: {"500": 1, "20": 463, "2": 4620}.
    rooms: dict[str, int]
    interval: float
    duration: float
    size: int
    processes: int
    source_addresses: int
    #: Members connecting at once at most (0: all at once, as after a restart).
    connect_window: int = 0
    #: Members whose TCP connection was made, who were welcomed, and who were confirmed in their room.
    connected: int = 0
    welcomed: int = 0
    joined: int = 0
    #: Members the server refused (a refusal line, an HTTP status, Socket.IO's 44) and members that failed otherwise.
    refused: int = 0
    failed: int = 0
    #: The first refusal or failure seen, as a sentence (empty: none).
    first_problem: str = ""
    #: Seconds from the first connect to the last welcome (every member connecting at once).
    storm_seconds: float = 0.0
    #: Each welcomed member's time from its own connect() to its welcome.
    welcome_ms: dict[str, float] = field(default_factory=dict)
    lines: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    garbled: int = 0
    order_violations: int = 0
    #: Copies from a member of another room.
    strays: int = 0
    #: Copies of members' own lines that came back to them (Socket.IO's echo): neither expected nor delivered.
    echoes: int = 0
    #: Joined members whose connection ended during the measurement.
    dropped: int = 0
    delivered_share: float = 0.0
    #: From the first scheduled line to the last copy (or the last line, if later).
    seconds: float = 0.0
    #: From a line's send() to its copy's arrival in the receiving member's kernel (SO_TIMESTAMPNS), or, where
    #: the kernel does not stamp arrivals (latency_clock "process"), to the moment the load process read it.
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: "kernel" or "process": where latency_ms ends.
    latency_clock: str = "process"
    #: With kernel stamps: the same latencies to the moment the load process read each copy. The difference
    #: from latency_ms is the instrument's own delay (a busy load process reads late), not the server's.
    latency_read_ms: dict[str, float] = field(default_factory=dict)
    #: How late lines left against their schedule (the instrument falling behind shows here first).
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    #: server: during the measurement (server_system: the kernel's part of it); server_storm: from the first
    #: connect until every room was settled; bench: the load processes during the measurement.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    server_us_per_line: float | None = None
    #: The kernel's part of server_us_per_line (the server's sends, receives and waits).
    server_system_us_per_line: float | None = None
    #: Per copy delivered: what compares rooms of different sizes.
    server_us_per_copy: float | None = None
    server_us_per_connection_second: float | None = None
    #: before: before the first connect; joined: once every room was settled; peak: during the measurement.
    server_rss_kib: dict[str, int] = field(default_factory=dict)
    #: (joined - before) / members open then.
    kib_per_member: float | None = None
    #: share: the load processes' CPU time over the time of the CPUs they may use; busiest_process: the
    #: busiest one's over the time of one CPU; load_cpus: how many CPUs that is.
    bench_busy: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _resolve(targets: Targets) -> list[tuple[int, tuple[Any, ...]]]:
    """Each target as (family, address) for connect_ex()."""
    resolved: list[tuple[int, tuple[Any, ...]]] = []
    for host, port in targets.addresses:
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as error:
            raise BenchError(f"cannot resolve {host}: {error.strerror}") from None
        resolved.append((family, address))
    return resolved


def _on_loopback(address: tuple[Any, ...]) -> bool:
    return str(address[0]).startswith("127.")


def process_count(plan: RoomPlan, wanted: int, open_files: int) -> int:
    """How many load processes *plan* needs: at least *wanted*, each within MEMBERS_PER_PROCESS and the open-file limit.

    BenchError when one room alone does not fit in a process.
    """
    capacity = min(MEMBERS_PER_PROCESS, open_files - RESERVED_FILES)
    largest = max(plan.sizes)
    if largest > capacity:
        raise BenchError(
            f"a room of {largest:,} members does not fit in one load process (open-file limit {open_files:,}): "
            "raise the hard limit (ulimit -Hn)"
        )
    count = max(1, min(wanted, len(plan.sizes)), math.ceil(plan.members / capacity))
    while max(sum(plan.sizes[room] for room in share) for share in plan.split(count)) > capacity:
        count += 1
    return count


def run_rooms(
    address: "tuple[str, int] | Targets",
    plan: RoomPlan,
    *,
    transport: str = "tcp",
    server_pid: int | Sequence[int] | None = None,
    processes: int = 1,
    connect_window: int = 0,
    progress: Progress | None = None,
) -> RoomsResult:
    """Run *plan* against the chat server(s) at *address* with members speaking *transport*; see the module docstring.

    Rooms go to the servers round-robin (a cluster's rooms spread over its
    servers). With *connect_window*, at most that many members (over all
    processes) connect at once, each one's place taken when it is welcomed
    or fails (0: every member at once). Raises BenchError when no member
    could join a room.
    """
    targets = Targets.of(address)
    servers = _resolve(targets)
    open_files = allow_open_files()  # the load processes inherit it
    count = process_count(plan, processes, open_files)
    sources = SOURCE_ADDRESSES if all(_on_loopback(server[1]) for server in servers) else 0
    shares = plan.split(count)
    context = multiprocessing.get_context("fork")
    counters = context.Array("q", 2 * count, lock=False)
    links: list[Any] = []
    workers: list[Any] = []
    result = RoomsResult(
        scenario=plan.scenario,
        members=plan.members,
        rooms=plan.layout(),
        interval=plan.interval,
        duration=plan.duration,
        size=plan.size,
        processes=count,
        source_addresses=sources,
        connect_window=connect_window,
    )
    try:
        for slot, share in enumerate(shares):
            job = LoadJob(
                plan,
                tuple(share),
                tuple(servers[room % len(servers)] for room in share),
                transport,
                sources,
                slot,
                window=math.ceil(connect_window / count),
            )
            parent, child = context.Pipe()
            worker = context.Process(target=load_process, args=(job, child, counters), daemon=True)
            worker.start()
            child.close()
            links.append(parent)
            workers.append(worker)
        _gather(links, "ready", 60.0)
        rss_before = rss_kib(server_pid) if server_pid else 0
        storm_cpu = cpu_seconds(server_pid) if server_pid else 0.0
        for link in links:
            link.send("connect")
        show = _progress(progress, counters, count, plan.members, "welcomed")
        joined_reports = _gather(links, "joined", STORM_LIMIT + JOIN_LIMIT + SETTLE_LIMIT + 30.0, show)
        _add_joins(result, joined_reports)
        if not result.joined:
            raise BenchError(f"no member could join a room{': ' + result.first_problem if result.first_problem else ''}")
        rss_joined = rss_kib(server_pid) if server_pid else 0
        cpu: dict[str, float] = {}
        if server_pid:
            cpu["server_storm"] = round(cpu_seconds(server_pid) - storm_cpu, 3)
        server_cpu = cpu_times(server_pid) if server_pid else (0.0, 0.0)
        start_ns = time.monotonic_ns() + int(GO_DELAY * 1e9)
        for link in links:
            link.send(("go", start_ns))
        peak = [rss_joined]

        def sample() -> None:
            if server_pid:
                peak[0] = max(peak[0], rss_kib(server_pid))
            if progress:
                progress(f"said {sum(counters[2 * slot + 1] for slot in range(count)):,} lines")

        done = _gather(links, "done", plan.duration + GO_DELAY + TAIL_LIMIT + 30.0, sample)
        if server_pid:
            user, system = cpu_times(server_pid)
            cpu["server"] = round(user + system - sum(server_cpu), 3)
            cpu["server_system"] = round(system - server_cpu[1], 3)
            peak[0] = max(peak[0], rss_kib(server_pid))
            result.server_rss_kib = {"before": rss_before, "joined": rss_joined, "peak": peak[0]}
            result.kib_per_member = round((rss_joined - rss_before) / result.joined, 2)
        for link in links:
            link.send("bye")
        _add_measurement(result, done, start_ns, cpu)
        return result
    finally:
        for link in links:
            link.close()
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()


def _progress(progress: Progress | None, counters: Any, count: int, members: int, what: str) -> Callable[[], None] | None:
    if progress is None:
        return None
    return lambda: progress(f"{sum(counters[2 * slot] for slot in range(count)):,}/{members:,} {what}")


def _gather(links: list[Any], step: str, limit: float, every: Callable[[], None] | None = None) -> list[Any]:
    """Each load process's report of *step*, in order; BenchError when one fails or is silent past *limit*."""
    reports: dict[int, Any] = {}
    deadline = time.monotonic() + limit
    while len(reports) < len(links):
        if time.monotonic() > deadline:
            raise BenchError(f"a load process did not report '{step}' within {limit:g} s")
        waiting = [link for index, link in enumerate(links) if index not in reports]
        ready: list[Any] = multiprocessing.connection.wait(waiting, SAMPLE_EVERY)
        for link in ready:
            index = links.index(link)
            try:
                kind, report = link.recv()
            except EOFError:
                raise BenchError(f"a load process ended before '{step}'") from None
            if kind == "bug":
                raise RuntimeError(f"a load process failed:\n{report}")
            if kind == "error":
                raise BenchError(report)
            reports[index] = report
        if every is not None:
            every()
    return [reports[index] for index in range(len(links))]


def _summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    return {
        "p50": round(percentile(ordered, 0.50) / 1e6, 3),
        "p90": round(percentile(ordered, 0.90) / 1e6, 3),
        "p99": round(percentile(ordered, 0.99) / 1e6, 3),
        "p99.9": round(percentile(ordered, 0.999) / 1e6, 3),
        "max": round((ordered[-1] if ordered else 0) / 1e6, 3),
    }


def _add_joins(result: RoomsResult, reports: list[dict[str, Any]]) -> None:
    for name in ("connected", "welcomed", "joined", "refused", "failed"):
        setattr(result, name, sum(report[name] for report in reports))
    result.first_problem = next((report["first_problem"] for report in reports if report["first_problem"]), "")
    first = min(report["first_connect_ns"] for report in reports)
    last = max(report["last_welcome_ns"] for report in reports)
    result.storm_seconds = round(max(0, last - first) / 1e9, 3) if last else 0.0
    waits = array.array("q")
    for report in reports:
        waits.frombytes(report["welcome_waits"])
    result.welcome_ms = {name: value for name, value in _summary_ms(waits).items() if name in ("p50", "p99", "max")}
    if result.joined < result.members:
        lost = result.members - result.joined
        why = f": {result.first_problem}" if result.first_problem else ""
        result.warnings.append(f"{lost:,} of {result.members:,} members did not join{why}")


def _add_measurement(result: RoomsResult, reports: list[dict[str, Any]], start_ns: int, cpu: dict[str, float]) -> None:
    for name in ("lines", "expected", "delivered", "duplicates", "garbled", "order_violations", "strays", "echoes", "dropped"):
        setattr(result, name, sum(report[name] for report in reports))
    latencies, read_latencies, lags = array.array("q"), array.array("q"), array.array("q")
    for report in reports:
        latencies.frombytes(report["latencies"])
        read_latencies.frombytes(report["read_latencies"])
        lags.frombytes(report["lags"])
    seconds = max(1e-9, (max(report["end_ns"] for report in reports) - start_ns) / 1e9)
    result.seconds = round(seconds, 3)
    result.delivered_share = round(result.delivered / result.expected, 6) if result.expected else 0.0
    result.latency_ms = _summary_ms(latencies)
    if all(report["stamped"] for report in reports):
        result.latency_clock = "kernel"
        result.latency_read_ms = _summary_ms(read_latencies)
    result.send_lag_ms = {name: value for name, value in _summary_ms(lags).items() if name in ("p50", "p99", "max")}
    bench = [report["cpu"] for report in reports]
    cpu["bench"] = round(sum(bench), 3)
    result.cpu_seconds = cpu
    if "server" in cpu:
        if result.lines:
            result.server_us_per_line = round(cpu["server"] / result.lines * 1e6, 2)
            result.server_system_us_per_line = round(cpu["server_system"] / result.lines * 1e6, 2)
        if result.delivered:
            result.server_us_per_copy = round(cpu["server"] / result.delivered * 1e6, 2)
        result.server_us_per_connection_second = round(cpu["server"] / (result.joined * seconds) * 1e6, 3)
    load_cpus = len(os.sched_getaffinity(0))
    result.bench_busy = {
        "share": round(sum(bench) / seconds / load_cpus, 3),
        "busiest_process": round(max(bench) / seconds, 3),
        "load_cpus": load_cpus,
    }
    busy = max(result.bench_busy["share"], result.bench_busy["busiest_process"])
    if busy > BUSY_WARNING:
        result.warnings.append(
            f"the benchmark itself was {100 * busy:.0f} % busy: it may have set the pace (use more --workers or CPUs)"
        )
    if result.dropped:
        result.warnings.append(f"{result.dropped:,} joined members lost their connection during the measurement")
