"""A real Redis Cluster for the tests: three masters, no replicas, on 127.0.0.1, persistence off.

No replicas means no failover: a killed master's slots stay down until
``restart_master()`` brings it back (empty) on the same port with the same
nodes.conf.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from redis_server import end, launch
from support import TIMEOUT, wait_until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

#: A node's cluster bus listens on its port plus this.
BUS_OFFSET = 10000
SLOTS = 16384
MASTERS = 3
#: Milliseconds without an answer before the others flag a node as failing (Redis's default is 15000).
#: Its peers forget a failure two node timeouts after flagging it; a restarted master also waits
#: 2 s (Redis's CLUSTER_WRITABLE_DELAY) before it serves again, whatever this is.
NODE_TIMEOUT_MS = 1000
#: Seconds a health probe waits for a node's answer (a paused node must not hold a wait past its deadline).
PROBE_TIMEOUT = 1.0


def ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux), 32768 if unknown."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    """True when 127.0.0.1:*port* can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_node_port(taken: set[int]) -> int:
    """A port free now whose bus port is free too, neither in *taken*.

    Both lie below the ephemeral range when it leaves room, so no outgoing
    connection takes them between ``kill_master()`` and ``restart_master()``.
    """
    top = ephemeral_floor() - BUS_OFFSET
    low = 10000 if top - 10000 >= 1000 else 1024
    high = top if low == 10000 else 65536 - BUS_OFFSET
    for _attempt in range(100):
        port = random.randrange(low, high)
        if {port, port + BUS_OFFSET} & taken:
            continue
        if bindable(port) and bindable(port + BUS_OFFSET):
            return port
    raise AssertionError("no free port pair for a cluster node")


def cluster_info(client: Any) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as a dict of strings."""
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` of the cluster: its port, process, log and nodes.conf."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.conf = directory / f"nodes-{port}.conf"
        self.log = directory / f"node-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = TIMEOUT) -> Any:
        """A plain ``redis.Redis`` on this node alone (CLUSTER INFO, CLUSTER NODES...)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def start(self) -> bool:
        """Start it and wait until it answers PING; False when it exited (its port taken)."""
        assert REDIS_SERVER is not None and self.proc is None
        args = [
            REDIS_SERVER,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.conf),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
        ]
        self.proc = launch(args, self.client(), f"redis-server on port {self.port}")
        return self.proc is not None

    def stop(self) -> None:
        """End it (SIGCONT first, in case it was paused) and wait for it."""
        proc, self.proc = self.proc, None
        end(proc)

    def kill(self) -> None:
        """SIGKILL it and reap it: no shutdown, no goodbye to its peers."""
        proc, self.proc = self.proc, None
        assert proc is not None, "not running"
        proc.kill()
        proc.wait(TIMEOUT)

    def signal(self, signum: int) -> None:
        assert self.proc is not None, "not running"
        self.proc.send_signal(signum)


class RedisCluster:
    """Three cluster masters (no replicas) in *directory*, slots split by ``redis-cli --cluster create``.

    ``start()`` returns once every node reports ``cluster_state:ok`` with all
    16384 slots ok; ``url`` is node 0's ``redis://`` URL, ``client()`` a
    ``redis.RedisCluster``. ``kill_master(i)`` SIGKILLs node *i*;
    ``restart_master(i)`` starts it again (empty) on its port with its
    nodes.conf, so it takes its slots back, and waits until the cluster is ok
    again. ``pause(i)`` and ``resume(i)`` freeze and thaw node *i*.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[ClusterNode] = []
        self._slots: dict[int, set[int]] = {}

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        assert self.nodes, "not started"
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def client(self, **options: Any) -> Any:
        """A ``redis.RedisCluster`` that knows every node (so it starts even with node 0 down).

        It does not retry: redis-py's default retry spends seconds per command on
        a dead node or a down cluster before it raises. *options* override that.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode as StartupNode
        from redis.retry import Retry

        startup = [StartupNode("127.0.0.1", port) for port in self.ports]
        settings: dict[str, Any] = {"socket_timeout": TIMEOUT, "retry": Retry(NoBackoff(), 0), **options}
        return redis.RedisCluster(startup_nodes=startup, **settings)

    def node_client(self, index: int) -> Any:
        """A plain ``redis.Redis`` on node *index* alone."""
        return self.nodes[index].client()

    def node_for(self, key: str | bytes) -> int:
        """The index of the node whose slots hold *key* (or channel), as ``start()`` assigned them."""
        from redis.crc import key_slot

        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for index, node in enumerate(self.nodes):
            if slot in self._slots[node.port]:
                return index
        raise AssertionError(f"slot {slot} has no node")

    def start(self) -> "RedisCluster":
        """Start the three nodes (a port lost between picking and binding is picked again), then join them."""
        assert REDIS_SERVER is not None and REDIS_CLI is not None
        taken: set[int] = set()
        try:
            while len(self.nodes) < MASTERS:
                self.nodes.append(self._start_node(taken))
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, taken: set[int]) -> ClusterNode:
        for _attempt in range(5):
            node = ClusterNode(self.directory, free_node_port(taken))
            node.conf.unlink(missing_ok=True)  # a stale one from an earlier start() would be loaded
            if node.start():
                taken |= {node.port, node.port + BUS_OFFSET}
                return node
        raise AssertionError(f"redis-server did not start; its log:\n{node.log.read_text()}")

    def _create(self) -> None:
        assert REDIS_CLI is not None
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        args = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{done.stdout.decode()}{done.stderr.decode()}")
        self.wait_ok()
        self._slots = self._slot_map()

    def _slot_map(self) -> dict[int, set[int]]:
        """Each node's port -> the slots it serves, from ``CLUSTER SLOTS``."""
        owned: dict[int, set[int]] = {port: set() for port in self.ports}
        client = self.node_client(0)
        try:
            for first, last, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
                owned[int(master[1])].update(range(first, last + 1))
        finally:
            client.close()
        return owned

    def healthy(self) -> bool:
        """True when every node answers ``cluster_state:ok``, all slots ok and all three nodes known."""
        import redis

        for node in self.nodes:
            client = node.client(timeout=PROBE_TIMEOUT)
            try:
                info = cluster_info(client)
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(MASTERS)
            ):
                return False
        return True

    def wait_ok(self, timeout: float = TIMEOUT) -> None:
        """Wait until ``healthy()`` (after ``resume()``, say)."""
        wait_until(self.healthy, timeout=timeout, what="every cluster node to report cluster_state:ok")

    def wait_failed(self, index: int, timeout: float = TIMEOUT) -> None:
        """Wait until the other nodes flag node *index* as failed (about a node timeout after it went silent)."""
        wait_until(lambda: self._flagged_failed(index), timeout=timeout, what=f"the cluster to flag node {index} failed")

    def _flagged_failed(self, index: int) -> bool:
        import redis

        address = f"127.0.0.1:{self.nodes[index].port}@"
        for other, node in enumerate(self.nodes):
            if other == index:
                continue
            client = node.client(timeout=PROBE_TIMEOUT)
            try:
                lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            line = next(line for line in lines if line.split()[1].startswith(address))
            if "fail" not in line.split()[2].split(","):
                return False
        return True

    def kill_master(self, index: int) -> None:
        """SIGKILL node *index*: its slots go unserved (and, once flagged failed, the whole cluster says CLUSTERDOWN)."""
        self.nodes[index].kill()

    def restart_master(self, index: int) -> None:
        """Start node *index* again on its port with its nodes.conf (its slots, no data); wait until all is ok."""
        node = self.nodes[index]
        if not node.start():
            raise AssertionError(f"node {index} did not restart on port {node.port}; its log:\n{node.log.read_text()}")
        self.wait_ok()

    def pause(self, index: int) -> None:
        self.nodes[index].signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        self.nodes[index].signal(signal.SIGCONT)

    def stop(self) -> None:
        """End every node (SIGCONT first, SIGTERM, SIGKILL after a timeout); their data goes with them."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ClusterAsServer:
    """A RedisCluster seen through RedisServer's interface, so that one test runs against either.

    ``url`` and ``tcp_url`` are node 0's; ``client()`` a cluster client; ``pause()`` and ``resume()``
    freeze and thaw every node; ``stop()`` kills every node (their data goes with them) and ``start()``
    brings them back on their ports with their nodes.conf, empty, as a restart without persistence does.
    """

    def __init__(self, directory: Path) -> None:
        self.cluster = RedisCluster(directory)
        self._stopped = False

    @property
    def url(self) -> str:
        return self.cluster.url

    tcp_url = url

    def client(self) -> Any:
        return self.cluster.client()

    def listeners(self, channel: str) -> int:
        """Subscribers of the sharded *channel*, asked of the node that holds it."""
        client = self.cluster.node_client(self.cluster.node_for(channel))
        try:
            return int(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])
        finally:
            client.close()

    def start(self) -> "ClusterAsServer":
        if not self._stopped:
            self.cluster.start()
            return self
        for node in self.cluster.nodes:
            if not node.start():
                raise AssertionError(f"node on port {node.port} did not restart; its log:\n{node.log.read_text()}")
        self.cluster.wait_ok()
        self._stopped = False
        return self

    def stop(self) -> None:
        for node in self.cluster.nodes:
            if node.proc is not None:
                node.kill()
        self._stopped = True

    def pause(self) -> None:
        for index in range(len(self.cluster.nodes)):
            self.cluster.pause(index)

    def resume(self) -> None:
        for index in range(len(self.cluster.nodes)):
            self.cluster.resume(index)

    def __enter__(self) -> "ClusterAsServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cluster.stop()
