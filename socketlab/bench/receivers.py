"""The receiving side of the fanout scenario: the loops that read the receivers' sockets (timing and
checking every copy, or only counting them) and the forked process that runs one group of them.
"""

from __future__ import annotations

import array
import gc
import os
import select
import socket
import time
from typing import Any

from socketlab.bench.common import QUIET_END, SETTLE_LIMIT, SETTLE_QUIET, cpu_seconds, drain_until_quiet, read_ready
from socketlab.bench.tally import Receipts, Totals, percentile

#: Bulk receivers read this often; probe receivers read at once and time every copy. Measured
#: paced (machine B): reading at once doubled the server's CPU (every copy woke a reader), and
#: reading every 20 ms doubled it too, with a 3x p99 (delayed ACKs on the server's CPU, it seems:
#: docs/benchmarks.md); 5 ms cost both sides least.
BULK_PERIOD = 0.005


class ReceiveLoop:
    """Reads a set of client sockets with epoll, feeding each one's Receipts."""

    #: Whether a read filled its buffer is not tracked here: probes read at once anyway (see CountingLoop.filled).
    filled = False

    def __init__(
        self,
        socks: list[Any],
        totals: Totals,
        senders: int,
        messages: int,
        owns: list[int | None],
        timed: bool = True,
    ) -> None:
        self._poller = select.epoll()
        self._by_fd: dict[int, tuple[socket.socket, Receipts]] = {}
        for sock, own in zip(socks, owns, strict=True):
            self._by_fd[sock.fileno()] = (sock, Receipts(totals, senders, messages, own=own, timed=timed))
            self._poller.register(sock.fileno(), select.EPOLLIN)
        self.open = len(socks)

    def poll(self, timeout: float) -> int:
        """Read whatever is ready within *timeout* s; return well-formed messages seen."""
        got = 0
        for fd, _event in self._poller.poll(timeout):
            sock, receipts = self._by_fd[fd]
            data = read_ready(sock, 1 << 18)
            if data is None:
                continue
            if data:
                got += receipts.feed(data, time.monotonic_ns())
            else:
                self._poller.unregister(fd)
                self.open -= 1
        return got

    def analyse(self) -> None:
        for _sock, receipts in self._by_fd.values():
            receipts.analyse()
        self._poller.close()

    @property
    def echoes(self) -> int:
        """Copies of the receivers' own messages seen so far (servers that echo)."""
        return sum(receipts.echoes_fed for _sock, receipts in self._by_fd.values())

    def latencies_by_socket(self) -> list[list[int]]:
        """Each socket's latencies (ns), in the order the sockets were given."""
        return [receipts.latencies_ns for _sock, receipts in self._by_fd.values()]


class CountingLoop:
    """Bulk readers that only count messages, at C speed: the ``$`` that ends each one.

    One reused buffer, ``recv_into()`` and ``bytearray.count()`` of one byte
    (about twice as fast as counting a two-byte ending): no object per
    line, so reading a copy costs far less than relaying it. Notices and
    user names hold no ``$``, so they are not counted. ``filled`` tells
    whether the last poll filled the buffer on some socket (more is waiting).
    """

    def __init__(self, socks: list[Any], size: int = 1 << 18) -> None:
        self._poller = select.epoll()
        self._socks = {sock.fileno(): sock for sock in socks}
        for fd in self._socks:
            self._poller.register(fd, select.EPOLLIN)
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self.open = len(socks)
        self.filled = False

    def poll(self, timeout: float) -> int:
        """Read whatever is ready within *timeout* s; return the messages counted."""
        got = 0
        self.filled = False
        buffer, view, size = self._buffer, self._view, len(self._buffer)
        for fd, _event in self._poller.poll(timeout):
            sock = self._socks[fd]
            try:
                if isinstance(sock, socket.socket):
                    count = sock.recv_into(view)
                    got += buffer.count(b"$", 0, count)
                else:  # TLS or WebSocket underneath: the payload comes as bytes
                    data = sock.recv(size)
                    count = len(data)
                    got += data.count(b"$")
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                count = 0
            if not count:
                self._poller.unregister(fd)
                self.open -= 1
            elif count == size:
                self.filled = True
        return got

    def analyse(self) -> None:
        self._poller.close()


def receiver_worker(
    socks: list[Any],
    strangers: list[Any],
    senders: int,
    messages: int,
    link: Any,
    time_limit: float,
    probe: bool,
    progress: Any,
    slot: int,
    checked: bool = False,
    period: float = BULK_PERIOD,
) -> None:
    """A forked process that reads *socks* (opened by the parent) and reports what they saw.

    A *probe* worker reads the moment data arrives, checks every copy and
    records latencies. A bulk worker reads every *period* seconds (at once
    again while reads fill its buffer; paced runs) or as data comes (0:
    flat out, where pausing would pace the senders through their window)
    and, unless *checked*, only counts messages: reading every copy costs
    the machine little and disturbs the server under test less. *strangers*
    are the other clients, inherited through fork: closed here, they stay
    open in their owners.
    """
    try:
        for sock in strangers:
            sock.close()
        if not probe and period:  # flat out, a starved reader would close its TCP window and stall the run
            _run_when_idle()
        drain_until_quiet(socks, SETTLE_QUIET, SETTLE_LIMIT)
        link.send("ready")
        link.recv()  # go
        totals = Totals()
        loop: ReceiveLoop | CountingLoop
        if probe or checked:
            loop = ReceiveLoop(socks, totals, senders, messages, [None] * len(socks), timed=probe)
        else:
            loop = CountingLoop(socks)
        expected = len(socks) * senders * messages
        gc.disable()
        cpu_start = cpu_seconds()
        received = 0
        last_copy = time.monotonic()
        deadline = last_copy + time_limit
        while received < expected and loop.open:
            got = loop.poll(0.05)
            now = time.monotonic()
            if got:
                received += got
                last_copy = now
                progress[slot] = received
            elif now - last_copy > QUIET_END or now > deadline:
                break
            if period and not probe and not loop.filled:
                time.sleep(period)
        cpu = cpu_seconds() - cpu_start
        loop.analyse()
        if isinstance(loop, CountingLoop):
            totals.delivered = received
        by_socket = []
        if probe and isinstance(loop, ReceiveLoop):
            for latencies in loop.latencies_by_socket():
                latencies.sort()
                by_socket.append([percentile(latencies, 0.5), percentile(latencies, 0.99)])
        link.send(
            {
                "by_socket": by_socket,
                "delivered": totals.delivered,
                "duplicates": totals.duplicates,
                "order_violations": totals.order_violations,
                "garbled": totals.garbled,
                "latencies": array.array("q", totals.latencies_ns).tobytes(),
                "last_copy": last_copy,
                "cpu": cpu,
            }
        )
    finally:
        link.close()
        os._exit(0)


def _run_when_idle() -> None:
    """Run this process only when no other wants the CPU (Linux's SCHED_IDLE, no privilege needed).

    Bulk readers can wait; a probe that wakes to time a copy must not queue
    behind them. Measured paced (machine B, load on one CPU): p99 0.39-0.46 ms
    with the bulk readers idle, 0.58-0.60 ms without.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the readers run as they are
        pass
