"""One chat across several servers through Redis, each server paying only for its own rooms.

- The cluster's facts live in Redis (``scripts``): names (unique across
  servers), user numbers, every room's members in joining order, the index
  of rooms. A script changes a room and publishes the change on the room's
  own channel in one step, so a room has one order everywhere; a room's cap
  is checked by the script that seats the member (the last seat goes once).
- A server listens only to the channels of rooms it has members in (sharded
  Pub/Sub: on a Redis Cluster each room lives on its slot's node), plus its
  own channel for private messages. Events of other rooms never reach it.
- Its own members' lines take the same path as everyone's: through the
  room's script, never a local shortcut.
- Liveness: every server beats a heartbeat; the first to find another silent
  for 3 s claims it and removes its members (``* NAME left ROOM (server lost)``).
- Redis lost: members are told; lines meanwhile are refused visibly; what was
  on its way is sent again on recovery (a batch of lines carries its server's
  number and is applied once), and each server puts its own members back
  where Redis lost them (a new epoch, after a restart without persistence).

Redis is imported only when a ClusterService starts, so ``chat serve``
without ``--redis`` never loads it. docs/cluster.md explains the design.
"""

from socketlab.chat.cluster.backend import REDIS_CONNECT_TIMEOUT, REDIS_TIMEOUT
from socketlab.chat.cluster.service import (
    ALIVE_FOR,
    BACK,
    HEARTBEAT,
    UNAVAILABLE,
    ClusterError,
    ClusterService,
    describe,
    redact,
)

__all__ = [
    "ALIVE_FOR",
    "BACK",
    "HEARTBEAT",
    "REDIS_CONNECT_TIMEOUT",
    "REDIS_TIMEOUT",
    "UNAVAILABLE",
    "ClusterError",
    "ClusterService",
    "describe",
    "redact",
]
