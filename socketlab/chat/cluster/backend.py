"""Redis for a cluster: one Redis or a Redis Cluster, the scripts, and the channels a server listens to.

Nothing here knows the chat's rules: :class:`Backend` runs commands and
scripts, :class:`Subscriber` reads the sharded channels this server listens
to (one connection per Redis node, one thread for all of them) and hands
each message on.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections import deque
from typing import Any, Callable, Sequence

from socketlab.chat.cluster import scripts
from socketlab.chat.cluster.scripts import Keys

logger = logging.getLogger("socketlab.chat.cluster")

#: Seconds a Redis command may take before Redis counts as unavailable, and to connect.
REDIS_TIMEOUT, REDIS_CONNECT_TIMEOUT = 5.0, 3.0


class Backend:
    """A connection to the cluster's Redis (a single server or a Redis Cluster, found out at start)."""

    def __init__(self, url: str, cluster: str) -> None:
        import redis  # the extra; imported only for --redis

        #: What a failing Redis raises (a cluster's own errors are not RedisErrors).
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
        self.url = url
        self.keys = Keys(cluster)
        self._redis = redis
        self.client: Any = None
        self.is_cluster = False
        self._scripts: dict[str, Any] = {}
        #: The publisher's own connections, one per Redis node ("" for a single Redis).
        self._publishers: dict[str, Any] = {}

    def connect(self) -> None:
        """Connect, and learn whether the URL is a Redis Cluster (raises on failure)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries of redis-py's own: a failure is news for the chat (members are told), and the
        # service's recovery retries with its own backoff.
        options = {
            "socket_timeout": REDIS_TIMEOUT,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        probe = self._redis.Redis.from_url(self.url, health_check_interval=0, **options)
        try:
            self.is_cluster = str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
        finally:
            probe.close()
        if self.is_cluster:
            self.client = self._redis.RedisCluster.from_url(self.url, **options)
        else:
            self.client = self._redis.Redis.from_url(self.url, health_check_interval=0, **options)
        for name in ("ROOM", "CONNECT", "RENAME", "RELEASE", "LOOKUP", "INDEX", "BEAT", "CLAIM", "PRIVATE"):
            self._scripts[name] = self.client.register_script(getattr(scripts, name))
        self.load_scripts()

    def load_scripts(self) -> None:
        """Load the scripts into Redis (every master of a cluster): pipelines only ask for them by hash."""
        for script in self._scripts.values():
            self.client.script_load(script.script)

    def close(self) -> None:
        for conn in self._publishers.values():
            conn.disconnect()
        if self.client is not None:
            self.client.close()

    def pipeline(self) -> Any:
        return self.client.pipeline(transaction=False)

    def script(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run script *name* (or queue it on the pipeline *client*) by its hash: the scripts are loaded
        at start and on every recovery, and a Redis that lost them (NOSCRIPT) fails like any other
        error, so no call checks first (redis-py's Script would send SCRIPT EXISTS with every pipeline)."""
        return (client or self.client).evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def room(
        self,
        room: str,
        op: str,
        server: str,
        seq: int,
        member: str,
        name: object,
        argument: object,
        batch: Any,
        client: Any = None,
    ) -> Any:
        """ROOM on *room*: ``[result, count, member?, version]`` (``who``: ``['who', count, names...]``)."""
        args = [self.keys.room_channel(room), op, server, seq, member, name, argument, batch, scripts.LOG_KEEP_MS]
        return self.script("ROOM", self.keys.room(room), args, client)

    def say_many(self, server: str, calls: Sequence[tuple[str, int, bytes]]) -> None:
        """Bursts of lines, ``(room, seq, batch)``: one ROOM ``say`` each, sent in one write per Redis node
        on connections of the publisher's own, then every answer read (raises the backend's errors).

        The hot path: no pipeline object, no check that the script is loaded (a NOSCRIPT error is a
        failure like any other, and recovery loads the scripts again).
        """
        sha = self._scripts["ROOM"].sha
        by_node: dict[str, tuple[Any, list[tuple[Any, ...]]]] = {}
        for room, seq, batch in calls:
            keys = self.keys.room(room)
            node = self._node_of(keys[0])
            conn = self._publishers.get(node)
            if conn is None:
                conn = self._publishers[node] = self._pool_of(node).make_connection()
            command = ("EVALSHA", sha, 4, *keys, self.keys.room_channel(room), "say", server, seq, "", "", "", batch)
            by_node.setdefault(node, (conn, []))[1].append((*command, scripts.LOG_KEEP_MS))
        try:
            for conn, commands in by_node.values():
                conn.send_packed_command(conn.pack_commands(commands))
            for conn, commands in by_node.values():
                for _ in commands:
                    conn.read_response()
        except BaseException:
            self.reset_publishers()  # answers may be left unread on them: start afresh
            raise

    def reset_publishers(self) -> None:
        """Close the publisher's own connections (after a failure; they are made again when needed)."""
        for conn in self._publishers.values():
            conn.disconnect()
        self._publishers.clear()
        if self.is_cluster:
            self.client.nodes_manager.initialize()  # slots may have moved

    def _node_of(self, key: str) -> str:
        return self.client.get_node_from_key(key).name if self.is_cluster else ""

    def _pool_of(self, node: str) -> Any:
        if not self.is_cluster:
            return self.client.connection_pool
        return self.client.get_node(node_name=node).redis_connection.connection_pool

    def log_since(self, room: str, version: str) -> tuple[list[tuple[str, bytes]], str | None]:
        """The room's logged batches after *version* (the oldest first), and the newest one trimmed away
        (None when the log is gone, or never lost one)."""
        log = self.keys.room(room)[3]
        pipe = self.pipeline()
        pipe.xrange(log, min="(" + version, max="+")
        pipe.execute_command("XINFO", "STREAM", log)
        try:
            entries, info = pipe.execute()
        except self._redis.ResponseError:  # no such log (the room is new, or Redis lost it)
            return [], None
        if isinstance(info, list):
            info = dict(zip(info[::2], info[1::2], strict=False))
        trimmed = info.get(b"max-deleted-entry-id", info.get("max-deleted-entry-id"))
        trimmed = trimmed.decode() if isinstance(trimmed, bytes) else trimmed
        return [(entry_id.decode(), fields[b"b"]) for entry_id, fields in entries], None if trimmed in (None, "0-0") else trimmed

    def pubsub_for(self, channel: str) -> tuple[str, Any]:
        """The node *channel* lives on (a name) and a new Pub/Sub object on it."""
        if not self.is_cluster:
            return "redis", self.client.pubsub()
        node = self.client.get_node_from_key(channel)
        return node.name, node.redis_connection.pubsub()


class Subscriber:
    """Reads this server's channels: one thread, one Pub/Sub connection per Redis node, selectors.

    ``subscribe()`` returns once Redis has confirmed every channel (so what is
    published after it is heard); ``unsubscribe()`` does not wait. Every
    message goes to *on_message(channel, data)*; a broken connection to
    *on_failure(error)*, after which nothing is read until ``reset()``.
    """

    def __init__(
        self, backend: Backend, on_message: Callable[[str, bytes], None], on_failure: Callable[[BaseException], None]
    ) -> None:
        self.backend = backend
        self.on_message = on_message
        self.on_failure = on_failure
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._requests: deque[tuple[str, list[str], threading.Event | None]] = deque()
        self._nodes: dict[str, Any] = {}  # node name -> PubSub
        self._channel_node: dict[str, str] = {}
        self._waiting: dict[str, list[_Waiter]] = {}
        self._watched: dict[str, socket.socket] = {}
        #: Our own unsubscribe requests not answered yet, by channel.
        self._unsubscribing: dict[str, int] = {}
        self._confirmed: set[str] = set()
        self.broken = False
        self._running = True
        self._thread = threading.Thread(target=self._run, name="cluster-subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake()
        self._thread.join(1.0)
        self._close_all()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def subscribe(self, channels: list[str], timeout: float = REDIS_TIMEOUT) -> None:
        """Listen to *channels* from now on; raises ConnectionError when Redis did not confirm in time."""
        done = threading.Event()
        self._requests.append(("subscribe", channels, done))
        self._wake()
        if not done.wait(timeout):
            raise ConnectionError("Redis did not confirm a subscription in time")
        if self.broken:
            raise ConnectionError("the connection to Redis for the chat's channels broke")

    def unsubscribe(self, channels: list[str]) -> None:
        self._requests.append(("unsubscribe", channels, None))
        self._wake()

    def reset(self) -> None:
        """Forget every connection (after a failure): the next subscribe() makes new ones."""
        done = threading.Event()
        self._requests.append(("reset", [], done))
        self._wake()
        done.wait(REDIS_TIMEOUT)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _run(self) -> None:
        while self._running:
            try:
                events = self._selector.select(0.5)
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            for key, _mask in events:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                    continue
                self._read(key.data)
            while self._requests:
                self._handle(*self._requests.popleft())

    def _handle(self, op: str, channels: list[str], done: threading.Event | None) -> None:
        try:
            if op == "reset":
                self._close_all()
                self.broken = False
            elif op == "subscribe":
                self._subscribe(channels, done)
                return
            elif op == "unsubscribe" and not self.broken:
                for channel in channels:
                    node = self._channel_node.pop(channel, None)
                    self._confirmed.discard(channel)
                    if node is not None and node in self._nodes:
                        self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
                        self._nodes[node].sunsubscribe(channel)
        except self.backend.errors as error:
            self._failed(error)
        if done is not None:
            done.set()

    def _subscribe(self, channels: list[str], done: threading.Event | None) -> None:
        wanted = [channel for channel in channels if channel not in self._confirmed]
        if self.broken or not wanted:
            if done is not None:
                done.set()
            return
        if done is not None:
            waiter = _Waiter(set(wanted), done)
            for channel in wanted:
                self._waiting.setdefault(channel, []).append(waiter)
        for channel in wanted:
            name, pubsub = self._node_for(channel)
            self._channel_node[channel] = name
            pubsub.ssubscribe(channel)
            self._watch(name, pubsub)

    def _node_for(self, channel: str) -> tuple[str, Any]:
        name, fresh = self.backend.pubsub_for(channel)
        pubsub = self._nodes.get(name)
        if pubsub is None:
            pubsub = self._nodes[name] = fresh
        else:
            fresh.close()
        return name, pubsub

    def _watch(self, name: str, pubsub: Any) -> None:
        """Select on *pubsub*'s socket (again, if redis-py connected it afresh: then messages may be missing)."""
        sock = pubsub.connection._sock if pubsub.connection is not None else None
        watched = self._watched.get(name)
        if sock is watched:
            return
        if watched is not None:
            try:
                self._selector.unregister(watched)
            except (KeyError, ValueError):
                pass
            self._failed(ConnectionError("the connection for the chat's channels was made again"))
        if sock is not None:
            self._selector.register(sock, selectors.EVENT_READ, name)
            self._watched[name] = sock

    def _read(self, name: str) -> None:
        pubsub = self._nodes.get(name)
        if pubsub is None:
            return
        try:
            while (message := pubsub.get_message(timeout=0)) is not None:
                self._dispatch(message)
        except self.backend.errors as error:
            self._failed(error)
            return
        self._watch(name, pubsub)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == "smessage":
            self.on_message(channel, message["data"])
        elif kind == "ssubscribe":
            self._confirmed.add(channel)
            for waiter in self._waiting.pop(channel, []):
                waiter.confirmed(channel)
        elif kind == "sunsubscribe":
            asked = self._unsubscribing.get(channel, 0)
            if asked:  # the answer to our own unsubscribe()
                if asked == 1:
                    del self._unsubscribing[channel]
                else:
                    self._unsubscribing[channel] = asked - 1
            elif channel in self._channel_node:  # Redis dropped it (its slot moved): what it says is missed
                self._failed(ConnectionError(f"Redis ended the subscription to {channel}"))

    def _failed(self, error: BaseException) -> None:
        if not self.broken:
            self.broken = True
            self.on_failure(error)
        for waiters in self._waiting.values():
            for waiter in waiters:
                waiter.done.set()
        self._waiting.clear()

    def _close_all(self) -> None:
        for sock in self._watched.values():
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        self._watched.clear()
        for pubsub in self._nodes.values():
            try:
                pubsub.close()
            except self.backend.errors:
                pass
        self._nodes.clear()
        self._channel_node.clear()
        self._confirmed.clear()
        self._unsubscribing.clear()


class _Waiter:
    """A subscribe() waiting for Redis to confirm its channels."""

    def __init__(self, pending: set[str], done: threading.Event) -> None:
        self.pending = pending
        self.done = done

    def confirmed(self, channel: str) -> None:
        self.pending.discard(channel)
        if not self.pending:
            self.done.set()
