"""ClusterService: the chat core of a server in a cluster (ChatCore's interface, Redis underneath).

Threads, each with one job:

- the reader (the server's) hands a member's lines over: ``receive()``
  interprets them into steps and queues them, nothing more; the accept
  thread's ``join()`` queues the arrivals.
- the *publisher* owns writes to Redis: it carries the queued steps out in
  order (a burst of chat lines from many members is one pipeline, one script
  call per room), and recovers after Redis failed.
- the *subscriber* reads the channels of the rooms this server has members
  in, and of its own private messages, and delivers (see LocalView).
- the *housekeeper* beats the heart, and cleans up after servers that
  stopped beating.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from socketlab.chat.cluster.backend import Backend, Subscriber
from socketlab.chat.cluster.events import Private, decode, encode, Said
from socketlab.chat.cluster.view import Delivery, LocalMember, LocalView
from socketlab.chat.commands import Join, Msg, Nick, Quit, Reply, Rooms, Say, Step, Who, interpret
from socketlab.chat.protocol import ChatHub
from socketlab.chat.service import QUIT, SHUTDOWN_REASON, client_log, hand_over
from socketlab.chat.words import LOBBY, RESERVED_NAME, ROOMS_PAGE, WHO_PAGE, error, name_key, notice, paged
from socketlab.errors import SocketlabError
from socketlab.lines import Item

logger = logging.getLogger("socketlab.chat.cluster")

#: Seconds between a server's heartbeats, and how long a server may stay silent before it counts as lost.
HEARTBEAT = 1.0
ALIVE_FOR = 3.0
#: Retry delays after Redis failed: from the first to the largest, doubling.
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
#: Steps one member may have waiting for the publisher before its lines wait in the kernel (TCP flow control).
MEMBER_QUEUE = 64
#: Steps a member whose lines the reader cannot hold back (Socket.IO's) may have waiting; more are refused.
MEMBER_QUEUE_MAX = 1024
#: Steps the publisher takes at once at most: arrivals seated by one script, lines in one pipeline.
ARRIVALS = 500
#: Batches a room's channel may bring while its log is read after a failure (they are in the log too).
FILL_BUFFER = 10_000
#: How long (ms) a room's version in the index outlives its last change.
VERSION_KEEP_MS = 86_400_000

UNAVAILABLE = b"! chat backend unavailable, retrying\n"
BACK = b"* chat backend is back\n"
LOST_CONTACT = b"! lost contact with the chat cluster, disconnecting\n"


class ClusterError(SocketlabError):
    """The cluster cannot be joined (Redis unreachable, settings that disagree); one readable line."""


@dataclass(frozen=True, slots=True)
class Connect:
    """A member arrived: give it a number and a name, and put it in the lobby."""


@dataclass(frozen=True, slots=True)
class Depart:
    """A member left (*reason*; empty after /quit)."""

    reason: str


@dataclass(eq=False)
class Job:
    """One step of one member, waiting for the publisher."""

    member: LocalMember
    step: Step | Connect | Depart
    queued_at: float = field(default_factory=time.monotonic)
    #: A /join's room of departure, noted when it is first tried (a retry after a failure moves from there).
    origin: str | None = None


@dataclass(eq=False)
class _SayCall:
    """Chat lines of several members for one room: one script call, retried as it was after a failure."""

    room: str
    seq: int
    batch: bytes
    jobs: list[Job] = field(default_factory=list)


class ClusterService:
    """The chat core for a server in a cluster: ChatService's interface, Redis underneath.

    ``start()`` joins the cluster (raises ClusterError); ``stop()`` leaves it.
    """

    def __init__(self, hub: ChatHub, url: str, cluster: str = "socketlab", name: str = "") -> None:
        self.backend = Backend(url, cluster)
        self.keys = self.backend.keys
        self.url = url
        self.hub = hub  # its settings: room size, line limit, announcements (members live in Redis)
        self.lock = threading.Lock()
        self.shutting_down = False
        self.server_id = secrets.token_hex(4)
        self.name = name or self.server_id
        self.cluster = cluster
        self.available = True
        self.view = LocalView(hub.announce_limit, announce_rate=hub.announce_rate)
        self._next_key = 0
        self._jobs: deque[Job] = deque()
        self._work = threading.Condition(threading.Lock())
        self._inflight: list[_SayCall] = []
        self._seq = 0
        self._epoch = ""
        #: Per room this server listens to: the version of the last batch applied (a gap is filled from the log).
        self._seen: dict[str, str] = {}
        self._filling: dict[str, list[tuple[str, bytes]]] = {}
        #: Set while Redis is unavailable: the rooms' channels are not trusted until they are read again.
        self._deaf = False
        #: Failures seen so far: a recovery is good only if none came while it ran.
        self._failures = 0
        self._running = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscriber: Subscriber | None = None
        self._departing: dict[str, LocalMember] = {}
        #: How many of this server's members (departing ones included) target each room: those it must hear.
        self._targets: Counter[str] = Counter()
        #: Set by the server: read this client again (its lines waited for the publisher; see receive()).
        self.resume_reading: Callable[[Any], None] | None = None
        #: Counters, as ChatService keeps them (read by socketlab.metrics).
        self.lines_received = self.bytes_received = self.lines_delivered = self.bytes_delivered = 0
        self.joins = self.departures = self.dropped_too_slow = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the cluster's settings, start listening and beating; raises ClusterError."""
        try:
            self.backend.connect()
            self._join_config()
            self._beat()
            self._subscriber = Subscriber(self.backend, self._on_message, self._unavailable)
            self._subscriber.start()
            self._subscriber.subscribe([self.keys.server_channel(self.server_id)])
        except self.backend.errors as error:
            if self._subscriber is not None:
                self._subscriber.stop()
            raise ClusterError(f"cannot reach Redis at {redact(self.url)}: {describe(error)}") from None
        self._running = True
        for target, thread_name in ((self._publish_forever, "cluster-publisher"), (self._housekeeping, "cluster-heartbeat")):
            thread = threading.Thread(target=target, name=thread_name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Publish what is left (departures, within a second or two), stop the threads, leave the cluster."""
        deadline = time.monotonic() + 2.0
        with self._work:
            while self._jobs and self.available and time.monotonic() < deadline:
                self._work.wait(0.05)
        self._running = False
        self._stopping.set()
        with self._work:
            self._work.notify_all()
        for thread in self._threads:
            thread.join(1.0)
        try:
            pipe = self.backend.pipeline()
            pipe.hdel(self.keys.beats, self.server_id)
            pipe.execute()
        except self.backend.errors:
            pass
        if self._subscriber is not None:
            self._subscriber.stop()
        self.backend.close()

    def _join_config(self) -> None:
        """Agree on the settings with the running servers (ClusterError if they differ); learn the epoch."""
        stored = self._settings()
        for name, value in self._wanted().items():
            if stored.get(name, value) != value:
                option = "--" + name.replace("_", "-")
                raise ClusterError(f"this cluster's servers use {option} {stored[name]}; this one was given {value}")
        pipe = self.backend.pipeline()
        pipe.set(self.keys.epoch, secrets.token_hex(8), nx=True)
        pipe.get(self.keys.epoch)
        pipe.zadd(self.keys.index, {LOBBY: 0})
        self._epoch = pipe.execute()[1].decode()

    def _wanted(self) -> dict[str, str]:
        return {"room_size": str(self.hub.room_size), "max_line": str(self.hub.max_line)}

    def _settings(self) -> dict[str, str]:
        """Write our settings where none are (a cluster starting), keep them alive; return the cluster's."""
        config = self.keys.config
        pipe = self.backend.pipeline()
        for name, value in self._wanted().items():
            pipe.hsetnx(config, name, value)
        pipe.pexpire(config, int(ALIVE_FOR * 1000))
        pipe.hgetall(config)
        return {k.decode(): v.decode() for k, v in pipe.execute()[-1].items()}

    # -- the interface the reader and server use ------------------------------------------------------

    def join(self, transports: Sequence[Any]) -> list[LocalMember] | None:
        """Queue new clients' arrival; None (and a line to each) when they cannot join now."""
        members = []
        with self.lock:
            if self.shutting_down or not self.available:
                if not self.shutting_down:
                    for transport in transports:
                        transport.send(b"! chat backend unavailable, try again later\n")
                return None
            for transport in transports:
                self._next_key += 1
                member = LocalMember(self._next_key, f"{self.server_id}:{self._next_key}", transport)
                self.view.add(member)
                members.append(member)
        self._queue([Job(member, Connect()) for member in members])
        return members

    def receive(self, member: LocalMember, items: list[Item]) -> bool:
        """Queue a member's lines, interpreted into steps; False when it has too many waiting (stop reading it)."""
        if self.shutting_down or member.quitting:
            return True
        count = len(items)
        self.lines_received += count
        self.bytes_received += sum(len(item) + 1 for item in items if isinstance(item, bytes))
        if not self.available:
            with self.lock:
                member.transport.send(
                    f"! not delivered: {count} line{'s' if count != 1 else ''} (chat backend unavailable)\n".encode()
                )
            return True
        if member.waiting >= MEMBER_QUEUE_MAX:  # a member the reader cannot hold back (Socket.IO), far ahead
            with self.lock:
                member.transport.send(
                    f"! not delivered: {count} line{'s' if count != 1 else ''} (this server is behind)\n".encode()
                )
            return False
        steps = interpret(items, self.hub.max_line)
        if steps and isinstance(steps[-1], Quit):  # interpret() stops at a /quit: what follows is never taken
            member.quitting = True
        return not self._queue([Job(member, step) for step in steps], member)

    def depart(self, member: LocalMember, reason: str | None) -> None:
        """A member left: it hears nothing more, and its departure goes to its room."""
        if reason == QUIT:
            reason = None
        with self.lock:
            if self.shutting_down and reason == "disconnected":
                reason = SHUTDOWN_REASON
            self.view.remove(member)
            self._departing[member.id] = member
            self.departures += 1
            if reason == "too slow":
                self.dropped_too_slow += 1
        self._queue([Job(member, Depart(reason or ""))])

    def flush(self) -> None:
        """Nothing to do: the publisher thread publishes as soon as steps are queued."""

    def shut_down(self) -> bool:
        """Tell local members the server is going and close them; False if already done."""
        with self.lock:
            if self.shutting_down:
                return False
            self.shutting_down = True
            for member in list(self.view.members.values()):
                member.transport.send(f"* {SHUTDOWN_REASON}\n".encode())
                member.transport.close(SHUTDOWN_REASON)
            return True

    def close_members(self, select: Callable[[Any], bool], reason: str, line: bytes) -> None:
        with self.lock:
            for member in list(self.view.members.values()):
                if select(member.transport):
                    member.transport.send(line)
                    member.transport.close(reason)

    def local_transports(self) -> list[Any]:
        with self.lock:
            return [member.transport for member in self.view.members.values()]

    def local_members(self) -> list[LocalMember]:
        with self.lock:
            return list(self.view.members.values())

    def figures(self) -> dict[str, float]:
        """What an operator sees of the cluster (one Redis round trip; raises the backend's errors).

        ``members`` and ``rooms``: the cluster's (the lobby counts when anyone is in it); ``listening``:
        rooms this server hears; ``unpublished``: steps waiting for the publisher; ``lag_seconds``:
        how long the oldest of them has waited.
        """
        with self._work:
            oldest = self._jobs[0].queued_at if self._jobs else None
            unpublished = len(self._jobs) + sum(len(call.jobs) for call in self._inflight)
        with self.lock:
            listening = len(self._seen)
        pipe = self.backend.pipeline()
        pipe.hlen(self.keys.members)
        pipe.zcard(self.keys.index)
        pipe.zcard(self.keys.room(LOBBY)[0])
        members, indexed, in_lobby = pipe.execute()
        return {
            "members": members,
            "rooms": indexed - (0 if in_lobby else 1),
            "listening": listening,
            "unpublished": unpublished,
            "lag_seconds": 0.0 if oldest is None else max(0.0, time.monotonic() - oldest),
        }

    def named(self, name: str) -> None:
        """Call this server *name* (its address) in the others' logs from now on."""
        self.name = name
        try:
            self.backend.client.hset(self.keys.addresses, self.server_id, name)
        except self.backend.errors:  # the heartbeat says it again
            pass

    def _deliver(self, deliveries: list[Delivery]) -> None:
        hand_over(self, deliveries)

    def _reply(self, member: LocalMember, data: bytes) -> None:
        with self.lock:
            if member.id in self.view.members:
                self._deliver([([member], data)])

    # -- the publisher ---------------------------------------------------------------------------------

    def _queue(self, jobs: list[Job], sender: LocalMember | None = None) -> bool:
        """Queue *jobs* for the publisher; True when *sender* now has MEMBER_QUEUE steps waiting: it is
        held (not read) until the publisher has taken half of them out and calls resume_reading."""
        with self._work:
            for job in jobs:
                job.member.waiting += 1
            self._jobs.extend(jobs)
            self._work.notify()
            if sender is not None and sender.waiting >= MEMBER_QUEUE and self.resume_reading is not None:
                sender.held = True  # decided under the lock _done() takes: the release cannot be missed
                return True
        return False

    def _publish_forever(self) -> None:
        delay = RETRY_FIRST
        while self._running:
            with self._work:
                while self._running and not self._jobs and not self._inflight and self.available:
                    self._work.wait(1.0)
            if not self._running:
                return
            try:
                if not self.available:
                    self._recover()
                self._retry_inflight()
                self._run_jobs()
                delay = RETRY_FIRST
            except self.backend.errors as failure:
                self._unavailable(failure)
                self._stopping.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
            except Exception as failure:  # a bug: never let the publisher die; log it, drop the step, go on
                logger.error("Error in the cluster's publisher: %s: %s", type(failure).__name__, failure)
                self._inflight = []
                if self._jobs:
                    self._done([self._jobs[0]])
                self._stopping.wait(RETRY_FIRST)

    def _run_jobs(self) -> None:
        """Carry out the queued steps, each member's in its order.

        Steps of the kind at the head of the queue go together, taken from the first ARRIVALS queued
        wherever no earlier step of the same member waits: chat lines in one pipeline, arrivals in one
        batch, moves in one batch (so a storm of arrivals, moves and first lines does not go one
        member at a time). Other steps go one by one.
        """
        while self._running:
            with self._work:
                if not self._jobs:
                    self._work.notify_all()  # stop() waits for an empty queue
                    return
                window = list(itertools.islice(self._jobs, ARRIVALS))  # a bounded look ahead: never the whole queue
            kind = type(window[0].step)
            batch = _first_steps(window, kind) if kind in (Say, Connect, Join) else window[:1]
            if kind is Say:
                self._publish_says(batch)
                continue
            if kind is Connect:
                self._connect([job.member for job in batch])
            elif kind is Join:
                self._move(batch)
            else:
                self._carry_out(batch[0])
            self._done(batch)

    def _done(self, jobs: list[Job]) -> None:
        """*jobs* are out of the queue; members held for them are read again."""
        released = []
        with self._work:
            if all(queued is job for queued, job in zip(self._jobs, jobs, strict=False)):  # the head of the queue (usual)
                for _ in jobs:
                    self._jobs.popleft()
            else:
                taken = set(jobs)
                self._jobs = deque(job for job in self._jobs if job not in taken)
            for job in jobs:
                member = job.member
                member.waiting -= 1
                if member.held and member.waiting <= MEMBER_QUEUE // 2:
                    member.held = False
                    released.append(member)
        if self.resume_reading is not None:
            for member in released:
                self.resume_reading(member.transport)

    def _publish_says(self, jobs: list[Job]) -> None:
        by_room: dict[str, list[Job]] = {}
        for job in jobs:
            if job.member.id in self.view.members:
                by_room.setdefault(job.member.target, []).append(job)
        calls = []
        for room, room_jobs in by_room.items():
            self._seq += 1
            batch = encode([Said(job.member.id, job.step.said_by(job.member.prefix)) for job in room_jobs])  # type: ignore[union-attr]
            calls.append(_SayCall(room, self._seq, batch, room_jobs))
        self._inflight = calls  # from now on a failure retries these very calls, not the jobs
        self._done(jobs)
        self._send_calls(calls)

    def _send_calls(self, calls: list[_SayCall]) -> None:
        if calls:
            self.backend.say_many(self.server_id, [(call.room, call.seq, call.batch) for call in calls])
        self._inflight = []

    def _retry_inflight(self) -> None:
        """Chat lines whose fate a failure left unknown: the same calls again (Redis applies each once)."""
        if self._inflight:
            self._send_calls(self._inflight)

    def _carry_out(self, job: Job) -> None:
        """One step that goes alone (lines, arrivals and moves go in batches: see _run_jobs)."""
        member, step = job.member, job.step
        if isinstance(step, Depart):
            self._depart(member, step.reason)
        elif member.id not in self.view.members:
            return  # left meanwhile: its remaining steps are moot
        elif isinstance(step, Reply):
            self._reply(member, step.data)
        elif isinstance(step, Nick):
            self._nick(member, step.name)
        elif isinstance(step, Who):
            self._who(member, step.page)
        elif isinstance(step, Rooms):
            self._rooms(member, step.page)
        elif isinstance(step, Msg):
            self._msg(member, step.name, step.text)
        elif isinstance(step, Quit):
            with self.lock:
                if member.id in self.view.members:
                    self._deliver([([member], notice("bye"))])
                    member.transport.close(QUIT)

    # -- steps ------------------------------------------------------------------------------------------

    def _connect(self, members: list[LocalMember]) -> None:
        """Arrivals: numbers and names for all (one pipeline), seated in the lobby by one script (one
        batch of joined events), recorded under this server (one pipeline)."""
        keys = self.keys
        pipe = self.backend.pipeline()
        for member in members:
            self.backend.script("CONNECT", [keys.numbers, keys.names, keys.members], [member.id, 0, "", ""], client=pipe)
        entries = pipe.execute()
        with self.lock:
            for member, entry in zip(members, entries, strict=True):
                number, given, _key = json.loads(entry)
                member.number = number
                if not member.name:
                    member.rename(given)
                if member.joining is None and member.room is None:  # not on a retry
                    member.joining = LOBBY
                    self._targets[LOBBY] += 1
            self.joins += len(members)
        self._listen(LOBBY)
        seats = json.dumps([[member.id, member.name] for member in members], ensure_ascii=False)
        reply = self.backend.room(LOBBY, "seat", self.server_id, 0, "", "", 0, seats)
        pipe = self.backend.pipeline()
        for member in members:
            self._registered(member, pipe)
        pipe.execute()
        for member, result in zip(members, reply[2:], strict=True):
            if result == b"same":  # seated already, by a try whose answer a failure lost
                self._arrived(member)

    def _depart(self, member: LocalMember, reason: str) -> None:
        if not member.name:
            self._departing.pop(member.id, None)
            return  # never joined
        room = member.target
        result, count, _present, version = self._room_op(room, "leave", member, reason)
        if result == "ok":
            self._index(room, version, count)
        keys = self.keys
        pipe = self.backend.pipeline()
        self.backend.script("RELEASE", [keys.names, keys.members], [member.id], client=pipe)
        pipe.hdel(keys.server_members(self.server_id), member.id)
        pipe.execute()
        with self.lock:  # done: until now a retry after a failure (and a repair) still knew it
            self._departing.pop(member.id, None)
            self._targets[room] -= 1
        self._forget_room(room)
        client_log.info("Client disconnected %s (%s)", member.name, reason or "quit")

    def _nick(self, member: LocalMember, name: str) -> None:
        if name == member.name:
            self._reply(member, notice(f"you are already {name}"))
            return
        if RESERVED_NAME.match(name):
            self._reply(member, error(f"nickname {name} is taken"))
            return
        keys = self.keys
        result = self.backend.script("RENAME", [keys.names, keys.members], [member.id, name, name_key(name)])
        if result != b"ok":
            self._reply(member, error(f"nickname {name} is taken"))
            return
        old = member.name
        with self.lock:
            member.rename(name)
        self._room_op(member.target, "rename", member, old)
        self._registered(member)
        client_log.info("%s is now known as %s", old, name)

    def _move(self, jobs: list[Job]) -> None:
        """Members of this server moving to rooms (each member once): their seats in one pipeline (in
        queue order, so two members racing for one room's last seat are decided in that order), then
        their departures from the old rooms, the index and their records in another."""
        todo = []
        for job in jobs:
            member, room = job.member, job.step.room  # type: ignore[union-attr]
            if member.id not in self.view.members:
                continue  # left meanwhile
            with self.lock:
                if job.origin is None:  # first try: aim at the new room (a retry after a failure was aimed)
                    job.origin = member.target
                    if room != job.origin:
                        member.joining = room  # its joined event, whenever it comes, moves it
                        self._targets[job.origin] -= 1
                        self._targets[room] += 1
            if room == job.origin:
                self._reply(member, notice(f"you are in {room}"))
            else:
                todo.append((member, room, job.origin))
        if not todo:
            return
        self._listen(*{room for _member, room, _old in todo})
        pipe = self.backend.pipeline()
        for member, room, _old in todo:
            self._room_op(room, "join", member, self.hub.room_size if room != LOBBY else 0, client=pipe)
        seated = []
        for (member, room, old), reply in zip(todo, pipe.execute(), strict=True):
            result, count, present, version = _room_reply(reply)
            if result == "full" or (result == "dup" and not present):
                with self.lock:
                    member.joining = None if old == member.room else old  # its target is its old room again
                    self._targets[room] -= 1
                    self._targets[old] += 1
                self._reply(member, error(f"room {room} is full ({count}/{self.hub.room_size})"))
                self._forget_room(room)
                continue
            if result != "ok":  # joined already, by a try whose answer a failure lost
                self._arrived(member)
            seated.append((member, room, old, result == "ok", version, count))
        if not seated:
            return
        pipe = self.backend.pipeline()  # leaving the old rooms and the bookkeeping: one round trip
        for member, room, old, joined, version, count in seated:
            self._room_op(old, "leave", member, "", client=pipe)
            if joined:
                self._index(room, version, count, pipe)
            self._registered(member, pipe)
        replies = iter(pipe.execute())
        left = []
        for member, room, old, joined, _version, _count in seated:
            result, count, _present, version = _room_reply(next(replies))
            for _ in range(2 if joined else 1):  # the index's answer, the record's
                next(replies)
            if result == "ok":
                left.append((old, version, count))
            client_log.info("%s left %s and joined %s", member.name, old, room)
        if left:
            pipe = self.backend.pipeline()
            for old, version, count in left:
                self._index(old, version, count, pipe)
            pipe.execute()
        for old in {old for _member, _room, old, *_rest in seated}:
            self._forget_room(old)

    def _who(self, member: LocalMember, page: int) -> None:
        room = member.target
        reply = self.backend.room(room, "who", self.server_id, 0, "", WHO_PAGE, (page - 1) * WHO_PAGE, "")
        count, names = int(reply[1]), [name.decode() for name in reply[2:]]
        if count <= WHO_PAGE and page == 1:
            self._reply(member, notice(f"in {room}: {', '.join(names)}"))
        else:
            self._reply(member, notice(paged(f"in {room}", count, page, WHO_PAGE, names, "/who")))

    def _rooms(self, member: LocalMember, page: int) -> None:
        client = self.backend.client
        total = client.zcard(self.keys.index)
        start = (page - 1) * ROOMS_PAGE
        names = [name.decode() for name in client.zrange(self.keys.index, start, start + ROOMS_PAGE - 1)]
        pipe = self.backend.pipeline()
        for name in names:
            pipe.zcard(self.keys.room(name)[0])
        counts = pipe.execute() if names else []
        entries = [f"{name} ({count})" for name, count in zip(names, counts, strict=True)]
        if total <= ROOMS_PAGE and page == 1:
            self._reply(member, notice(f"rooms: {', '.join(entries)}"))
        else:
            self._reply(member, notice(paged("rooms", total, page, ROOMS_PAGE, entries, "/rooms")))

    def _msg(self, member: LocalMember, name: str, text: str) -> None:
        keys = self.keys
        found = self.backend.script("LOOKUP", [keys.names, keys.members], [name_key(name)])
        if not found:
            self._reply(member, error(f"no such user {name}"))
            return
        target_id, entry = found[0].decode(), json.loads(found[1])
        data = f"<{member.name}> (private) {text}\n".encode()
        with self.lock:
            target = self.view.members.get(target_id)
            if target is not None:
                self._deliver([([target], data)])
        if target is None:
            server = target_id.partition(":")[0]
            batch = encode([Private(target_id, data)])
            heard = self.backend.script("PRIVATE", [keys.server_members(server)], [keys.server_channel(server), batch])
            if not heard:  # its server is not listening (away, or lost and not cleaned up yet)
                self._reply(member, error(f"not delivered: {entry[1]} cannot be reached now"))
                return
        if target_id != member.id:
            self._reply(member, notice(f"to {entry[1]}: {text}"))

    # -- Redis, for the steps -------------------------------------------------------------------------------

    def _room_op(
        self, room: str, op: str, member: LocalMember, argument: object, first: int = 0, client: Any = None
    ) -> tuple[str, int, int, str]:
        """A room script for *member*: (result, members now, whether it is one, the room's version)."""
        reply = self.backend.room(room, op, self.server_id, 0, member.id, member.name, argument, first, client=client)
        return ("queued", 0, 0, "") if client is not None else _room_reply(reply)

    def _index(self, room: str, version: str, count: int, client: Any = None) -> None:
        self.backend.script(
            "INDEX", [self.keys.index, self.keys.room_version(room)], [room, version, 1 if count else 0, VERSION_KEEP_MS], client
        )

    def _registered(self, member: LocalMember, pipe: Any = None) -> None:
        """Note *member* (name, room) under this server, for whoever cleans up after it."""
        record = json.dumps([member.name, member.target], ensure_ascii=False)
        (pipe or self.backend.client).hset(self.keys.server_members(self.server_id), member.id, record)

    def _arrived(self, member: LocalMember) -> None:
        """*member* is in the room it was joining although its joined event went by: it hears it from now on."""
        with self.lock:
            if member.id in self.view.members:
                self._deliver(self.view.arrived(member))

    def _listen(self, *rooms: str) -> None:
        """Hear *rooms*' channels (before seating anyone there, so that nothing after the seat is missed)."""
        assert self._subscriber is not None
        new = [room for room in rooms if room not in self._seen]
        if new:
            self._subscriber.subscribe([self.keys.room_channel(room) for room in new])
            with self.lock:
                for room in new:
                    self._seen.setdefault(room, "")

    def _forget_room(self, room: str) -> None:
        """Stop hearing *room* when no member of this server is in it, on its way in, or leaving it.

        By target, not by the room a member still hears: a member moving on stops hearing its old room
        now, and one whose joined event has not come yet keeps its new room's channel.
        """
        with self.lock:
            if self._targets[room] > 0:
                return
            self._seen.pop(room, None)
        assert self._subscriber is not None
        self._subscriber.unsubscribe([self.keys.room_channel(room)])

    # -- the subscriber ---------------------------------------------------------------------------------

    def _on_message(self, channel: str, message: bytes) -> None:
        """A batch on one of our channels (subscriber thread)."""
        version, _, batch = message.partition(b" ")
        try:
            events = decode(batch)
        except (ValueError, KeyError, TypeError) as failure:
            logger.error("Skipping a malformed batch on %s: %s: %s", channel, type(failure).__name__, failure)
            return
        room = _room_of(channel)
        with self.lock:
            if room is None:
                for event in events:
                    if isinstance(event, Private):
                        self._deliver(self.view.private(event))
                return
            if self._deaf:
                return  # Redis failed: what the rooms say now is read from their logs on recovery
            buffered = self._filling.get(room)
            if buffered is not None:
                if len(buffered) < FILL_BUFFER:
                    buffered.append((version.decode(), batch))
                return
            self._apply(room, version.decode(), events)

    def _apply(self, room: str, version: str, events: list[Any]) -> None:
        """One batch of *room*'s events, once (lock held)."""
        seen = self._seen.get(room)
        if seen is None:
            return  # no longer listening
        if seen and _order(version) <= _order(seen):
            return
        self._seen[room] = version
        for event in events:
            deliveries = self.view.room_event(room, event)
            if deliveries:
                self._deliver(deliveries)
            if getattr(event, "first", False):
                member = self.view.members.get(event.member)
                if member is not None:
                    client_log.info("Client connected %s as %s", member.transport.peer, member.name)

    def _fill_gaps(self, rooms: list[str]) -> None:
        """After listening again: what the rooms said meanwhile, from their logs, then what came since.

        A log keeps LOG_KEEP_MS of a room's events; if some after the last one applied are gone, the
        room's members here are told that lines did not reach them.
        """
        for room in rooms:
            with self.lock:
                seen = self._seen.get(room) or "0-0"
            entries, trimmed = self.backend.log_since(room, seen)
            with self.lock:
                if seen != "0-0" and trimmed is not None and _order(trimmed) > _order(seen):
                    hearing = list(self.view.rooms.get(room, {}))
                    if hearing:
                        self._deliver([(hearing, error(f"some of {room}'s lines did not reach you (this server was away)"))])
                for version, batch in entries:
                    self._apply(room, version, decode(batch))
                for version, batch in self._filling.pop(room, []):
                    self._apply(room, version, decode(batch))

    # -- failure and recovery ------------------------------------------------------------------------------

    def _unavailable(self, failure: BaseException) -> None:
        with self.lock:
            self._deaf = True
            self._failures += 1  # a recovery under way when this happens starts over (see _recover)
            if not self.available:
                return
            self.available = False
            for member in self.view.members.values():
                member.transport.send(UNAVAILABLE)
        logger.warning("Chat backend unavailable (%s); retrying", describe(failure))
        with self._work:
            self._work.notify()

    def _recover(self) -> None:
        """Redis answers again: listen again, put back what it lost, say so, then deliver what was missed.

        Runs on the publisher thread; any step that fails raises, and the next try starts over (each
        step does nothing where nothing is left to do), so members hear "back" once, when it is true.
        """
        with self.lock:
            failures = self._failures
        self.backend.reset_publishers()
        self.backend.client.ping()
        self.backend.load_scripts()  # a Redis that restarted lost them
        epoch = self.backend.client.get(self.keys.epoch)
        assert self._subscriber is not None
        self._subscriber.reset()
        rooms = sorted(set(self._seen))
        with self.lock:
            self._filling = {room: [] for room in rooms}  # what the rooms say from now on waits for their logs
            self._deaf = False
        self._subscriber.subscribe([self.keys.server_channel(self.server_id)] + [self.keys.room_channel(r) for r in rooms])
        new_epoch = (epoch or b"").decode() != self._epoch
        if new_epoch:
            self._join_config()
        self._repair()
        with self.lock:
            if self._failures != failures:  # the channels broke again meanwhile: not back yet
                raise ConnectionError("Redis failed again while the chat recovered")
            self.available = True
            for member in self.view.members.values():
                member.transport.send(BACK)
        logger.warning("Chat backend is back")
        if new_epoch:
            logger.warning("Redis lost the chat's state: a new epoch, %d local members re-announced", len(self.view.members))
        self._fill_gaps(rooms)

    def _repair(self) -> None:
        """Put this server's members back where Redis lost them (each step does nothing where nothing was lost)."""
        with self.lock:
            members = [m for m in list(self.view.members.values()) + list(self._departing.values()) if m.name]
        keys = self.keys
        for member in members:
            self.backend.script(
                "CONNECT",
                [keys.numbers, keys.names, keys.members],
                [member.id, member.number, member.name, name_key(member.name)],
            )
            room = member.target
            result, count, _present, version = self._room_op(room, "restore", member, 0)
            if result == "ok":
                self._index(room, version, count)
            self._registered(member)

    # -- heartbeat, lost servers -------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HEARTBEAT):
            if not self.available:
                continue
            try:
                self._beat()
            except self.backend.errors as failure:
                self._unavailable(failure)

    def _beat(self) -> None:
        keys = self.keys
        lost, epoch, silent = self.backend.script(
            "BEAT", [keys.beats, keys.lost(self.server_id), keys.epoch, keys.clock], [self.server_id, int(ALIVE_FOR * 1000)]
        )
        pipe = self.backend.pipeline()
        pipe.hset(keys.addresses, self.server_id, self.name)
        self._settings()
        pipe.execute()
        if lost:
            self._lost_contact()
        if self._running and epoch.decode() != self._epoch:
            self._unavailable(ConnectionError("Redis lost the chat's state"))
        for server in silent:
            self._clean_up_after(server.decode())

    def _lost_contact(self) -> None:
        """The others gave up on us (we were silent too long): our members are gone for them; close them."""
        logger.warning("The cluster counted this server as lost; closing its members")
        with self.lock:
            for member in list(self.view.members.values()):
                member.transport.send(LOST_CONTACT)
                member.transport.close("server lost")

    def _clean_up_after(self, server: str) -> None:
        """A server stopped beating: if this server wins the claim, its members leave everywhere."""
        keys = self.keys
        if not self.backend.script("CLAIM", [keys.beats, keys.lost(server), keys.clock], [server, int(ALIVE_FOR * 1000)]):
            return
        name = self.backend.client.hget(keys.addresses, server)
        logger.warning("Server %s of the cluster is lost; its members leave", name.decode() if name else server)
        records = self.backend.client.hgetall(keys.server_members(server))
        for member_id, record in records.items():
            member_name, room = json.loads(record)
            reply = self.backend.room(room, "leave", self.server_id, 0, member_id.decode(), member_name, "server lost", 0)
            if reply[0] == b"ok":
                self._index(room, reply[3].decode(), int(reply[1]))
            self.backend.script("RELEASE", [keys.names, keys.members], [member_id])
        self.backend.client.delete(keys.server_members(server))


def _first_steps(window: list[Job], kind: type) -> list[Job]:
    """The steps of *kind* in *window* that are their member's first there (so each member's steps
    keep their order), and for moves one per member."""
    taken: list[Job] = []
    waiting: set[str] = set()  # members with an earlier step still in the queue
    for job in window:
        member = job.member.id
        if member in waiting:
            continue
        if isinstance(job.step, kind):
            taken.append(job)
            if kind is Join:
                waiting.add(member)
        else:
            waiting.add(member)
    return taken


def _room_reply(reply: Any) -> tuple[str, int, int, str]:
    result, count, present, version = reply
    return result.decode(), int(count), int(present), version.decode() if isinstance(version, bytes) else str(version)


def _room_of(channel: str) -> str | None:
    """The room whose channel *channel* is (None: a server's own channel)."""
    tag = channel[channel.index("{") + 1 : channel.index("}")]
    _cluster, kind, rest = tag.rsplit(":", 2) if tag.count(":") >= 2 else ("", "", "")
    return rest if kind == "r" else None


def _order(version: str) -> tuple[int, int]:
    millis, _, seq = version.partition("-")
    return int(millis or 0), int(seq or 0)


def redact(url: str) -> str:
    """*url* without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


def describe(failure: BaseException) -> str:
    text = str(failure) or type(failure).__name__
    return text[:1].lower() + text[1:]
