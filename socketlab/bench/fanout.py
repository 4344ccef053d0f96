"""The ``fanout`` scenario of ``socketlab bench chat`` (and ``slow``, which is fanout with one client
that never reads): the plan, the senders driven from this process, and the result assembled from
the receiver processes' reports (see :mod:`socketlab.bench.receivers`).
"""

from __future__ import annotations

import array
import gc
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from socketlab.bench.common import (
    PLAIN,
    QUIET_END,
    SETTLE_LIMIT,
    SETTLE_QUIET,
    ClientKind,
    Progress,
    Targets,
    cpu_seconds,
    drain_until_quiet,
    open_clients,
    rss_kib,
    why_not,
)
from socketlab.bench.receivers import BULK_PERIOD, ReceiveLoop, receiver_worker
from socketlab.bench.tally import Totals, make_message, percentile
from socketlab.bench.wire import BenchClient, frame, take_replies
from socketlab.errors import BenchError
from socketlab.serving import allow_open_files

#: Receiving clients whose every copy is timed (in their own process).
PROBES = 8


@dataclass
class FanoutResult:
    clients: int
    senders: int
    messages: int
    size: int
    rate: float
    expected: int
    delivered: int
    duplicates: int
    garbled: int
    order_violations: int
    seconds: float
    copies_per_second: float
    delivered_share: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    server_rss_kib: dict[str, int] = field(default_factory=dict)
    #: Bytes a flooding client beside the run got into the server's direction (0: none ran).
    flooder_bytes: int = 0
    #: Each probe's p50 and p99 (ms) by its place in the receivers' join order (0: joined first).
    latency_by_position: list[dict[str, float]] = field(default_factory=list)
    #: Copies of their own lines the senders got back (Socket.IO's echo): not in delivered, nor in expected.
    echoes: int = 0


def spread(count: int, among: int) -> list[int]:
    """*count* positions spread evenly over ``range(among)``, each in the middle of its share."""
    return [(2 * k + 1) * among // (2 * count) for k in range(count)]


def run_fanout(
    address: "tuple[str, int] | Targets",
    *,
    clients: int = 100,
    senders: int = 4,
    messages: int = 2000,
    size: int = 64,
    rate: float = 0.0,
    slow_client: bool = False,
    server_pid: int | Sequence[int] | None = None,
    progress: Progress | None = None,
    time_limit: float = 120.0,
    workers: int = 1,
    window: int = 2000,
    batch: int = 64,
    check_all: bool = False,
    kind: ClientKind = PLAIN,
    flooder: bool = False,
    flooder_at: tuple[str, int] | None = None,
) -> FanoutResult:
    """Run one fanout measurement against the chat server at *address*.

    The last *senders* clients to connect send (and receive, untimed) in
    this process. Up to PROBES receiving clients, spread evenly over the
    join order, run in a probe process that times and checks every copy;
    the rest are split among *workers* bulk processes that count them.
    Latency comes from the probes; loss, duplicates, order and garbling
    from the probes and the senders (and from every client with
    *check_all*).

    Flat out, the senders keep at most *window* messages (all senders
    together) ahead of what the receivers have read (0: no limit): the
    load is as fast as the server and the readers can go, without an
    ever-growing queue that would only measure buffering. Each send
    carries *batch* lines (1: one line per send, as people type).

    With *check_all* the bulk readers check every copy too, at a cost per
    copy close to the server's own: a check of the relay, not of its speed.

    *kind* says how clients talk: lines over TCP, in WebSocket text
    messages to a chat server's web address, or as Socket.IO events (all in
    one room); TLS underneath or not. Copies are the other clients' only:
    the senders' own echoed lines are counted apart (``echoes``).

    With *flooder*, one more client (a plain TCP one, in a process of its
    own) sends ordinary lines flat out while the senders send, to
    *flooder_at* (the same server's line port when the clients speak
    WebSocket) or else to *address*.
    """
    if not 0 < senders < clients:
        raise ValueError("need at least one sender and one more client")
    receivers = clients - senders
    targets = Targets.of(address)
    allow_open_files()  # this process opens every client
    # Every client is opened here, in one order, so the probes sit evenly among the receivers in
    # the order the server got them (a server that delivers in join order is timed at its start,
    # middle and end alike); the workers inherit their clients through fork.
    receiving = open_clients(targets, receivers, kind=kind)
    socks = open_clients(targets.shifted(receivers), senders, kind=kind) if len(receiving) == receivers else []
    everyone = receiving + socks
    if len(everyone) < clients:
        for sock in everyone:
            sock.close()
        why = why_not(targets.first)
        if not why and kind.socketio:
            why = f" (or heard no chat line sent to the room {kind.room!r})"
        raise BenchError(f"only {len(everyone)} of {clients} clients could connect{why}")
    probe_at = set(spread(min(PROBES, receivers), receivers))
    bulk = [sock for index, sock in enumerate(receiving) if index not in probe_at]
    workers = max(1, min(workers, len(bulk))) if bulk else 0
    groups = [([receiving[index] for index in sorted(probe_at)], True)] + [(bulk[i::workers], False) for i in range(workers)]
    context = multiprocessing.get_context("fork")
    received_by_worker = context.Array("q", len(groups), lock=False)
    links: list[Any] = []
    processes: list[Any] = []
    slow: list[Any] = []
    try:
        for slot, (group, probe) in enumerate(groups):
            parent, child = context.Pipe()
            mine = set(map(id, group))
            strangers = [sock for sock in everyone if id(sock) not in mine]
            process = context.Process(
                target=receiver_worker,
                args=(
                    group,
                    strangers,
                    senders,
                    messages,
                    child,
                    time_limit,
                    probe,
                    received_by_worker,
                    slot,
                    check_all,
                    BULK_PERIOD if rate else 0.0,
                ),
                daemon=True,
            )
            process.start()
            child.close()
            links.append(parent)
            processes.append(process)
        for sock in receiving:  # the workers have them now
            sock.close()
        slow = open_clients(targets.shifted(clients), 1, rcvbuf=4096, kind=kind) if slow_client else []
        rss_before = rss_kib(server_pid) if server_pid else 0
        drain_until_quiet(socks, SETTLE_QUIET, SETTLE_LIMIT)
        for link in links:
            link.recv()  # ready
        flooding = None
        if flooder:
            from socketlab.bench.flood import flooding_client

            flooding = flooding_client(flooder_at or targets.first, seconds=messages / rate + 1 if rate else 10.0)
            processes.append(flooding[0])
        plan = FanoutPlan(clients, senders, messages, size, rate, window, batch, time_limit)
        result = _drive_senders(plan, socks, links, server_pid, progress, rss_before, received_by_worker, sorted(probe_at))
        if flooding is not None and flooding[1].poll(time_limit):
            result.flooder_bytes = flooding[1].recv()
        return result
    finally:
        for resource in everyone + slow + links:  # closing twice is harmless
            resource.close()
        for process in processes:
            process.join(1)
            if process.is_alive():
                process.kill()


@dataclass(frozen=True)
class FanoutPlan:
    """What one fanout run sends: see :func:`run_fanout` for each setting."""

    clients: int
    senders: int
    messages: int
    size: int
    rate: float
    window: int
    batch: int
    time_limit: float


def _drive_senders(
    plan: FanoutPlan,
    socks: list[Any],
    links: list[Any],
    server_pid: int | Sequence[int] | None,
    progress: Progress | None,
    rss_before: int,
    received_by_worker: Any,
    probe_positions: list[int],
) -> FanoutResult:
    """Send *plan* from the sender sockets *socks*, read their own copies, and gather the receivers' reports."""
    clients, senders, messages, size = plan.clients, plan.senders, plan.messages, plan.size
    rate, window, batch, time_limit = plan.rate, plan.window, plan.batch, plan.time_limit
    totals = Totals()
    loop = ReceiveLoop(socks, totals, senders, messages, list(range(senders)), timed=False)
    own_expected = senders * (senders - 1) * messages
    expected = senders * messages * (clients - 1)
    pending = [b""] * senders
    next_seq = [0] * senders
    interval_ns = int(1e9 / rate) if rate else 0
    writing = set(range(senders))
    for sock in socks:  # a pong sent while a batch is half out would cut one of its frames in two
        if isinstance(sock, BenchClient):
            sock.hold_replies = True
    gc.disable()  # no collector pauses inside the measurement
    bench_cpu = cpu_seconds()
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    for link in links:
        link.send("go")
    start_ns = time.monotonic_ns()
    next_due = [start_ns + (i * interval_ns) // senders for i in range(senders)]
    peak_rss = rss_before
    received = echoes = 0
    last_copy = last_report = last_echo = time.monotonic()
    deadline = last_copy + time_limit

    # A server that echoes (any echo seen) owes every sender all of its own lines too: wait for them,
    # so the echoes reported are all there are (they are not copies: last_copy ignores them).
    while writing or (
        (received < own_expected or 0 < echoes < senders * messages) and time.monotonic() - max(last_copy, last_echo) < QUIET_END
    ):
        if time.monotonic() > deadline:
            break
        timeout = (
            0.05
            if not writing
            else 0.0
            if not interval_ns
            else max(0.0, min(0.05, (min(next_due[i] for i in writing) - time.monotonic_ns()) / 1e9))
        )
        got = loop.poll(timeout)
        if got:
            received += got
            last_copy = time.monotonic()
        if loop.echoes != echoes:
            echoes, last_echo = loop.echoes, time.monotonic()
        if window and not interval_ns:
            in_flight = sum(next_seq) * (clients - 1) - received - sum(received_by_worker)
            if in_flight > window * (clients - 1):
                got = loop.poll(0.001)  # the readers are behind: let them catch up
                if got:  # the senders' own copies count too, or the window would shrink for good
                    received += got
                    last_copy = time.monotonic()
                continue
        now_ns = time.monotonic_ns()
        for index in list(writing):
            sock = socks[index]
            pending[index] += take_replies(sock)  # after whole frames: what is pending is never cut
            if not pending[index]:
                seq = next_seq[index]
                if interval_ns:
                    if now_ns < next_due[index]:
                        continue
                    pending[index] = frame(sock, make_message(index, seq, now_ns, size))
                    next_seq[index] = seq + 1
                    next_due[index] += interval_ns
                else:
                    count = min(batch, messages - seq)
                    pending[index] = frame(sock, b"".join(make_message(index, s, now_ns, size) for s in range(seq, seq + count)))
                    next_seq[index] = seq + count
            try:
                sent = sock.send(pending[index])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                writing.discard(index)
                continue
            pending[index] = pending[index][sent:]
            if not pending[index] and next_seq[index] >= messages:
                writing.discard(index)
                if isinstance(sock, BenchClient):  # done sending: answers go out as they are made
                    sock.hold_replies = False
                    sock.flush_replies()
        if time.monotonic() - last_report > 0.25:
            last_report = time.monotonic()
            if server_pid:
                peak_rss = max(peak_rss, rss_kib(server_pid))
            if progress:
                progress(f"sent {sum(next_seq):,}/{senders * messages:,} messages")
    cpu = {"bench_senders": round(cpu_seconds() - bench_cpu, 3)}
    if server_pid:
        cpu["server"] = round(cpu_seconds(server_pid) - server_cpu, 3)
    loop.analyse()
    last_copies = [last_copy] if received else []
    by_socket: list[list[int]] = []
    for link in links:
        if not link.poll(time_limit + QUIET_END + 5):
            raise BenchError("a receiver process did not report")
        report = link.recv()
        totals.delivered += report["delivered"]
        totals.duplicates += report["duplicates"]
        totals.order_violations += report["order_violations"]
        totals.garbled += report["garbled"]
        totals.latencies_ns.extend(array.array("q", report["latencies"]))
        by_socket += report["by_socket"]
        last_copies.append(report["last_copy"])
        cpu["bench_receivers"] = round(cpu.get("bench_receivers", 0.0) + report["cpu"], 3)
    if server_pid:
        peak_rss = max(peak_rss, rss_kib(server_pid))
        cpu["server"] = round(cpu_seconds(server_pid) - server_cpu, 3)
    gc.enable()
    seconds = max(max(last_copies, default=start_ns / 1e9) - start_ns / 1e9, 1e-9)
    latencies = sorted(totals.latencies_ns)
    return FanoutResult(
        clients=clients,
        senders=senders,
        messages=messages,
        size=size,
        rate=rate,
        expected=expected,
        delivered=totals.delivered,
        duplicates=totals.duplicates,
        garbled=totals.garbled,
        order_violations=totals.order_violations,
        seconds=round(seconds, 3),
        copies_per_second=round(totals.delivered / seconds),
        delivered_share=round(totals.delivered / expected, 6) if expected else 0.0,
        latency_ms={
            "p50": round(percentile(latencies, 0.50) / 1e6, 3),
            "p90": round(percentile(latencies, 0.90) / 1e6, 3),
            "p99": round(percentile(latencies, 0.99) / 1e6, 3),
            "p99.9": round(percentile(latencies, 0.999) / 1e6, 3),
            "max": round((latencies[-1] if latencies else 0) / 1e6, 3),
        },
        cpu_seconds=cpu,
        server_rss_kib={"before": rss_before, "peak": peak_rss} if server_pid else {},
        latency_by_position=[
            {"position": position, "p50": round(p50 / 1e6, 3), "p99": round(p99 / 1e6, 3)}
            for position, (p50, p99) in zip(probe_positions, by_socket, strict=False)
        ],
        echoes=totals.echoes,
    )
