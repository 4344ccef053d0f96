"""The ``connections`` scenario of ``socketlab bench chat``: many idle connections, then one
broadcast to check each is still served, with the server's memory per connection.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from socketlab.bench.common import (
    PLAIN,
    SETTLE_QUIET,
    ClientKind,
    Progress,
    Targets,
    drain_until_quiet,
    open_clients,
    read_ready,
    rss_kib,
)
from socketlab.bench.tally import make_message
from socketlab.bench.wire import frame, take_replies
from socketlab.serving import allow_open_files


@dataclass
class ConnectionsResult:
    requested: int
    open_file_limit: int
    connected: int
    served: int
    seconds: float
    server_rss_kib: dict[str, int] = field(default_factory=dict)
    kib_per_connection: float | None = None


def run_connections(
    address: "tuple[str, int] | Targets",
    *,
    clients: int,
    server_pid: int | Sequence[int] | None = None,
    progress: Progress | None = None,
    kind: ClientKind = PLAIN,
) -> ConnectionsResult:
    """Open *clients* idle connections, then check each still receives a broadcast."""
    limit = allow_open_files()
    rss_before = rss_kib(server_pid) if server_pid else 0
    start = time.monotonic()
    socks: list[Any] = []
    while len(socks) < clients:
        more = open_clients(Targets.of(address).shifted(len(socks)), min(100, clients - len(socks)), kind=kind)
        socks += more
        if progress:
            progress(f"{len(socks):,}/{clients:,} connected")
        if not more:
            break
        drain_until_quiet(socks[-len(more) :], 0.01, 1.0)
    connected = drain_until_quiet(socks, SETTLE_QUIET, 60.0)
    rss_after = rss_kib(server_pid) if server_pid else 0
    served = 0
    probe = open_clients(Targets.of(address).shifted(len(socks)), 1, kind=kind)
    if probe:
        drain_until_quiet(socks + probe, SETTLE_QUIET, 30.0)
        probe[0].setblocking(True)
        probe[0].sendall(take_replies(probe[0]) + frame(probe[0], make_message(0, 0, time.monotonic_ns(), 64)))
        served = _count_receivers(socks, b"~0.0.", 10.0)
        probe[0].close()
    for sock in socks:
        sock.close()
    result = ConnectionsResult(
        requested=clients,
        open_file_limit=limit,
        connected=connected,
        served=served,
        seconds=round(time.monotonic() - start, 3),
    )
    if server_pid:
        result.server_rss_kib = {"before": rss_before, "after": rss_after}
        if connected:
            result.kib_per_connection = round((rss_after - rss_before) / connected, 2)
    return result


def _count_receivers(socks: list[Any], marker: bytes, limit: float) -> int:
    """How many sockets receive *marker* within *limit* seconds."""
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    got = 0
    deadline = time.monotonic() + limit
    while got < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            ready: socket.socket = key.fileobj  # type: ignore[assignment]
            data = read_ready(ready, 1 << 16)
            if data is None:
                continue
            if not data:
                selector.unregister(ready)
                continue
            buffers[ready] = (buffers[ready] + data)[-256:]
            if marker in buffers[ready]:
                got += 1
                selector.unregister(ready)
    selector.close()
    return got
