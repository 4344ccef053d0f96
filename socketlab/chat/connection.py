"""A chat client's connection as the reader loop sees it, and the TCP line transport.

:class:`Connection` holds what every transport shares -- the socket, its
bounded :class:`~socketlab.chat.outbox.Outbox`, the hub member, its
:class:`Phase` -- and implements :class:`~socketlab.chat.service.Transport`
for the chat core. A transport subclass turns received bytes into chat lines
(``data_received``) and lines into bytes on the wire (``send``):
:class:`LineConnection` for plain TCP lines here,
:class:`~socketlab.chat.web.WebConnection` for WebSocket.

The life of a connection, one verb per step (the reader loop drives them)::

    HANDSHAKING --joined()--> MEMBER
    HANDSHAKING, MEMBER --left()--> LEAVING      (flush what it is owed; input discarded)
    LEAVING --peer_ended()--> PEER_GONE          (the client closed first: stop watching it)
    LEAVING --our_side_ended()--> DRAINING       (flushed, FIN sent: read until the client closes)
    any --closed()--> CLOSED
"""

from __future__ import annotations

import enum
import socket
import time
from typing import Any, Callable

from socketlab.chat.flood import FloodGate
from socketlab.chat.opening import HTTP_ANSWER, HTTP_REQUEST, TLS_LINE_HINT, misdirected
from socketlab.chat.outbox import Outbox
from socketlab.chat.service import QUIT
from socketlab.lines import Item, LineBuffer
from socketlab.tls import TlsLayer

#: First and largest recv() sizes: reads grow only while data keeps coming.
FIRST_READ = 4096
MAX_READ = 65536


class Phase(enum.Enum):
    """Where a connection is in its life (see the module docstring for the steps between them)."""

    #: Accepted; a TLS or WebSocket handshake may be under way. Not in the chat yet.
    HANDSHAKING = "handshaking"
    #: In the chat: its lines go to the chat core.
    MEMBER = "member"
    #: Left the chat: what it is owed is flushing; what it sends is read and discarded.
    LEAVING = "leaving"
    #: Left, and the client already closed its side: flushing, no longer read.
    PEER_GONE = "peer gone"
    #: Flushed and our side ended: reading until the client closes, so no reset destroys the last lines.
    DRAINING = "draining"
    CLOSED = "closed"


class Connection:
    """One client of the reader loop. ``send()`` and ``close()`` run under the chat lock."""

    #: Lines and WebSocket members do not get their own chat lines back.
    echo = False

    __slots__ = (
        "sock",
        "peer",
        "outbox",
        "member",
        "last_active",
        "read_size",
        "phase",
        "leave_by",
        "send",
        "tls",
        "deadline",
        "gate",
        "on_quit",
    )

    def __init__(
        self, sock: socket.socket, peer: str, outbox: Outbox, tls: TlsLayer | None = None, deadline: float | None = None
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.outbox = outbox
        #: TLS under the transport (the outbox is then a TlsOutbox over the same layer).
        self.tls = tls
        #: Until a client joins the hub: when its handshake (TLS, WebSocket) must be done.
        self.deadline = deadline
        #: Flood control (lines and bytes per second), if the server limits clients.
        self.gate: FloodGate | None = None
        #: The chat core's handle for this client once it joined (a hub Member, or a cluster Ticket).
        self.member: Any = None
        self.last_active = time.monotonic()
        self.read_size = FIRST_READ
        self.phase = Phase.HANDSHAKING
        #: Once it has left: when to give up flushing and close.
        self.leave_by = 0.0
        self.send: Callable[[bytes], None] = outbox.write
        #: Called (lock held) when the chat core closes the connection after /quit: the reader loop's
        #: graceful leave (flush, end our side, read until the client closes), not an abrupt shutdown.
        self.on_quit: Callable[[Connection], None] | None = None

    # -- the lifecycle (reader thread, but joined() on whichever thread welcomes it) --

    @property
    def backlog(self) -> int:
        """Bytes waiting for the client."""
        return self.outbox.size

    @property
    def departed(self) -> bool:
        """True once the client has left the chat (or was never let in and is going): LEAVING, PEER_GONE,
        DRAINING or CLOSED."""
        phase = self.phase  # two identity tests, not a set's: Enum.__hash__ is Python code, and this runs per read
        return phase is not Phase.MEMBER and phase is not Phase.HANDSHAKING

    def joined(self, member: Any) -> None:
        """HANDSHAKING -> MEMBER: the chat core took it in; *member* is its handle there."""
        assert self.phase is Phase.HANDSHAKING, self.phase
        self.member = member
        self.phase = Phase.MEMBER

    def left(self, flush_until: float) -> None:
        """HANDSHAKING or MEMBER -> LEAVING: flush what it is owed until *flush_until*, then close."""
        assert not self.departed, self.phase
        self.phase = Phase.LEAVING
        self.leave_by = flush_until

    def peer_ended(self) -> None:
        """LEAVING -> PEER_GONE: the client closed its side before our flush was done."""
        assert self.phase is Phase.LEAVING, self.phase
        self.phase = Phase.PEER_GONE

    def our_side_ended(self) -> None:
        """LEAVING -> DRAINING: flushed; the caller shuts our sending side down."""
        assert self.phase is Phase.LEAVING, self.phase
        self.phase = Phase.DRAINING

    def closed(self) -> bool:
        """Any -> CLOSED; False if it already was (closing is idempotent)."""
        if self.phase is Phase.CLOSED:
            return False
        self.phase = Phase.CLOSED
        return True

    def data_received(self, data: bytes) -> list[Item]:
        """Chat lines completed by *data* (reader thread, lock not held)."""
        raise NotImplementedError

    def eof_received(self) -> list[Item]:
        """The client ended its side: the lines that completes."""
        return []

    def ready_to_join(self) -> bool:
        """True when a client not yet in the hub has finished its handshake."""
        return self.tls is not None and self.tls.handshake_done

    def tick(self, now: float) -> None:
        """Timers (lock held): a client not in the hub by its deadline is dropped."""
        if self.phase is Phase.HANDSHAKING and self.deadline is not None and now > self.deadline:
            self.outbox.fail("handshake timeout")

    def next_tick(self) -> float | None:
        """When tick() may have something to do next (None: nothing until something changes)."""
        if self.phase is Phase.HANDSHAKING and self.deadline is not None and not self.outbox.closed:
            return self.deadline
        return None

    def ended(self) -> str | None:
        """Why the transport itself is over (e.g. a closing handshake), else None."""
        return None

    def plaintext_hint(self) -> bytes:
        """What a client that speaks plaintext to this TLS transport is told, in plain text."""
        return TLS_LINE_HINT

    def goodbye(self, reason: str | None) -> None:
        """Queue the transport's own farewell, if it has one (lock held)."""

    def farewell(self, reason: str | None) -> None:
        """The transport's goodbye, then TLS's close_notify (lock held)."""
        self.goodbye(reason)
        if self.tls is not None:
            self.outbox.write_raw(self.tls.close())

    def close(self, reason: str) -> None:
        """Say goodbye, then shut the socket once the outbox is flushed (lock held).

        After /quit (QUIT), the reader loop takes the connection out as for a client that left.
        """
        if reason == QUIT and self.on_quit is not None:
            self.on_quit(self)
            return
        self.farewell(reason)
        self.outbox.end(reason)


class LineConnection(Connection):
    """The TCP line transport: ``\\n``-terminated lines both ways, as sent."""

    __slots__ = ("framer", "fresh", "opening")

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        outbox: Outbox,
        max_line: int,
        tls: TlsLayer | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(sock, peer, outbox, tls, deadline)
        self.framer = LineBuffer(max_line)
        #: Nothing read yet: the first bytes are checked once (see socketlab.chat.opening).
        self.fresh = True
        #: Why the client is not a chat client (an HTTP request, a TLS hello), if it is not.
        self.opening: str | None = None

    def data_received(self, data: bytes) -> list[Item]:
        if self.fresh:
            self.fresh = False
            self.opening = misdirected(data)
            if self.opening is not None:  # never relayed: ended() makes the reader take it out
                return []
        return self.framer.feed(data)

    def ended(self) -> str | None:
        return self.opening

    def goodbye(self, reason: str | None) -> None:
        if reason == HTTP_REQUEST:
            self.outbox.write(HTTP_ANSWER)

    def eof_received(self) -> list[Item]:
        return self.framer.finish()
