"""The ``churn`` scenario of ``socketlab bench chat``: a crowd that turns over while two members talk.

``clients`` idle members connect; then ``rate`` of them a second are replaced for ``duration`` seconds:
the oldest drops with a reset, as a client whose network went away does, and a new one connects and
is welcomed. Meanwhile two probe members, in a room of their own and in a process of their own (the
replacements' blocking handshakes never delay their clock), exchange a timed line every
:data:`PROBE_INTERVAL`. Reported: what a member who stays sees (the probes' latency, lines lost), what
the server pays per replacement (CPU, given its PIDs) and whether its memory stays flat (RSS at the
churn's start, its peak and its end) -- a server whose departed members wait for the cyclic garbage
collector shows its full collections here as the probes' worst latency, and as memory that grows.

Idle Socket.IO members join rooms of :data:`ROOM_MEMBERS`, the tutorial's pairs (a Socket.IO client
joins a room to chat, and the tutorial's server takes two to a room); TCP and WebSocket members stay
in the lobby, where joins are not announced to crowds.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import re
import secrets
import selectors
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from socketlab.bench.common import (
    PLAIN,
    ClientKind,
    Progress,
    Targets,
    close_with_reset,
    cpu_seconds,
    open_clients,
    read_ready,
    rss_kib,
    why_not,
)
from socketlab.bench.tally import percentile
from socketlab.bench.wire import frame, take_replies
from socketlab.serving import allow_open_files

#: Seconds between two probe lines.
PROBE_INTERVAL = 0.02
#: Idle Socket.IO members per room (a new member after a replacement has a room of its own).
ROOM_MEMBERS = 2
#: A probe line: its sequence number and the monotonic clock when it was sent.
_PROBE = re.compile(rb"~churn (\d+) (\d+)~")


@dataclass
class ChurnResult:
    members: int
    rate: float
    seconds: float
    replaced: int
    #: New members that could not connect (or join) in time.
    failed: int
    #: Members the server closed during the churn (not replaced by the benchmark), and before it.
    dropped: int
    dropped_before: int
    probe_lines: int
    probe_lost: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: The benchmark's own busy share of its CPU while replacing (the probes' process apart).
    bench_busy: float = 0.0
    server_rss_kib: dict[str, int] = field(default_factory=dict)
    #: The server's CPU time over the churn, as a share of one CPU, and divided by the replacements: all it did
    #: meanwhile, the idle members' keepalives and the probes' lines included.
    server_cpu_share: float | None = None
    server_cpu_us_per_replacement: float | None = None


def run_churn(
    address: "tuple[str, int] | Targets",
    *,
    clients: int,
    rate: float,
    duration: float,
    server_pid: int | Sequence[int] | None = None,
    progress: Progress | None = None,
    kind: ClientKind = PLAIN,
) -> ChurnResult:
    """Hold *clients* members, replace *rate* a second for *duration* seconds, and time two probes meanwhile."""
    allow_open_files()
    targets = Targets.of(address)
    prefix = f"churn-{secrets.token_hex(3)}"
    members: collections.deque[Any] = collections.deque()
    opened = 0

    def open_members(count: int) -> list[Any]:
        nonlocal opened
        member_kind = dataclasses.replace(kind, room=f"{prefix}-{opened // ROOM_MEMBERS}") if kind.socketio else kind
        new = open_clients(targets.shifted(opened), count, kind=member_kind)
        opened += count
        return new

    # The probes' process starts first: forked later, it would hold every member's socket open too, and a
    # member the benchmark resets would stay connected.
    context = multiprocessing.get_context("fork")
    results, their_end = context.Pipe(duplex=False)
    go, ready = context.Event(), context.Event()
    probes = context.Process(
        target=_probe, args=(targets.pick(clients), kind, f"{prefix}-probes", duration, go, ready, their_end), daemon=True
    )
    probes.start()
    their_end.close()
    selector = selectors.DefaultSelector()
    dropped = 0

    def keep(new: list[Any]) -> None:
        for member in new:
            members.append(member)
            selector.register(member, selectors.EVENT_READ)

    def read_members(timeout: float) -> bool:
        """Read whatever the members have (pings are answered as they are read); False if nothing came."""
        nonlocal dropped
        events = selector.select(timeout)
        for key, _ in events:
            if read_ready(key.fileobj, 1 << 16) == b"":  # type: ignore[arg-type]
                selector.unregister(key.fileobj)
                members.remove(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                dropped += 1
        return bool(events)

    while len(members) < clients:
        count = min(ROOM_MEMBERS - opened % ROOM_MEMBERS, clients - len(members))
        more = open_members(count)
        if not more:
            break
        keep(more)
        read_members(0)  # every member is read all along: a WebSocket's keepalive is answered
        if progress:
            progress(f"{len(members):,}/{clients:,} members")
    if len(members) < clients:
        probes.kill()
        selector.close()
        for member in members:
            member.close()
        raise OSError(f"only {len(members):,} of {clients:,} members could connect{why_not(targets.pick(opened))}")
    settle_by = time.monotonic() + 60.0
    while read_members(0.3) and time.monotonic() < settle_by:
        pass
    dropped_before = dropped

    go.set()
    while not ready.is_set() and time.monotonic() < settle_by + 30:
        read_members(0.05)
    if not ready.is_set():
        probes.kill()
        raise OSError("the probe members could not join their room")

    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    rss = [rss_kib(server_pid)] if server_pid else []
    own_cpu = cpu_seconds()
    start = time.monotonic()
    replaced = failed = 0
    next_sample = start + 1.0
    next_progress = 500
    while (now := time.monotonic()) < start + duration:
        for _ in range(min(int((now - start) * rate) - replaced - failed, 50, len(members))):
            old = members.popleft()
            selector.unregister(old)
            _reset(old)
            new = open_members(1)
            if new:
                keep(new)
                replaced += 1
            else:
                failed += 1
            read_members(0)
        read_members(0.005)
        if server_pid and now >= next_sample:
            rss.append(rss_kib(server_pid))
            next_sample += 1.0
        if progress and replaced >= next_progress:
            progress(f"{replaced:,} replaced")
            next_progress += 500
    seconds = time.monotonic() - start
    own_cpu = cpu_seconds() - own_cpu
    server_cpu = cpu_seconds(server_pid) - server_cpu if server_pid else 0.0
    if server_pid:
        rss.append(rss_kib(server_pid))
    sent, latencies = results.recv() if results.poll(duration + 30) else (0, [])
    probes.join(5)
    selector.close()
    for member in members:
        _reset(member)
    latencies.sort()
    result = ChurnResult(
        members=clients,
        rate=rate,
        seconds=round(seconds, 3),
        replaced=replaced,
        failed=failed,
        dropped=dropped - dropped_before,
        dropped_before=dropped_before,
        probe_lines=sent,
        probe_lost=sent - len(latencies),
        bench_busy=round(own_cpu / seconds, 3) if seconds else 0.0,
    )
    if latencies:
        result.latency_ms = {
            "p50": round(percentile(latencies, 0.50), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3),
        }
    if server_pid:
        result.server_rss_kib = {"start": rss[0], "peak": max(rss), "end": rss[-1]}
        result.server_cpu_share = round(server_cpu / seconds, 3) if seconds else None
        if replaced:
            result.server_cpu_us_per_replacement = round(server_cpu / replaced * 1e6, 1)
    return result


def _reset(client: Any) -> None:
    """Close *client* (a bench client or a socket) with an RST: no goodbye."""
    close_with_reset(getattr(client, "sock", client))


def _probe(address: tuple[str, int], kind: ClientKind, room: str, duration: float, go: Any, ready: Any, results: Any) -> None:
    """The probes' process: once *go* is set, two members in *room*; one line every PROBE_INTERVAL from the first to
    the second."""
    if not go.wait(3600):
        return
    probe_kind = dataclasses.replace(kind, room=room) if kind.socketio else kind
    pair = open_clients(address, 2, kind=probe_kind)
    if len(pair) < 2:
        return
    speaker, listener = pair
    if not kind.socketio:  # TCP and WebSocket members join with a command
        for member in pair:
            _send(member, f"/join {room}\n".encode())
        _wait_for(listener, f"you are in {room}".encode())
    ready.set()
    latencies: list[float] = []
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, listener)
    selector.register(speaker, selectors.EVENT_READ, speaker)  # its own lines come back over Socket.IO: read, dropped
    sent = 0
    unfinished = b""
    start = time.monotonic()
    next_line = start
    while (now := time.monotonic()) < start + duration + 1.0:
        if next_line <= now < start + duration:
            _send(speaker, f"~churn {sent} {time.monotonic_ns()}~\n".encode())
            sent += 1
            next_line += PROBE_INTERVAL
        for key, _ in selector.select(max(0.0, min(next_line - time.monotonic(), 0.01))):
            data = read_ready(key.fileobj, 1 << 16)  # type: ignore[arg-type]
            if data == b"":
                selector.unregister(key.fileobj)
            elif data and key.data is listener:
                arrived = time.monotonic_ns()
                *lines, unfinished = (unfinished + data).split(b"\n")
                unfinished = unfinished[-4096:]
                for line in lines:
                    match = _PROBE.search(line)
                    if match:
                        latencies.append((arrived - int(match.group(2))) / 1e6)
    results.send((sent, latencies))
    for member in pair:
        member.close()


def _send(client: Any, line: bytes) -> None:
    client.setblocking(True)
    client.settimeout(5)
    try:
        client.sendall(take_replies(client) + frame(client, line))
    finally:
        client.setblocking(False)


def _wait_for(client: Any, text: bytes, limit: float = 10.0) -> None:
    """Read *client* until *text* arrived (the answer to its /join)."""
    seen = b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ)
        while text not in seen and time.monotonic() < deadline:
            if not getattr(client, "has_pending", False):
                selector.select(0.05)
            data = read_ready(client, 1 << 16)
            if data == b"":
                raise OSError("a probe member was closed before it joined its room")
            if data:
                seen = (seen + data)[-4096:]
    if text not in seen:
        raise OSError("a probe member did not join its room")
