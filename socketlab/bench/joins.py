"""Knowing that Socket.IO clients are in their room, from what any Socket.IO chat server does.

The tutorial's server answers the event ``room`` with nothing (no ack, no
notice): a client that sent it cannot tell when it has been handled. What
every such server does is relay a ``chat message`` to the room, the sender
included (``io.to(room).emit``). So one client of a batch, whose own ``room``
went first on the same connection, sends a check line; each client that
hears it is in the room. Clients whose ``room`` the server handled after the
check line (their packets travel on other connections) hear a later one:
a new check goes out every :data:`JOIN_RETRY` seconds until every client
heard one, or :data:`JOIN_LIMIT` seconds have passed.

The check lines hold neither ``~`` nor ``$``: a receiver that still has one
unread when the measurement starts neither counts it nor calls it garbled.
"""

from __future__ import annotations

import selectors
import time
from typing import Any

#: The chat line that tells a client it is in its room.
JOIN_CHECK = b"bench: join check"
#: Seconds to wait for every client to hear one check line before sending another.
JOIN_RETRY = 0.5
#: Seconds after which clients that heard no check line are given up (closed).
JOIN_LIMIT = 10.0


def confirm_joins(clients: list[Any], limit: float = JOIN_LIMIT) -> list[Any]:
    """The *clients* that heard a check line in their room, in order; the others are closed.

    *clients* are :class:`~socketlab.bench.wire.BenchClient` objects over
    Socket.IO, each with its ``room`` sent, non-blocking; the first one sends
    the check lines. Chat lines read here are discarded.
    """
    if not clients:
        return []
    clients = list(clients)
    waiting = set(range(len(clients)))
    selector = selectors.DefaultSelector()
    for index, client in enumerate(clients):
        selector.register(client, selectors.EVENT_READ, index)
    prober = clients[0]
    deadline = time.monotonic() + limit
    next_check = 0.0
    try:
        while waiting:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_check:
                prober.settimeout(max(0.1, deadline - now))
                try:  # framed just before it goes: under TLS, a record made and not sent would spoil the next
                    prober.sendall(prober.take_replies() + prober.frame(JOIN_CHECK + b"\n"))
                except OSError:
                    break  # the first client is gone: nobody checks the others
                finally:
                    prober.setblocking(False)
                next_check = now + JOIN_RETRY
            ready = [(index, clients[index]) for index in waiting if clients[index].has_pending]
            if not ready:
                timeout = max(0.0, min(next_check, deadline) - time.monotonic())
                ready = [(key.data, key.fileobj) for key, _ in selector.select(timeout)]
            for index, client in ready:
                heard = _heard(client)
                if heard is None:
                    continue
                if heard:  # a member now; and the prober, whose line reached it, is one too
                    for member in (index, 0):
                        if member in waiting:
                            waiting.discard(member)
                            selector.unregister(clients[member])
                else:  # closed
                    selector.unregister(client)
                    waiting.discard(index)
                    client.close()
                    clients[index] = None
    finally:
        selector.close()
    for index in waiting:
        clients[index].close()
    return [client for index, client in enumerate(clients) if index not in waiting and client is not None]


def _heard(client: Any) -> bool | None:
    """Whether *client*'s next read holds a check line (None: nothing read; False: it closed)."""
    try:
        data = client.recv(1 << 16)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return False
    if not data:
        return False
    return True if JOIN_CHECK in data else None
