"""The Python cost of relaying one line to 99 receivers, without the kernel's.

    python docs/fanout_cost.py                    # this tree
    PYTHONPATH=<another tree> python docs/fanout_cost.py

Runs ``Room.others()`` and ``ChatService.deliver()`` over 100 members whose
outboxes write to stand-in sockets: their ``send()`` is ``len()``, so every
line is taken whole and no system call is made. What is left is the chat's
own work per line: the figure to compare between builds (best of 9 rounds).
"""

from __future__ import annotations

import timeit
import types

import socketlab
from socketlab.chat.outbox import Outbox
from socketlab.chat.protocol import Member, Room
from socketlab.chat.service import ChatService

RECEIVERS = 99
LINE = b"<user1> 0123456789 hello there 0123456789 abcdefgh\n"


class TakesEverything:
    """A socket whose send() takes every byte at once."""

    send = staticmethod(len)


class NoBacklogs:
    """A backlog writer that is never needed (nothing is left over)."""

    def watch(self, outbox: Outbox) -> None:
        raise AssertionError("a stand-in socket took less than everything")

    unwatch = watch


def main() -> None:
    room = Room("lobby")
    for number in range(RECEIVERS + 1):
        outbox = Outbox(TakesEverything(), 1 << 20, NoBacklogs())  # type: ignore[arg-type]
        member = Member(number, f"user{number}", room, types.SimpleNamespace(send=outbox.write))
        room.members[member] = None
    sender = next(iter(room.members))

    def one_line() -> None:
        ChatService.deliver([(room.others(sender), LINE)])

    best = min(timeit.repeat(one_line, number=5000, repeat=9)) / 5000
    print(f"{best * 1e6:.2f} us per line to {RECEIVERS} receivers ({socketlab.__file__})")


if __name__ == "__main__":
    main()
