"""The chat's transport-neutral core: one hub, one lock, delivery.

:class:`ChatService` runs the sans-IO :class:`~socketlab.chat.protocol.ChatHub`
under one lock and hands what it decides to each member's :class:`Transport`
in the same lock hold, so every member of a room -- on TCP, on a WebSocket,
on whatever transport comes next -- sees the room's lines in one order. It
knows members only through the transport interface: *send these bytes*,
*close with this reason*. Sockets, framing and threads live in the
transports and the server around it.

Its counters (lines and bytes in and out, joins, departures, clients dropped
as too slow) are plain integers changed under the lock it already holds at
each event: one addition per event, no metric object and no lock of their
own; ``socketlab.metrics`` reads them when Prometheus scrapes.

Loggers: ``socketlab.chat.clients`` (joins, nick changes, departures) and
``socketlab.chat.messages`` (message text, at DEBUG).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Protocol, Sequence

from socketlab.chat.protocol import ChatHub, Delivery, Member, Transport, coalesce
from socketlab.lines import Item
from socketlab.text import display_bytes

client_log = logging.getLogger("socketlab.chat.clients")
message_log = logging.getLogger("socketlab.chat.messages")

SHUTDOWN_REASON = "server shutting down"
#: The reason a member's transport is closed with after /quit, on one server and in a cluster alike.
QUIT = "quit"


class ChatCore(Protocol):
    """What the I/O layer needs of a chat core: :class:`ChatService` on one server, ``ClusterService`` in a cluster.

    ``join()`` returns a handle per transport (a hub Member, or a cluster Ticket) that the
    transport gives back to ``receive()`` and ``depart()``; None when the clients were refused
    (shutting down, backend unavailable) and told so.
    """

    hub: ChatHub
    lock: threading.Lock
    shutting_down: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, transports: Sequence[Transport]) -> Sequence[Any] | None: ...
    def receive(self, member: Any, items: list[Item]) -> bool | None:
        """Handle or queue *member*'s lines; False asks the reader not to read it until ``resume_reading``."""

    def depart(self, member: Any, reason: str | None) -> None: ...
    def flush(self) -> None: ...
    def shut_down(self) -> bool: ...
    def close_members(self, select: Callable[[Any], bool], reason: str, line: bytes) -> None: ...
    def local_transports(self) -> list[Any]: ...


class ChatService:
    """A hub, the lock that serialises it, and delivery to transports.

    For the I/O layer: ``join()``, ``receive()``, ``depart()`` and
    ``shut_down()``, each safe from any thread; ``lock`` for anything else
    that must not interleave with a delivery (a transport's own writes).

    Counters, only ever increased, each under ``lock`` (read them without it:
    an int read is atomic): ``lines_received`` and ``bytes_received`` (what
    members sent, commands and too-long lines included; a line end counts as
    one byte, a too-long line's bytes not at all), ``lines_delivered`` and
    ``bytes_delivered`` (what was handed to members' transports, chat lines,
    notices and replies alike: a line to N members counts N times; framing
    such as WebSocket's or TLS's excluded), ``joins``, ``departures`` and
    ``dropped_too_slow`` (departures because a backlog overflowed).
    """

    def __init__(self, hub: ChatHub) -> None:
        self.hub = hub
        self.lock = threading.Lock()
        self.shutting_down = False
        self.lines_received = 0
        self.bytes_received = 0
        self.lines_delivered = 0
        self.bytes_delivered = 0
        self.joins = 0
        self.departures = 0
        self.dropped_too_slow = 0

    def join(self, transports: Sequence[Transport]) -> list[Member] | None:
        """Welcome clients that arrived together; None when the server is shutting down.

        The hub connects them one by one under one lock hold, and their
        welcomes and join notices go out coalesced: one send per member.
        """
        with self.lock:
            if self.shutting_down:
                return None
            members: list[Member] = []
            deliveries: list[Delivery] = []
            for transport in transports:
                member, joined = self.hub.connect(transport)
                members.append(member)
                deliveries += joined
            self.joins += len(members)
            self._deliver(deliveries)
        if client_log.isEnabledFor(logging.INFO):
            for member in members:
                client_log.info("Client connected %s as %s", member.transport.peer, member.name)
        return members

    def receive(self, member: Member, items: list[Item]) -> None:
        """Handle *member*'s lines and deliver the result; after /quit its transport is closed with QUIT
        (in the same lock hold, after the bye), as the cluster does once the /quit is applied."""
        if message_log.isEnabledFor(logging.DEBUG):
            for item in items:
                if isinstance(item, bytes):
                    message_log.debug("%s: %s", member.name, display_bytes(item))
        with self.lock:
            if self.shutting_down:
                return
            count = len(items)
            self.lines_received += count
            try:  # one line (a person typing) is the common case: no sum() for it
                self.bytes_received += (len(items[0]) if count == 1 else sum(map(len, items))) + count  # type: ignore[arg-type]
            except TypeError:  # a LineTooLong among them: its bytes were never kept
                self.bytes_received += sum(len(item) + 1 for item in items if isinstance(item, bytes))
            before = (member.name, member.room.name)
            reaction = self.hub.receive(member, items)
            self._deliver(reaction.deliveries)
            if reaction.quit:
                member.transport.close(QUIT)
            after = (member.name, member.room.name)
        if before != after:
            if before[0] != after[0]:
                client_log.info("%s is now known as %s", before[0], after[0])
            if before[1] != after[1]:
                client_log.info("%s left %s and joined %s", after[0], before[1], after[1])

    def depart(self, member: Member, reason: str | None) -> None:
        """*member* has left (*reason*; QUIT or None after /quit): tell its room."""
        if reason == QUIT:
            reason = None
        with self.lock:
            if self.shutting_down and reason == "disconnected":
                reason = SHUTDOWN_REASON
            deliveries = self.hub.disconnect(member, reason)
            self.departures += 1
            if reason == "too slow":
                self.dropped_too_slow += 1
            if not self.shutting_down:
                self._deliver(deliveries)
        client_log.info("Client disconnected %s (%s)", member.name, reason or "quit")

    def shut_down(self) -> bool:
        """Tell every member the server is going and close their transports; False if already done."""
        with self.lock:
            if self.shutting_down:
                return False
            self.shutting_down = True
            self._deliver(self.hub.announce(SHUTDOWN_REASON))
            for member in self.hub.members:
                member.transport.close(SHUTDOWN_REASON)
            return True

    def close_members(self, select: Callable[[Any], bool], reason: str, line: bytes) -> None:
        """Send *line* to every member whose transport *select* picks, then close it with *reason*."""
        with self.lock:
            for member in self.hub.members:
                if select(member.transport):
                    member.transport.send(line)
                    member.transport.close(reason)

    def local_transports(self) -> list[Any]:
        """Every member's transport (all are this server's own)."""
        with self.lock:
            return [member.transport for member in self.hub.members]

    def flush(self) -> None:
        """Nothing waits to be published: a lone server delivers at once (see ClusterService)."""

    def start(self) -> None:
        """Nothing to join (see ClusterService)."""

    def stop(self) -> None:
        """Nothing to leave (see ClusterService)."""

    def _deliver(self, deliveries: list[Delivery]) -> None:
        hand_over(self, deliveries)

    @staticmethod
    def deliver(deliveries: list[Delivery]) -> None:
        """Hand each delivery to its receivers' transports (lock held), uncounted (a cluster's replica uses it).

        Several deliveries (a command's replies and notices, a crowd's joins)
        are coalesced first, so each receiver gets one send.
        """
        if len(deliveries) > 1:
            deliveries = coalesce(deliveries)
        for members, data in deliveries:
            for member in members:
                member.transport.send(data)


def hand_over(counters: Any, deliveries: Sequence[tuple[Sequence[Any], bytes]]) -> None:
    """Hand each delivery to its receivers' transports, one send per receiver, and count it in
    *counters*' ``lines_delivered`` and ``bytes_delivered`` (the chat lock held).

    A delivery is whole lines, so its lines are its line ends: counted once per
    delivery (at C speed), multiplied by its receivers.
    """
    if len(deliveries) > 1:
        deliveries = coalesce(deliveries)
    for members, data in deliveries:
        for member in members:
            member.transport.send(data)
        copies = len(members)
        counters.lines_delivered += data.count(b"\n") * copies
        counters.bytes_delivered += len(data) * copies
