"""Chat relay benchmark: many clients, a few senders, every copy accounted for.

Scenarios:

- ``fanout``: ``clients`` connections, the first ``senders`` of them send
  ``messages`` tagged lines each (flat out, or ``rate`` per second); every
  client reads everything. Reports copies/s, latency percentiles, the share
  of expected copies delivered, duplicates, garbled lines, order violations.
- ``slow``: ``fanout`` twice, the second time with one more client that
  never reads; reports both p99s and the server's memory growth.
- ``connections``: opens ``clients`` idle connections, then one message;
  reports how many connections were accepted and still served, and (for a
  server it started) server memory per connection.

Clients speak TCP lines, lines in WebSocket messages, or Socket.IO (each a
member of one room, see :mod:`socketlab.bench.wire`). A sender's copies of
its own lines (Socket.IO servers echo them) are not copies: ``expected``,
``delivered`` and copies/s count the *other* clients' copies on every
transport, and the echoes are reported apart.

One process drives every client through ``selectors``; the clock is the
monotonic one, shared by senders and receivers.
"""

from __future__ import annotations

import array
import gc
import multiprocessing
import os
import resource
import select
import selectors
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from socketlab.bench.joins import confirm_joins
from socketlab.bench.tally import Receipts, Totals, make_message, percentile
from socketlab.bench.wire import ROOM, BenchClient, frame, receive, take_replies
from socketlab.bench.transfer import SOCKETLAB, listening_port
from socketlab.errors import BenchError
from socketlab.serving import allow_open_files

#: A run ends this long after the last copy arrived, if copies are still missing.
QUIET_END = 2.0
#: Before the first message, wait until the server has been quiet this long (joins settle).
SETTLE_QUIET = 0.3
SETTLE_LIMIT = 10.0
#: Bulk receivers read this often; probe receivers read at once and time every copy. Measured
#: paced (machine B): reading at once doubled the server's CPU (every copy woke a reader), and
#: reading every 20 ms doubled it too, with a 3x p99 (delayed ACKs on the server's CPU, it seems:
#: docs/benchmarks.md); 5 ms cost both sides least.
BULK_PERIOD = 0.005
#: Receiving clients whose every copy is timed (in their own process).
PROBES = 8

Progress = Callable[[str], None]


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


def rss_kib(pid: int | Sequence[int]) -> int:
    """Resident memory of *pid* (or the sum over several) in KiB (Linux), 0 when unknown."""
    if not isinstance(pid, int):
        return sum(rss_kib(one) for one in pid)
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | Sequence[int] | None = None) -> float:
    """CPU time (user + system) used so far by *pid* (or the sum over several), or by this process."""
    if pid is not None and not isinstance(pid, int):
        return sum(cpu_seconds(one) for one in pid)
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class OwnServer:
    """A ``socketlab chat serve`` subprocess on a free port (and a free web port with *web*)."""

    def __init__(self, extra: list[str] | None = None, web: bool = False) -> None:
        self.proc = subprocess.Popen(
            SOCKETLAB + ["chat", "serve", "--port", "0", "-q", *(["--web", "0"] if web else []), *(extra or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.port = listening_port(self.proc, "socketlab chat serve")
        self.web_port = listening_port(self.proc, "socketlab chat serve --web", "Web chat on") if web else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class ClientKind:
    """How the benchmark's clients talk to the server: lines over TCP, in WebSocket messages, or as
    Socket.IO ``chat message`` events in *room* (over WebSocket: *web* too); TLS or not."""

    web: bool = False
    tls: ssl.SSLContext | None = None
    socketio: bool = False
    room: str = ROOM


PLAIN = ClientKind()


@dataclass(frozen=True)
class Targets:
    """The servers clients connect to, round-robin: client *i* of a call goes to ``addresses[(start + i) % n]``."""

    addresses: tuple[tuple[str, int], ...]
    start: int = 0

    @classmethod
    def of(cls, target: "tuple[str, int] | Targets") -> "Targets":
        return target if isinstance(target, Targets) else cls((target,))

    def shifted(self, count: int) -> "Targets":
        """The same servers, for clients numbered after *count* more."""
        return Targets(self.addresses, self.start + count)

    def pick(self, index: int) -> tuple[str, int]:
        return self.addresses[(self.start + index) % len(self.addresses)]

    @property
    def first(self) -> tuple[str, int]:
        return self.addresses[0]


def open_clients(
    target: "tuple[str, int] | Targets", count: int, rcvbuf: int | None = None, kind: ClientKind = PLAIN
) -> list[Any]:
    """Connect *count* clients of *kind* (round-robin over several targets); stops early (returning fewer) when refused.

    Socket.IO clients are returned once they are in their room (see
    :mod:`socketlab.bench.joins`); those that are not within its limit are
    closed and left out.
    """
    targets = Targets.of(target)
    socks: list[Any] = []
    for index in range(count):
        address = targets.pick(index)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:  # out of file descriptors: the caller reports how many connected
            break
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)
            sock.connect(address)
            room = kind.room if kind.socketio else None
            client = BenchClient(sock, address, kind.web, kind.tls, room) if kind != PLAIN else sock
        except OSError:
            sock.close()
            break
        sock.setblocking(False)
        socks.append(client)
    return confirm_joins(socks) if kind.socketio else socks


def _read(sock: socket.socket, size: int) -> bytes | None:
    """One non-blocking recv(): the bytes, None if nothing is ready, b"" if closed or failed."""
    try:
        return receive(sock, size) if isinstance(sock, socket.socket) else sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _why_not(address: tuple[str, int]) -> str:
    """': <reason>' when one more connection to *address* fails now, else ''."""
    from socketlab.errors import AddressError
    from socketlab.tcp import connect

    try:
        connect(*address, timeout=5).close()
    except AddressError as error:
        return f" ({error})"
    return ""


def drain_until_quiet(socks: list[Any], quiet: float, limit: float) -> int:
    """Read and discard until nothing arrived for *quiet* seconds; return open sockets."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    closed = set()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        events = selector.select(quiet)
        if not events:
            break
        for key, _ in events:
            if _read(key.fileobj, 1 << 16) == b"":  # type: ignore[arg-type]
                selector.unregister(key.fileobj)
                closed.add(key.fileobj)
    selector.close()
    return len(socks) - len(closed)


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
            data = _read(sock, 1 << 18)
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


def _receiver_worker(
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
    own) sends ordinary lines flat out while the senders send.
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
        why = _why_not(targets.first)
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
                target=_receiver_worker,
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

            flooding = flooding_client(targets.first, seconds=messages / rate + 1 if rate else 10.0)
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
            data = _read(ready, 1 << 16)
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


def as_dict(result: Any) -> dict[str, Any]:
    return asdict(result)
