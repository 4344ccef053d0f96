"""Everything a chat server is told, in one frozen object with its defaults written once.

``socketlab chat serve`` builds a :class:`ChatConfig` from its options; the
library takes one too (``ChatServer(address, config)``), or keyword
arguments that override the defaults (``ChatServer(address, room_size=2)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from socketlab.chat.protocol import DEFAULT_ANNOUNCE_LIMIT, DEFAULT_ANNOUNCE_RATE
from socketlab.lines import DEFAULT_MAX_LINE
from socketlab.tls import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    import ssl

    from socketlab.access import AccessRules

#: Default bytes a client may have waiting for it before it is dropped as too slow.
DEFAULT_MAX_BACKLOG = 1024 * 1024
#: Default members (TCP and web together) served at once.
DEFAULT_MAX_CLIENTS = 1000
#: Default name of a cluster: servers with the same Redis and name serve one chat.
DEFAULT_CLUSTER = "socketlab"


@dataclass(frozen=True)
class ChatConfig:
    """A chat server's settings (see ``ChatServer`` and docs/protocol.md for what each one does)."""

    # -- the chat -------------------------------------------------------------------
    #: Members per room, the lobby excepted (0: no cap).
    room_size: int = 0
    #: Rooms of this many members or more hear no joins and departures.
    announce_limit: int = DEFAULT_ANNOUNCE_LIMIT
    #: Joins and departures announced to one room a second, past the first 50 at once (0: no limit).
    announce_rate: int = DEFAULT_ANNOUNCE_RATE

    # -- limits per server and per client ----------------------------------------------
    max_clients: int = DEFAULT_MAX_CLIENTS
    #: Longest line in bytes (longer ones are refused, not relayed).
    max_line: int = DEFAULT_MAX_LINE
    #: Bytes waiting for one client before it is dropped as too slow.
    max_backlog: int = DEFAULT_MAX_BACKLOG
    #: Seconds of silence before a client is dropped (None: never).
    idle_timeout: float | None = None
    #: Lines per second per client, a burst of twice that (0: no flood control).
    max_rate: float = 0.0
    #: Who may connect, screened right after accept (None: everyone).
    access: AccessRules | None = None
    #: Connections at once from one address (None: no limit).
    max_per_ip: int | None = None

    # -- the web page and its WebSocket ---------------------------------------------------
    #: Where to serve them (None: no web listener).
    web: tuple[str, int] | None = None
    #: Origins whose pages may open the WebSocket, besides the page's own.
    web_origins: tuple[str, ...] = ()
    #: A folder of the user's own page, served instead of socketlab's (its Socket.IO client bundle at
    #: ``/socket.io/socket.io.js``, from its ``node_modules``; see :mod:`socketlab.static`).
    web_root: str | None = None
    #: Whether the web listener also answers Socket.IO clients at ``/socket.io/``.
    socketio: bool = True
    #: Socket.IO's heartbeat: a ping every this many seconds; a client silent this long after one is dropped.
    socketio_ping_interval: float = 25.0
    socketio_ping_timeout: float = 20.0
    #: Seconds a new Socket.IO session has to connect to a namespace.
    socketio_connect_timeout: float = 45.0

    # -- TLS --------------------------------------------------------------------------
    #: A server context: both listeners speak TLS (the page is then https and wss).
    tls: ssl.SSLContext | None = None
    #: Seconds a client has to finish its TLS handshake.
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    # -- the cluster ------------------------------------------------------------------
    #: A Redis URL: this server is one of the cluster ``cluster`` (None: a server alone).
    redis: str | None = None
    cluster: str = DEFAULT_CLUSTER
    #: Listen with SO_REUSEPORT: several servers of one cluster on one machine share the port (and the
    #: web port), the kernel spreading new connections over them -- one core each (needs ``redis``).
    reuse_port: bool = False

    # -- the operator's view --------------------------------------------------------------
    #: Where to serve Prometheus metrics at ``/metrics`` (None: not served; needs the metrics extra,
    #: ``prometheus_client``; see :mod:`socketlab.metrics` and docs/security.md).
    metrics: tuple[str, int] | None = None

    def replace(self, **changes: Any) -> "ChatConfig":
        """A copy with *changes* (TypeError names an unknown setting)."""
        if "web_origins" in changes:
            changes["web_origins"] = tuple(changes["web_origins"])
        if changes.get("idle_timeout") == 0:
            changes["idle_timeout"] = None
        return dataclasses.replace(self, **changes)
