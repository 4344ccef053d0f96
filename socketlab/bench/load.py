"""A load process of the rooms workloads: its members, their epoll loop and their tally.

:func:`load_process` runs in a process forked by
:func:`socketlab.bench.pairs.run_rooms`, which tells it, through its end of
a pipe, when to connect (``"connect"``) and when to start speaking
(``("go", start_ns)``); it answers each step with a report
(``("ready", members)``, ``("joined", {...})``, ``("done", {...})``),
``("error", sentence)`` when it cannot go on, or ``("bug", traceback)``.
See :mod:`socketlab.bench.pairs` for the phases. One thread, one epoll
set, no thread per member; members are plain objects with ``__slots__``
(about 19,000 of them fit comfortably in a few processes).
"""

from __future__ import annotations

import array
import collections
import errno
import gc
import math
import os
import select
import socket
import struct
import time
import traceback
from dataclasses import dataclass
from typing import Any

from socketlab.bench.chat import QUIET_END, SETTLE_LIMIT, SETTLE_QUIET, cpu_seconds
from socketlab.bench.joins import JOIN_CHECK, JOIN_LIMIT, JOIN_RETRY
from socketlab.bench.rooms import RoomPlan, source_address
from socketlab.bench.speakers import Speaker, speaker_for
from socketlab.bench.tally import Receipts, Totals, make_message

#: Seconds from the first connect after which members not yet welcomed are given up (the kernel would retry
#: a dropped SYN for two minutes).
STORM_LIMIT = 60.0
#: After a member is welcomed, its room's next check line goes out this soon (the member's join first), once
#: every member of the room is welcomed.
JOIN_NUDGE = 0.05
#: After the last line is said, copies still missing are waited for at most this long.
TAIL_LIMIT = 30.0
#: How often a load process updates its progress counters.
COUNT_EVERY = 0.25
#: Linux's IP_BIND_ADDRESS_NO_PORT (Python 3.10 lacks the name): a bound source address takes its port at
#: connect(), unique per destination, instead of at bind().
_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Linux's SO_TIMESTAMPNS (Python does not name it everywhere): the kernel stamps what a socket receives
#: with its arrival time, so a copy's latency does not include the time it waited for this process to read it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
#: Room for one stamp (a struct timespec) in recvmsg()'s ancillary data.
_STAMP_SPACE = socket.CMSG_SPACE(16)

# A member's state: waiting for its turn to connect, connecting (TCP), opening (the transport's handshake
# and the server's welcome), welcomed (its join sent; confirmed or not), closed.
QUEUED, CONNECTING, OPENING, WELCOMED, CLOSED = range(5)


@dataclass(frozen=True)
class LoadJob:
    """One load process's part: the rooms it holds (indices into the plan) and where each one's server is."""

    plan: RoomPlan
    rooms: tuple[int, ...]
    #: Each room's server (a resolved address) and socket family, in the order of *rooms*.
    servers: tuple[tuple[int, tuple[Any, ...]], ...]
    transport: str
    #: Source addresses to rotate over (0: do not bind, the server is not on 127.0.0.0/8).
    sources: int
    #: This process's slots in the shared progress counters.
    slot: int
    #: Members connecting (not yet welcomed) at once at most (0: all of them at once, as after a restart).
    window: int = 0


class Member:
    """One member as its load process keeps it."""

    __slots__ = ("id", "room", "sock", "fd", "speaker", "out", "state", "connect_ns", "welcome_ns", "confirmed", "receipts")

    def __init__(self, member_id: int, room: "Room", sock: socket.socket, speaker: Speaker) -> None:
        self.id = member_id
        self.room = room
        self.sock = sock
        self.fd = sock.fileno()
        self.speaker = speaker
        #: Bytes the kernel did not take yet (sent before anything else).
        self.out = b""
        self.state = QUEUED
        self.connect_ns = 0
        self.welcome_ns = 0
        self.confirmed = False
        self.receipts: Receipts | None = None


class Room:
    """One room as its load process keeps it while the joins are confirmed."""

    __slots__ = ("index", "name", "members", "prober", "next_check", "settled", "last_change")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.members: list[Member] = []
        #: The member that sends the check lines (the first one welcomed and still there).
        self.prober: Member | None = None
        self.next_check = math.inf
        self.settled = False
        #: When a member was last welcomed or lost (monotonic s): the room's confirmation limit runs from it.
        self.last_change = 0.0


class LoadLoop:
    """The members of one load process, their epoll loop and their tally (runs in the forked process)."""

    def __init__(self, job: LoadJob, link: Any, counters: Any) -> None:
        self.job = job
        self.plan = job.plan
        self.link = link
        self.counters = counters
        self.poller = select.epoll()
        self.poller.register(link.fileno(), select.EPOLLIN)
        self.by_fd: dict[int, Member] = {}
        self.rooms: list[Room] = []
        self.members: list[Member] = []
        self.addresses: dict[int, tuple[Any, ...]] = {}
        self.buffer = bytearray(1 << 18)
        self.view = memoryview(self.buffer)
        self.refused = self.failed = self.connected = self.welcomed = 0
        #: Members connecting or opening now (see LoadJob.window).
        self.in_flight = 0
        self.first_problem = ""
        self.measuring = False
        #: The joined members, and the same in the order they speak with each one's offset (see prepare()).
        self.speaking: list[Member] = []
        self.schedule: list[Member] = []
        self.offsets: list[int] = []
        self.totals = Totals()
        self.received = 0
        #: Copies of members' own lines read so far (a server that echoes).
        self.echoes = 0
        self.last_copy_ns = 0
        self.dropped = 0
        #: Whether the members' sockets stamp arrivals (see prepare()), the stamp of the last read (monotonic ns;
        #: 0: none) and the wall clock's lead over the monotonic one (the stamps are wall-clock times).
        self.stamping = False
        self.arrived_ns = 0
        self.clock_lead_ns = 0

    # -- sockets ---------------------------------------------------------------------------------

    def open_sockets(self) -> None:
        """Make every member's socket (bound to its source address), none connected yet."""
        plan, starts = self.plan, self.plan.starts
        for room_index, (family, address) in zip(self.job.rooms, self.job.servers, strict=True):
            room = Room(room_index, plan.room_name(room_index))
            self.rooms.append(room)
            for member_id in range(starts[room_index], starts[room_index] + plan.sizes[room_index]):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.job.sources and family == socket.AF_INET:
                    try:
                        sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass
                    sock.bind((source_address(member_id, self.job.sources), 0))
                member = Member(member_id, room, sock, speaker_for(self.job.transport, (address[0], address[1])))
                self.addresses[member.fd] = address
                room.members.append(member)
                self.members.append(member)
                self.by_fd[member.fd] = member

    def close(self) -> None:
        for member in self.members:
            member.sock.close()
        self.poller.close()

    def _problem(self, text: str) -> None:
        if not self.first_problem:
            self.first_problem = text

    def _end(self, member: Member) -> None:
        """Close *member* (its room learns it at the next sweep)."""
        if member.state == CLOSED:
            return
        if self.measuring and member.confirmed:
            self.dropped += 1
        if member.state in (CONNECTING, OPENING):
            self.in_flight -= 1
        member.state = CLOSED
        try:
            self.poller.unregister(member.fd)
        except (OSError, ValueError):
            pass
        member.sock.close()
        member.room.last_change = time.monotonic()

    def _send(self, member: Member, data: bytes) -> None:
        """Send *data* after whatever is waiting; what the kernel does not take waits for EPOLLOUT."""
        if member.state == CLOSED or not data:
            return
        if member.out:
            member.out += data
            return
        try:
            sent = member.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end(member)
            return
        if sent < len(data):
            member.out = data[sent:]
            self.poller.modify(member.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, member: Member) -> None:
        try:
            sent = member.sock.send(member.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._end(member)
            return
        member.out = member.out[sent:]
        if not member.out:
            self.poller.modify(member.fd, select.EPOLLIN)

    def _read(self, member: Member) -> bytes | None:
        """The chat lines that arrived for *member* (None: nothing, or it closed); its answers are sent."""
        try:
            if self.stamping:
                count, ancillary, _, _ = member.sock.recvmsg_into([self.view], _STAMP_SPACE)
                self.arrived_ns = self._arrival(ancillary)
            else:
                count = member.sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            count = 0
        if not count:
            if member.state != WELCOMED:
                self.failed += member.speaker.refused is None
                self.refused += member.speaker.refused is not None
                self._problem(member.speaker.refused or "the server closed the connection before its welcome")
            self._end(member)
            return None
        speaker = member.speaker
        payload = speaker.receive(bytes(self.view[:count]))
        output = speaker.take_output()
        if output:
            self._send(member, output)
        return payload

    def _arrival(self, ancillary: list[tuple[int, int, bytes]]) -> int:
        """The kernel's arrival stamp in *ancillary* as a monotonic time (ns), or 0."""
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                return seconds * 1_000_000_000 + nanoseconds - self.clock_lead_ns
        return 0

    def _events(self, timeout: float) -> list[tuple[int, int]]:
        try:
            return self.poller.poll(timeout)
        except InterruptedError:
            return []

    # -- the storm and the joins -----------------------------------------------------------------

    def storm(self) -> dict[str, Any]:
        """Connect every member at once (or the job's window at a time), welcome, join and confirm them;
        what happened, for the parent."""
        first_ns = time.monotonic_ns()
        queue = collections.deque(self.members)
        window = self.job.window or len(self.members)
        self._connect_more(queue, window)
        storm_deadline = time.monotonic() + STORM_LIMIT
        unsettled = set(self.rooms)
        next_sweep = 0.0
        while unsettled:
            for fd, event in self._events(0.05):
                found = self.by_fd.get(fd)
                if found is None:
                    if fd == self.link.fileno():  # the parent is gone or gave up
                        raise SystemExit(1)
                    continue
                member = found
                if member.state == CONNECTING:
                    self._connected(member)
                    continue
                if member.state == CLOSED:
                    continue
                if event & select.EPOLLOUT and member.out:
                    self._flush(member)
                if event & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self._hear(member)
            if queue:
                self._connect_more(queue, window)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + JOIN_NUDGE
                for room in list(unsettled):
                    if self._sweep(room, now, now > storm_deadline):
                        unsettled.discard(room)
                self.counters[2 * self.job.slot] = self.welcomed
        self._drain()
        welcomed = [member for member in self.members if member.welcome_ns]
        waits = array.array("q", [member.welcome_ns - member.connect_ns for member in welcomed])
        return {
            "connected": self.connected,
            "welcomed": len(welcomed),
            "joined": sum(member.state == WELCOMED for member in self.members),
            "refused": self.refused,
            "failed": self.failed,
            "first_problem": self.first_problem,
            "first_connect_ns": first_ns,
            "last_welcome_ns": max((member.welcome_ns for member in welcomed), default=0),
            "welcome_waits": waits.tobytes(),
        }

    def _connect_more(self, queue: collections.deque[Member], window: int) -> None:
        """Start connecting the members next in *queue* while fewer than *window* are connecting or opening."""
        while queue and self.in_flight < window:
            member = queue.popleft()
            if member.state != QUEUED:  # given up already
                continue
            member.state = CONNECTING
            self.in_flight += 1
            member.connect_ns = time.monotonic_ns()
            code = member.sock.connect_ex(self.addresses[member.fd])
            if code in (0, errno.EINPROGRESS):
                self.poller.register(member.fd, select.EPOLLOUT)
            else:
                self.failed += 1
                self._problem(f"cannot connect: {os.strerror(code)}")
                self._end(member)

    def _connected(self, member: Member) -> None:
        code = member.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.failed += 1
            self._problem(f"cannot connect: {os.strerror(code)}")
            self._end(member)
            return
        self.connected += 1
        member.state = OPENING
        self.poller.modify(member.fd, select.EPOLLIN)
        self._send(member, member.speaker.opening())

    def _hear(self, member: Member) -> None:
        """Read *member* before the measurement: its welcome, then check lines."""
        payload = self._read(member)
        if member.state == CLOSED or payload is None:
            return
        speaker = member.speaker
        if member.state == OPENING:
            if speaker.refused is not None:
                self.refused += 1
                self._problem(f"refused: {speaker.refused}")
                self._end(member)
                return
            if not speaker.welcomed:
                return
            member.state = WELCOMED
            member.welcome_ns = time.monotonic_ns()
            self.in_flight -= 1
            self.welcomed += 1
            room = member.room
            speaker.join(room.name)
            now = time.monotonic()
            room.last_change = now
            if room.prober is None or room.prober.state == CLOSED:
                room.prober = member
            room.next_check = now + JOIN_NUDGE  # after the join of the room's latest member
            self._send(member, speaker.take_output())
        if speaker.join_refused is not None and not member.confirmed:
            self.refused += 1
            self._problem(f"refused a room: {speaker.join_refused}")
            self._end(member)
            return
        if JOIN_CHECK in payload and member.state == WELCOMED:
            member.confirmed = True
            prober = member.room.prober
            if prober is not None and prober.state == WELCOMED:
                prober.confirmed = True

    def _sweep(self, room: Room, now: float, storm_over: bool) -> bool:
        """Send *room*'s next check line when due; True once it is settled (the unconfirmed closed)."""
        pending = [member for member in room.members if member.state in (QUEUED, CONNECTING, OPENING)]
        if pending and storm_over:
            for member in pending:
                self.failed += 1
                self._problem("not welcomed within the storm's limit")
                self._end(member)
            pending = []
        here = [member for member in room.members if member.state == WELCOMED]
        if not pending:
            unconfirmed = [member for member in here if not member.confirmed]
            if len(here) <= 1:  # alone (the others failed): nobody to talk to
                for member in here:
                    self._end(member)
                room.settled = True
                return True
            if not unconfirmed or now - room.last_change > JOIN_LIMIT:
                for member in unconfirmed:
                    self._problem(f"a member of {room.name} heard no check line within {JOIN_LIMIT:g} s")
                    self._end(member)
                room.settled = True
                return True
        prober = room.prober
        if prober is None or prober.state != WELCOMED:
            prober = room.prober = here[0] if here else None
        # Checks go out once nobody of the room is still connecting: one heard before a member's own join
        # counts for nothing, and in a storm, where a room's last member may come seconds after its first,
        # a check every JOIN_RETRY meanwhile was load of the instrument's own on the server it measures.
        if prober is not None and not pending and now >= room.next_check:
            prober.speaker.say(JOIN_CHECK + b"\n")
            self._send(prober, prober.speaker.take_output())
            room.next_check = now + JOIN_RETRY
        return False

    def _drain(self) -> None:
        """Read (and drop) until the server has been quiet a while: the joins' notices and check lines settle."""
        deadline = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < deadline:
            events = [(fd, event) for fd, event in self._events(SETTLE_QUIET) if fd in self.by_fd]
            if not events:
                return
            for fd, event in events:
                self._idle_event(self.by_fd[fd], event)

    def _idle_event(self, member: Member, event: int) -> None:
        if member.state == CLOSED:
            return
        if event & select.EPOLLOUT and member.out:
            self._flush(member)
        if event & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read(member)

    def wait_for_go(self) -> int | None:
        """Keep reading (answering pings) until the parent says go; its start time (ns), or None: stop."""
        while True:
            for fd, event in self._events(1.0):
                member = self.by_fd.get(fd)
                if member is not None:
                    self._idle_event(member, event)
                elif fd == self.link.fileno():
                    try:
                        message = self.link.recv()
                    except EOFError:
                        return None
                    return int(message[1]) if message[0] == "go" else None

    # -- the measurement -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Before the start: the joined members' receipts and their schedule (members lost from now on are
        reported as dropped)."""
        plan = self.plan
        self.measuring = True
        self.speaking = [member for member in self.members if member.state == WELCOMED]
        for member in self.speaking:
            mates = [mate.id for mate in member.room.members if mate.state == WELCOMED and mate is not member]
            member.receipts = Receipts(self.totals, mates, plan.max_lines, own=member.id, keep_own=False)
        self.schedule = sorted(self.speaking, key=lambda member: plan.offset_ns(member.id))
        self.offsets = [plan.offset_ns(member.id) for member in self.schedule]
        try:
            for member in self.speaking:
                member.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return  # no stamps here: latencies run to the moment this process reads each copy
        self.stamping = True
        self.clock_lead_ns = _clock_lead_ns()

    def measure(self, start_ns: int) -> dict[str, Any]:
        """Say the plan's lines from *start_ns* on (after prepare()), read every copy; the tally, for the parent."""
        plan = self.plan
        speaking, schedule, offsets = self.speaking, self.schedule, self.offsets
        said = dict.fromkeys((member.id for member in schedule), 0)
        interval_ns, end_ns, size = plan.interval_ns, start_ns + plan.duration_ns, plan.size
        lags = array.array("q")
        position = rounds = lines = 0
        due = start_ns + offsets[0] if schedule else end_ns
        link_fd = self.link.fileno()
        gc.disable()  # no collector pauses inside the measurement
        cpu_start = cpu_seconds()
        last_count = time.monotonic()
        while due < end_ns:
            now_ns = time.monotonic_ns()
            while due <= now_ns and due < end_ns:
                member = schedule[position]
                if member.state == WELCOMED:
                    seq = said[member.id]
                    said[member.id] = seq + 1
                    member.speaker.say(make_message(member.id, seq, now_ns, size))
                    self._send(member, member.speaker.take_output())
                    lines += 1
                    lags.append(now_ns - due)
                    now_ns = time.monotonic_ns()
                position += 1
                if position == len(schedule):
                    position, rounds = 0, rounds + 1
                due = start_ns + offsets[position] + rounds * interval_ns
            self._measure_events(self._events(max(0.0, min(0.05, (due - time.monotonic_ns()) / 1e9))), link_fd)
            if time.monotonic() - last_count > COUNT_EVERY:
                last_count = time.monotonic()
                self.counters[2 * self.job.slot + 1] = lines
        self.counters[2 * self.job.slot + 1] = lines
        expected = sum(
            said[sender.id]
            for member in speaking
            for sender in member.room.members
            if sender is not member and sender.id in said and member.receipts is not None
        )
        self.last_copy_ns = max(self.last_copy_ns, end_ns)
        tail_end = time.monotonic() + TAIL_LIMIT
        # A server that echoes (any echo seen) owes every member its own lines too: wait for them, so the
        # echoes reported are all there are.
        while (self.received < expected or 0 < self.echoes < lines) and time.monotonic() < tail_end:
            if time.monotonic_ns() - self.last_copy_ns > QUIET_END * 1e9:
                break
            self._measure_events(self._events(0.05), link_fd)
        cpu = cpu_seconds() - cpu_start
        for member in speaking:
            if member.receipts is not None:
                member.receipts.analyse()
        gc.enable()
        totals = self.totals
        return {
            "lines": lines,
            "expected": expected,
            "delivered": totals.delivered,
            "duplicates": totals.duplicates,
            "garbled": totals.garbled,
            "order_violations": totals.order_violations,
            "strays": totals.strays,
            "echoes": totals.echoes,
            "dropped": self.dropped,
            "latencies": array.array("q", totals.latencies_ns).tobytes(),
            "read_latencies": array.array("q", totals.read_latencies_ns).tobytes(),
            "stamped": self.stamping,
            "lags": lags.tobytes(),
            "cpu": cpu,
            "end_ns": self.last_copy_ns,
        }

    def _measure_events(self, events: list[tuple[int, int]], link_fd: int) -> None:
        by_fd = self.by_fd
        for fd, event in events:
            member = by_fd.get(fd)
            if member is None:
                if fd == link_fd:
                    raise SystemExit(1)  # the parent is gone
                continue
            if member.state == CLOSED:
                continue
            if event & select.EPOLLOUT and member.out:
                self._flush(member)
            if not event & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                continue
            payload = self._read(member)
            receipts = member.receipts
            if payload and receipts is not None:
                now_ns = time.monotonic_ns()
                echoes = receipts.echoes_fed
                arrived_ns = self.arrived_ns
                if arrived_ns:
                    got = receipts.feed(payload, min(arrived_ns, now_ns), now_ns)
                elif self.stamping:  # a read without a stamp: its arrival is not known better than its read
                    got = receipts.feed(payload, now_ns, now_ns)
                else:
                    got = receipts.feed(payload, now_ns)
                if got:
                    self.received += got
                    self.last_copy_ns = now_ns
                if receipts.echoes_fed != echoes:
                    self.echoes += receipts.echoes_fed - echoes
                    self.last_copy_ns = now_ns


def _clock_lead_ns() -> int:
    """How far the wall clock is ahead of the monotonic one (ns): the closest of a few readings."""
    readings = []
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        readings.append((after - before, wall - (before + after) // 2))
    return min(readings)[1]


def load_process(job: LoadJob, link: Any, counters: Any) -> None:
    """A forked load process: see the module's docstring for its phases; every step is reported on *link*."""
    loop = None
    try:
        loop = LoadLoop(job, link, counters)
        try:
            loop.open_sockets()
        except OSError as error:
            link.send(("error", f"a load process could not open its {len(loop.members) + 1:,}th socket: {error.strerror}"))
            return
        link.send(("ready", len(loop.members)))
        if link.recv() != "connect":
            return
        link.send(("joined", loop.storm()))
        loop.prepare()
        start_ns = loop.wait_for_go()
        if start_ns is None:
            return
        link.send(("done", loop.measure(start_ns)))
        link.recv()  # the parent read every report: only now may the members go
    except (EOFError, BrokenPipeError, SystemExit):
        pass
    except BaseException:
        try:
            link.send(("bug", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if loop is not None:
            loop.close()
        link.close()
        os._exit(0)
