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

The code lives in :mod:`~socketlab.bench.fanout` (fanout and slow),
:mod:`~socketlab.bench.receivers` (fanout's receiver processes),
:mod:`~socketlab.bench.connections` and :mod:`~socketlab.bench.common`
(the server under test, connecting clients, CPU and memory readings);
this module gathers the names other modules and the CLI import.
"""

from __future__ import annotations

from socketlab.bench.common import (
    PLAIN,
    QUIET_END,
    SETTLE_LIMIT,
    SETTLE_QUIET,
    ClientKind,
    OwnServer,
    Progress,
    Targets,
    as_dict,
    cpu_seconds,
    cpu_times,
    drain_until_quiet,
    open_clients,
    rss_kib,
)
from socketlab.bench.connections import ConnectionsResult, run_connections
from socketlab.bench.fanout import PROBES, FanoutPlan, FanoutResult, run_fanout, spread
from socketlab.bench.receivers import BULK_PERIOD, CountingLoop, ReceiveLoop

__all__ = [
    "BULK_PERIOD",
    "PLAIN",
    "PROBES",
    "QUIET_END",
    "SETTLE_LIMIT",
    "SETTLE_QUIET",
    "ClientKind",
    "ConnectionsResult",
    "CountingLoop",
    "FanoutPlan",
    "FanoutResult",
    "OwnServer",
    "Progress",
    "ReceiveLoop",
    "Targets",
    "as_dict",
    "cpu_seconds",
    "cpu_times",
    "drain_until_quiet",
    "open_clients",
    "rss_kib",
    "run_connections",
    "run_fanout",
    "spread",
]
