"""One chat across several servers through Redis: every server replays one stream of events.

Design (docs/cluster.md explains it at length):

- Every change to the chat -- a client connected, sent lines, left; a server
  was lost -- is an *event* appended to one Redis Stream per cluster. Every
  server reads that stream in order and applies each event to its own copy
  of the sans-IO :class:`~socketlab.chat.protocol.ChatHub`. The hub is
  deterministic, so every copy is the same: names are unique across servers
  (``user<N>`` numbering included), a room's last seat goes to whichever
  join the stream holds first, ``/who``, ``/rooms`` and ``/msg`` see every
  member, and every member of a room, on any server, sees its lines in the
  stream's one order.
- A server sends only what is addressed to its own members; the others
  are :class:`RemoteTransport` placeholders in its copy.
- A server's own clients' lines go through Redis like everyone's: the
  order is the stream's, never a local shortcut.
- Liveness: each server refreshes a key with a short expiry; a server that
  finds another's key gone twice in a row appends ``server lost`` for it, and
  every copy removes that server's members (``* NAME left ROOM (server lost)``).
- Snapshots: the server with the smallest id writes the hub's state with the
  id of the last event it holds, and trims the stream up to the previous
  snapshot, so the stream stays bounded and a server that starts later (or
  fell too far behind) loads the snapshot, then reads on from there.
- Redis lost: members are told ``! chat backend unavailable, retrying``;
  lines meanwhile are answered ``! not delivered: ...``. What was on its way
  when Redis failed (lines, arrivals) and departures meanwhile wait to be
  published; on recovery ``* chat backend is back``, then they go out. A
  failed XADD may still have reached Redis (a timeout says nothing either
  way), so events carry their server's sequence number and every server
  applies each event once, however many copies the stream holds. If Redis came back
  empty (a restart without persistence), the cluster starts a new *epoch*:
  every server clears its copy and re-announces its own members, names and
  rooms kept.

Redis is imported only here, so ``chat serve`` without ``--redis`` never loads it.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from socketlab.chat.protocol import ChatHub, Member
from socketlab.chat.service import SHUTDOWN_REASON, ChatService, client_log
from socketlab.errors import SocketlabError
from socketlab.lines import Item, LineTooLong

logger = logging.getLogger("socketlab.chat.cluster")

#: Seconds between a server's heartbeats, and how long its key outlives the last one.
HEARTBEAT = 1.0
ALIVE_FOR = 3.0
#: Seconds a server's name outlives its last heartbeat (for the others' log when it is lost).
NAME_FOR = 60.0
#: A snapshot is written this often (seconds), by the server with the smallest id.
SNAPSHOT_EVERY = 5.0
#: Events read per XREAD, and how long one waits (ms) for the first (also how soon stop() is seen).
READ_COUNT = 1000
READ_BLOCK_MS = 250
#: Seconds a Redis command may take before Redis counts as unavailable, and to connect.
REDIS_TIMEOUT, REDIS_CONNECT_TIMEOUT = 5.0, 3.0
#: Retry delays after Redis failed: from the first to the largest, doubling.
RETRY_FIRST, RETRY_MAX = 0.1, 2.0

UNAVAILABLE = b"! chat backend unavailable, retrying\n"
BACK = b"* chat backend is back\n"


class ClusterError(SocketlabError):
    """The cluster cannot be joined (Redis unreachable, settings that disagree); one readable line."""


def encode_items(items: Sequence[Item]) -> bytes:
    """Lines (and LineTooLong markers) as one netstring-like blob: ``5:hello-:`` ..."""
    return b"".join(b"-:" if isinstance(item, LineTooLong) else b"%d:%s" % (len(item), item) for item in items)


def decode_items(blob: bytes, limit: int) -> list[Item]:
    """The inverse of encode_items(); markers come back as LineTooLong(*limit*)."""
    items: list[Item] = []
    at = 0
    while at < len(blob):
        colon = blob.index(b":", at)
        head = blob[at:colon]
        if head == b"-":
            items.append(LineTooLong(limit))
            at = colon + 1
        else:
            end = colon + 1 + int(head)
            items.append(blob[colon + 1 : end])
            at = end
    return items


@dataclass(eq=False)
class RemoteTransport:
    """A member on another server, in this server's copy of the hub: nothing to send here."""

    server: str
    key: int
    peer: str = "(another server)"
    echo: bool = False

    def send(self, data: bytes) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class Ticket:
    """What the reader holds for a local client in cluster mode (its ``conn.member``)."""

    transport: Any
    key: int


class ClusterService:
    """The chat core for a server in a cluster: ChatService's interface, Redis underneath.

    ``start()`` joins the cluster (raises ClusterError); ``stop()`` leaves it.
    The reader calls ``flush()`` after each round to publish what it queued.
    """

    def __init__(self, hub: ChatHub, url: str, cluster: str = "socketlab", name: str = "") -> None:
        import redis  # the extra; imported only for --redis

        self._redis_errors = (redis.RedisError, OSError)
        self.redis: Any = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_CONNECT_TIMEOUT, health_check_interval=0
        )
        #: Connections of their own for the hot path: publishing (under the publish lock) and reading the stream.
        self._publisher: Any = self.redis.connection_pool.make_connection()
        self._stream_reader: Any = self.redis.connection_pool.make_connection()
        self.url = url
        self.hub = hub
        self.lock = threading.Lock()
        self.shutting_down = False
        self.server_id = secrets.token_hex(4)
        #: How this server is named to the others' logs (its address; the id when not given).
        self.name = name or self.server_id
        self.cluster = cluster
        self.prefix = f"socketlab:{cluster}:"
        self.events = self.prefix + "events"
        self.available = True
        self._epoch = ""
        self._last_id = "0-0"
        self._local: dict[int, Any] = {}  # key -> local transport (its member may not exist yet)
        self._key_of: dict[Any, int] = {}  # local transport -> key
        self._members: dict[tuple[str, int], Member] = {}
        self._next_key = 0
        self._queue: list[tuple[bytes, int, bytes, int]] = []  # events waiting to be published, numbered
        self._seq = 0  # the number of this server's last queued event
        #: Per server, the number of the last event applied: a copy published again after a failure is skipped.
        self._applied: dict[str, int] = {}
        self._publish_lock = threading.Lock()
        #: Events sent whose XADD replies are not read yet (publish lock).
        self._unconfirmed: list[tuple[bytes, int, bytes, int]] = []
        self._running = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._missing: set[str] = set()
        self._snapshot_due = 0.0
        #: Set by the housekeeping thread when the stream was trimmed past our last event.
        self._reload = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Check the cluster's settings, load its state, start reading; raises ClusterError."""
        try:
            self._join_config()
            self._load(initial=True)
            self._alive()
        except self._redis_errors as error:
            raise ClusterError(f"cannot reach Redis at {redact(self.url)}: {describe(error)}") from None
        self._running = True
        for target, name in ((self._consume, "cluster-reader"), (self._housekeeping, "cluster-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Publish what is left (departures), stop the threads, leave the cluster."""
        self.flush()
        self._running = False
        self._stopping.set()
        for thread in self._threads:
            thread.join(READ_BLOCK_MS / 1000 + 0.5)
        try:
            self.redis.delete(self.prefix + "alive:" + self.server_id)
        except self._redis_errors:
            pass
        for conn in (self._publisher, self._stream_reader):
            conn.disconnect()
        self.redis.close()

    def _join_config(self) -> None:
        """Agree on the settings with the running servers (ClusterError if they differ); learn the epoch.

        The settings bind the running servers only: their key lives ALIVE_FOR seconds past the last
        heartbeat, so once every server has stopped a cluster may start again with other settings.
        The epoch (which tells a Redis that lost its data) has a key of its own that does not expire.
        """
        stored = self._settings()
        for name, value in self._wanted().items():
            if stored.get(name, value) != value:
                option = "--" + name.replace("_", "-")
                raise ClusterError(f"this cluster's servers use {option} {stored[name]}; this one was given {value}")
        pipe = self.redis.pipeline()
        pipe.setnx(self.prefix + "epoch", secrets.token_hex(8))
        pipe.get(self.prefix + "epoch")
        self._epoch = pipe.execute()[-1].decode()

    def _wanted(self) -> dict[str, str]:
        return {"room_size": str(self.hub.room_size), "max_line": str(self.hub.max_line)}

    def _settings(self) -> dict[str, str]:
        """Write our settings where none are (a cluster starting), keep them alive; return the cluster's."""
        config = self.prefix + "config"
        pipe = self.redis.pipeline()
        for name, value in self._wanted().items():
            pipe.hsetnx(config, name, value)
        pipe.pexpire(config, int(ALIVE_FOR * 1000))
        pipe.hgetall(config)
        return {k.decode(): v.decode() for k, v in pipe.execute()[-1].items()}

    def _load(self, initial: bool = False) -> None:
        """Start from the latest snapshot, if any, then read the stream on from it."""
        raw = self.redis.get(self.prefix + "snapshot")
        with self.lock:
            self._members.clear()
            if raw is None:
                self.hub.reset()
                self._last_id = "0-0"
                self._applied = {}
                return
            state = json.loads(raw)
            self._applied = dict(state.get("applied", {}))
            identities: list[tuple[str, int]] = []

            def transport_for(identity: list[Any]) -> Any:
                identities.append((identity[0], identity[1]))
                return self._transport_for(identity)

            made = self.hub.import_state(state["hub"], transport_for)
            # Indexed by the identities in the snapshot: a member of this server has its own connection
            # as transport, which knows neither server nor key.
            self._members.update(zip(identities, made, strict=True))
            self._last_id = state["id"]

    def _transport_for(self, identity: list[Any]) -> Any:
        server, key = identity
        if server == self.server_id and key in self._local:
            return self._local[key]
        return RemoteTransport(server, key)

    # -- the interface the reader and server use --------------------------------

    def join(self, transports: Sequence[Any]) -> list[Ticket] | None:
        """Announce new clients to the cluster; None (and a line to each) when they cannot join now.

        If Redis fails while their arrival is published, they stay: they were
        told the backend is unavailable (with everyone here), and become
        members when their arrival goes out on recovery.
        """
        tickets = []
        with self.lock:  # so that _unavailable() either came first (refused) or tells them too
            if self.shutting_down or not self.available:
                if not self.shutting_down:
                    for transport in transports:
                        transport.send(b"! chat backend unavailable, try again later\n")
                return None
            for transport in transports:
                self._next_key += 1
                self._local[self._next_key] = transport
                self._key_of[transport] = self._next_key
                tickets.append(Ticket(transport, self._next_key))
        self._enqueue([(b"c", ticket.key, ticket.transport.peer.encode()) for ticket in tickets])
        self._publish()
        return tickets

    def receive(self, ticket: Ticket, items: list[Item]) -> None:
        """Queue a client's lines for the stream (published by flush()); /quit takes effect when applied."""
        if self.shutting_down:
            return
        if not self.available:
            with self.lock:
                self._not_delivered(ticket, len(items))
            return
        self._enqueue([(b"l", ticket.key, encode_items(items))])
        return

    def depart(self, ticket: Ticket, reason: str | None) -> None:
        """A local client left: its departure goes to the stream (kept until Redis takes it)."""
        self._enqueue([(b"d", ticket.key, (reason or "quit").encode())])

    def flush(self) -> None:
        """Publish what the reader queued (one write for all of it); while Redis is away, recovery does."""
        if (self._queue or self._unconfirmed) and self.available:
            self._publish()

    def shut_down(self) -> bool:
        """Tell local members the server is going and close them; False if already done."""
        with self.lock:
            if self.shutting_down:
                return False
            self.shutting_down = True
            for transport in self._local.values():
                transport.send(f"* {SHUTDOWN_REASON}\n".encode())
                transport.close(SHUTDOWN_REASON)
            return True

    def close_members(self, select: Callable[[Any], bool], reason: str, line: bytes) -> None:
        with self.lock:
            for transport in list(self._local.values()):
                if select(transport):
                    transport.send(line)
                    transport.close(reason)

    def local_transports(self) -> list[Any]:
        with self.lock:
            return list(self._local.values())

    #: Delivery is the lone server's: remote members' placeholders ignore what they are sent.
    deliver = staticmethod(ChatService.deliver)

    # -- publishing ---------------------------------------------------------------

    def _enqueue(self, events: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Queue events for the stream, each with this server's next sequence number."""
        with self._publish_lock:
            for kind, key, payload in events:
                self._seq += 1
                self._queue.append((kind, key, payload, self._seq))

    def _publish(self) -> bool:
        """XADD everything queued, in order; False (all of it kept for recovery) when Redis is away or fails.

        A failed XADD may have reached Redis all the same (a timeout, a reply
        lost): the events are published again on recovery, and the copies
        are applied once (see _apply()). So nothing is lost and nothing is
        told "not delivered" that was delivered.
        """
        with self._publish_lock:
            if not self.available:
                return False
            queue, self._queue = self._queue, []
            if not queue and not self._unconfirmed:
                return True
            try:
                self._confirm()
                if queue:
                    self._xadd_all(queue)
                return True
            except self._redis_errors as error:
                self._publisher.disconnect()  # a reply may be half read: start the next use afresh
                failure = error
                self._queue = self._unconfirmed + queue + self._queue
                self._unconfirmed = []
        self._unavailable(failure)
        return False

    def _xadd_all(self, queue: list[tuple[bytes, int, bytes, int]]) -> None:
        """Send an XADD per event, in one write, on the publisher's own connection (publish lock held).

        The hot path of the cluster: redis-py's connection without the
        client's per-command machinery (measured here: 37 against 68 µs of
        CPU per XADD), and no wait for the replies: they are read by the next
        publish, or within a heartbeat (_confirm()), and what they do not
        confirm is published again if Redis fails meanwhile.
        """
        conn = self._publisher
        commands = [
            ("XADD", self.events, "*", "e", kind, "s", self.server_id, "k", key, "n", seq, "p", payload)
            for kind, key, payload, seq in queue
        ]
        conn.send_packed_command(conn.pack_commands(commands))
        self._unconfirmed += queue

    def _confirm(self) -> None:
        """Read the replies to the XADDs sent before (publish lock held); raises when Redis failed."""
        conn = self._publisher
        for _ in range(len(self._unconfirmed)):
            conn.read_response()
        self._unconfirmed = []

    def _xread(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next events after the last applied (waiting up to READ_BLOCK_MS), on the reader's own connection."""
        conn = self._stream_reader
        for attempt in (1, 2):  # as in _xadd_all(): a stale connection gets one more try
            try:
                conn.send_command("XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", self.events, self._last_id)
                reply = conn.read_response()
                break
            except self._redis_errors:
                conn.disconnect()
                if attempt == 2:
                    raise
        if not reply:
            return []
        streams = list(reply.values()) if isinstance(reply, dict) else [entries for _name, entries in reply]
        entries = []
        for entry_id, fields in streams[0]:
            if not isinstance(fields, dict):
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            entries.append((entry_id, fields))
        return entries

    def _not_delivered(self, ticket: Ticket, count: int) -> None:
        """Tell *ticket*'s client its lines did not go out (lock held)."""
        ticket.transport.send(f"! not delivered: {count} line{'s' if count != 1 else ''} (chat backend unavailable)\n".encode())

    # -- the stream ---------------------------------------------------------------

    def _consume(self) -> None:
        delay = RETRY_FIRST
        while self._running:
            try:
                if not self.available:
                    self._recover()
                elif self._reload:
                    self._fell_behind()
                entries = self._xread()
                delay = RETRY_FIRST
                if not self.available and self._recover():  # members hear "back" before what follows
                    continue  # a new epoch: what was read belongs to the old one
                if not entries:
                    if self._last_id != "0-0" and not self.redis.exists(self.events):
                        self._recover()  # the stream is gone: did Redis lose its data?
                    continue
                with self.lock:
                    for entry_id, fields in entries:
                        try:
                            self._apply(fields)
                        except (KeyError, ValueError, TypeError) as error:  # a malformed entry: skip it, go on
                            logger.error("Skipping the malformed event %s: %s: %s", entry_id, type(error).__name__, error)
                        self._last_id = entry_id.decode()
            except self._redis_errors as error:
                self._unavailable(error)
                self._stopping.wait(delay)  # back off: Redis is away
                delay = min(RETRY_MAX, delay * 2)

    def _snapshot_id(self) -> str:
        raw = self.redis.get(self.prefix + "snapshot")
        return json.loads(raw)["id"] if raw else "0-0"

    def _fell_behind(self) -> None:
        """Events we never saw were trimmed: load the snapshot and tell our members they missed some."""
        self._reload = False
        logger.warning("Fell behind the cluster's stream; loading its snapshot")
        self._load()
        with self.lock:
            for key, transport in list(self._local.items()):
                member = self._members.get((self.server_id, key))
                if member is None:  # left while we were behind: its departure is in what we missed
                    transport.send(b"! lost contact with the chat cluster, disconnecting\n")
                    transport.close("server lost")
                else:
                    member.transport = transport
                    transport.send(b"! this server fell behind the chat; some lines did not reach you\n")

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        """One event, applied to this server's copy of the hub (lock held)."""
        kind, server, key = fields[b"e"], fields[b"s"].decode(), int(fields[b"k"])
        seq = int(fields.get(b"n", 0))
        if seq:
            if seq <= self._applied.get(server, 0):
                return  # a copy published again after a failure: applied already
            self._applied[server] = seq
        payload = fields.get(b"p", b"")
        mine = server == self.server_id
        if kind == b"c":
            transport = self._local.get(key) if mine else None
            member, deliveries = self.hub.connect(transport or RemoteTransport(server, key))
            self._members[(server, key)] = member
            self.deliver(deliveries)
            if transport is not None:
                client_log.info("Client connected %s as %s", transport.peer, member.name)
        elif kind == b"l":
            sender = self._members.get((server, key))
            if sender is None:
                return
            before = sender.name, sender.room.name
            reaction = self.hub.receive(sender, decode_items(payload, self.hub.max_line))
            self.deliver(reaction.deliveries)
            if mine and before[0] != sender.name:
                client_log.info("%s is now known as %s", before[0], sender.name)
            if mine and before[1] != sender.room.name:
                client_log.info("%s left %s and joined %s", sender.name, before[1], sender.room.name)
            if mine and reaction.quit:
                sender.transport.close("quit")
        elif kind == b"d":
            self._remove(server, key, payload.decode())
        elif kind == b"x":
            for lost_server, lost_key in [k for k in self._members if k[0] == payload.decode()]:
                self._remove(lost_server, lost_key, "server lost")
            if payload.decode() == self.server_id:  # the others gave up on us: our clients are orphans
                for transport in list(self._local.values()):
                    transport.send(b"! lost contact with the chat cluster, disconnecting\n")
                    transport.close("server lost")
        elif kind == b"r":
            number, name, room = json.loads(payload)
            transport = self._local.get(key) if mine else None
            self._members[(server, key)] = self.hub.restore(transport or RemoteTransport(server, key), number, name, room)

    def _forget_local(self, key: int) -> None:
        transport = self._local.pop(key, None)
        if transport is not None:
            self._key_of.pop(transport, None)

    def _remove(self, server: str, key: int, reason: str) -> None:
        member = self._members.pop((server, key), None)
        if server == self.server_id:
            self._forget_local(key)
        if member is None:
            return
        deliveries = self.hub.disconnect(member, None if reason == "quit" else reason)
        if not self.shutting_down or server != self.server_id:
            self.deliver(deliveries)
        if server == self.server_id:
            client_log.info("Client disconnected %s (%s)", member.name, reason)

    # -- failure and recovery ---------------------------------------------------------

    def _unavailable(self, error: BaseException) -> None:
        with self.lock:
            if not self.available:
                return
            self.available = False
            for transport in self._local.values():
                transport.send(UNAVAILABLE)
        logger.warning("Chat backend unavailable (%s); retrying", describe(error))

    def _recover(self) -> bool:
        """Redis answers again: go on where we were, or start a new epoch if it lost everything (True)."""
        with self._publish_lock:  # the publisher's connection may be stale: connect afresh, and send
            self._publisher.disconnect()  # again what it did not confirm (copies are applied once)
            self._queue = self._unconfirmed + self._queue
            self._unconfirmed = []
        epoch = self.redis.get(self.prefix + "epoch")
        new_epoch = (epoch or b"").decode() != self._epoch
        if new_epoch:
            self._new_epoch()
        with self.lock:
            was_down, self.available = not self.available, True
            if was_down:
                for transport in self._local.values():
                    transport.send(BACK)
        if was_down:
            logger.warning("Chat backend is back")
        self.flush()
        return new_epoch

    def _new_epoch(self) -> None:
        """Redis came back without our data: clear our copy and re-announce our own members."""
        self._join_config()
        with self.lock:
            done = self._applied.get(self.server_id, 0)  # our events up to this one are in the members' state
            local = {key: self._members.get((self.server_id, key)) for key in self._local}
            self.hub.reset()
            self._members.clear()
            self._last_id = "0-0"
            self._applied = {}
            restores = [
                (b"r", key, json.dumps([member.number, member.name, member.room.name]).encode())
                for key, member in local.items()
                if member is not None
            ]
        with self._publish_lock:
            # What we queued and never applied (arrivals, lines, departures) goes after the restores, numbered
            # afresh: every server forgets the old numbers with the old stream.
            pending = [(kind, key, payload) for kind, key, payload, seq in self._queue if seq > done]
            self._queue = []
            for kind, key, payload in restores + pending:
                self._seq += 1
                self._queue.append((kind, key, payload, self._seq))
        logger.warning("Redis lost the chat's state: a new epoch, %d local members re-announced", len(restores))

    # -- heartbeat, lost servers, snapshots ------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HEARTBEAT):
            self.flush()  # reads the replies of the last XADDs sent, if nothing else did
            try:
                self._alive()
                self._watch_others()
                trimmed = self.redis.get(self.prefix + "trimmed")
                if trimmed is not None and self._last_id != "0-0" and id_key(self._last_id) < id_key(trimmed.decode()):
                    self._reload = True
                if time.monotonic() >= self._snapshot_due:
                    self._snapshot_due = time.monotonic() + SNAPSHOT_EVERY
                    self._maybe_snapshot()
            except self._redis_errors as error:
                self._unavailable(error)

    def named(self, name: str) -> None:
        """Call this server *name* (its address) in the others' logs from now on."""
        self.name = name
        try:
            self._alive()
        except self._redis_errors:  # the heartbeat says it again
            pass

    def _alive(self) -> None:
        """The heartbeat: this server is alive, and the cluster's settings with it; its name outlives it a while."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.prefix + "alive:" + self.server_id, b"1", px=int(ALIVE_FOR * 1000))
        pipe.set(self.prefix + "name:" + self.server_id, self.name.encode(), px=int(NAME_FOR * 1000))
        pipe.execute()
        stored = self._settings()
        if any(stored.get(name, value) != value for name, value in self._wanted().items()):  # only after a long freeze
            logger.error("This cluster's servers now use other settings (%s); restart this server to match", stored)

    def _watch_others(self) -> None:
        with self.lock:
            servers = {server for server, _key in self._members} - {self.server_id}
        if not servers or not self.available:
            self._missing.clear()
            return
        pipe = self.redis.pipeline(transaction=False)
        for server in sorted(servers):
            pipe.exists(self.prefix + "alive:" + server)
        gone = {server for server, alive in zip(sorted(servers), pipe.execute(), strict=True) if not alive}
        lost = gone & self._missing  # missing twice in a row, a heartbeat apart
        self._missing = gone - lost
        for server in sorted(lost):
            name = self.redis.get(self.prefix + "name:" + server)
            logger.warning("Server %s of the cluster is lost; its members leave", name.decode() if name else server)
            self.redis.xadd(self.events, {"e": b"x", "s": self.server_id, "k": 0, "p": server.encode()})

    def _maybe_snapshot(self) -> None:
        """The alive server with the smallest id writes the state and trims the stream behind the last snapshot."""
        alive = sorted(key.decode().rsplit(":", 1)[1] for key in self.redis.scan_iter(self.prefix + "alive:*"))
        if not alive or alive[0] != self.server_id:
            return
        with self.lock:
            state: dict[str, Any] = {
                "id": self._last_id,
                "hub": self.hub.export_state(self._identify),
                "applied": dict(self._applied),
            }
        if state["id"] == "0-0":
            return
        previous = self._snapshot_id()
        if id_key(previous) >= id_key(state["id"]):
            return
        self.redis.set(self.prefix + "snapshot", json.dumps(state))
        if previous != "0-0":
            self.redis.set(self.prefix + "trimmed", previous)
            self.redis.xtrim(self.events, minid=previous, approximate=False)

    def _identify(self, member: Member) -> list[Any]:
        transport = member.transport
        if isinstance(transport, RemoteTransport):
            return [transport.server, transport.key]
        return [self.server_id, self._key_of[transport]]


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``millis-seq``) as something that compares in stream order."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def redact(url: str) -> str:
    """*url* without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:1].lower() + text[1:]
