"""Sans-IO bookkeeping for the chat benchmark: tagged messages and receipts.

A benchmark message is one line of exactly ``size`` bytes::

    ~<sender>.<seq>.<send time ns>~xxxxxxxx$\\n

Receivers find the tag anywhere after a prefix (``<user3> `` from servers
that name senders), so any line-relaying server can be measured. A line is
well formed when it holds exactly one tag followed only by filler and the
closing ``$``; anything else that contains a tag character is *garbled*
(two messages merged, or one split) and none of its messages count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence, TypeVar

N = TypeVar("N", int, float)

#: A well-formed line, its prefix included (used when a chunk needs a closer look).
_LINE = re.compile(rb"[^\n~]*~(\d+\.\d+\.\d+)~x*\$")
#: The fast path: a message's tag, filler and end, anywhere in a chunk.
_MESSAGE = re.compile(rb"~(\d+\.\d+\.\d+)~x*\$\n")
#: An unfinished line longer than this is garbage: it is counted and dropped.
MAX_PARTIAL = 1 << 20
#: Tags held for analysis before feed() analyses them on the spot (bounds memory).
MAX_HELD_TAGS = 1 << 20


def make_message(sender: int, seq: int, sent_ns: int, size: int) -> bytes:
    """One tagged line of *size* bytes (newline included), or longer if the tag needs it."""
    head = b"~%d.%d.%d~" % (sender, seq, sent_ns)
    filler = size - len(head) - 2
    return head + b"x" * max(filler, 0) + b"$\n"


@dataclass
class Totals:
    """What all receivers saw together."""

    delivered: int = 0
    duplicates: int = 0
    order_violations: int = 0
    garbled: int = 0
    #: Copies of a receiver's own messages that came back to it (servers that echo): not deliveries.
    echoes: int = 0
    #: Well-formed copies from a sender the receiver should not hear (another room's): not deliveries.
    strays: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    #: Latencies to the moment the receiving process read each copy, when feed() was also given that moment
    #: (latencies_ns then run to the copy's arrival in the receiver's kernel).
    read_latencies_ns: list[int] = field(default_factory=list)


class Receipts:
    """One receiver's view: reassembles lines and checks each sender's sequence.

    ``feed()`` does only C-speed work per chunk (find the well-formed tags,
    count garbled lines) and keeps the tags with the chunk's arrival time;
    ``analyse()`` -- called when the measurement is over, or when too many
    tags are held -- checks sequences and computes latencies. *own* is this
    client's sender id: copies of its own messages (servers that echo, as
    Socket.IO's ``io.to(room).emit`` does) are not deliveries: ``feed()``
    does not count them and ``analyse()`` adds them to the totals' echoes.
    With *timed* false no latencies are recorded (a client that reads in
    batches would only measure its own delay).

    *senders* is how many senders there are (ids ``0 .. senders - 1``) or
    the ids of those this receiver hears (its room's); a well-formed copy
    from any other is a *stray* (a relay that crossed rooms). With
    *keep_own* false the receiver's latencies go to the totals only.
    """

    def __init__(
        self,
        totals: Totals,
        senders: int | Iterable[int],
        messages: int,
        own: int | None = None,
        timed: bool = True,
        keep_own: bool = True,
    ) -> None:
        self.totals = totals
        self.own = own
        #: How a tag of our own begins (its sender id between the opening ~ and the first dot).
        self._own_tag = b"~%d." % own if own is not None else b""
        self.timed = timed
        self.keep_own = keep_own
        self._partial = b""
        ids = range(senders) if isinstance(senders, int) else senders
        self._seen = {sender: bytearray(messages) for sender in ids}
        self._last = dict.fromkeys(self._seen, -1)
        self._held: list[tuple[int, int, list[bytes]]] = []
        self._held_count = 0
        #: This receiver's own latencies (also added to the totals'), when timed.
        self.latencies_ns: list[int] = []
        #: Well-formed copies of its own messages fed so far (the echo; analyse() checks them no further).
        self.echoes_fed = 0

    def feed(self, data: bytes, now_ns: int, read_ns: int = 0) -> int:
        """Account for *data*, received at *now_ns* (and read by this process at *read_ns*, if given);
        return the well-formed messages in it from other senders."""
        buffer = self._partial + data if self._partial else data
        end = buffer.rfind(b"\n")
        if end < 0:
            self._partial = self._bounded(buffer)
            return 0
        self._partial = self._bounded(buffer[end + 1 :])
        body = buffer[: end + 1]
        tags = _MESSAGE.findall(body)
        fast = body.count(b"~") == 2 * len(tags)
        if not fast:  # something is off: judge line by line
            tags = []
            for line in body.split(b"\n")[:-1]:
                match = _LINE.fullmatch(line)
                if match:
                    tags.append(match.group(1))
                elif b"~" in line:
                    self.totals.garbled += 1
        self._held.append((now_ns, read_ns, tags))
        self._held_count += len(tags)
        if self._held_count > MAX_HELD_TAGS:
            self.analyse()
        if not self._own_tag:
            return len(tags)
        # Every ~ of a clean body delimits a tag, so an opening "~<own>." is one of ours, and only that.
        own_prefix = self._own_tag[1:]
        mine = body.count(self._own_tag) if fast else sum(1 for tag in tags if tag.startswith(own_prefix))
        self.echoes_fed += mine
        return len(tags) - mine

    def analyse(self) -> None:
        """Check the held tags: duplicates, order, latency."""
        totals = self.totals
        seen, last, own = self._seen, self._last, self.own
        timed, keep_own = self.timed, self.keep_own
        own_latencies, read_latencies = self.latencies_ns, totals.read_latencies_ns
        for now_ns, read_ns, tags in self._held:
            for tag in tags:
                sender_text, seq_text, sent_text = tag.split(b".")
                sender = int(sender_text)
                if sender == own:
                    totals.echoes += 1
                    continue
                marks = seen.get(sender)
                if marks is None:
                    totals.strays += 1
                    continue
                seq = int(seq_text)
                if seq >= len(marks):
                    totals.garbled += 1
                    continue
                if marks[seq]:
                    totals.duplicates += 1
                    continue
                marks[seq] = 1
                totals.delivered += 1
                if seq < last[sender]:
                    totals.order_violations += 1
                else:
                    last[sender] = seq
                if timed:
                    sent_ns = int(sent_text)
                    latency = now_ns - sent_ns
                    totals.latencies_ns.append(latency)
                    if read_ns:
                        read_latencies.append(read_ns - sent_ns)
                    if keep_own:
                        own_latencies.append(latency)
        self._held = []
        self._held_count = 0

    def _bounded(self, partial: bytes) -> bytes:
        if len(partial) > MAX_PARTIAL:
            self.totals.garbled += 1
            return b""
        return partial


def percentile(sorted_values: Sequence[N], fraction: float) -> N | int:
    """The value below which *fraction* of *sorted_values* lie (nearest rank)."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]
