"""The tutorial's UDP part: a datagram receiver and a sender.

UDP has no connection and no delivery guarantee: a datagram arrives whole
or not at all, and nothing says which. These tools count and report; they
never retry or pretend.

- :class:`DatagramReceiver` binds an address (port 0 allowed), calls
  ``on_datagram(data, sender)`` for each datagram and keeps totals;
  ``serve_forever()`` / ``shutdown()`` / ``with`` like the TCP servers.
- :func:`send_datagrams` sends payloads (repeated, paced) from a connected
  socket, so "nobody listens there" (ICMP port unreachable) is reported,
  and optionally waits for replies, handing each to a callback as it comes.
"""

from __future__ import annotations

import builtins
import errno
import logging
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable

from socketlab.access import AccessRules
from socketlab.addresses import bind_error, describe_os_error, format_address, resolve
from socketlab.errors import OutputError, SocketlabError
from socketlab.relay import write_to
from socketlab.serving import Waker, serve_both_families
from socketlab.text import display_bytes, format_rate, format_seconds, hexdump, plural

logger = logging.getLogger("socketlab.udp")

#: Largest UDP payloads: 65535 minus the IP and UDP headers (IPv6 has no IP header in its length).
MAX_PAYLOAD: dict[int, int] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
#: Receive buffer big enough for any datagram, so none is ever truncated.
RECEIVE_BUFFER = 65536
#: Kernel receive buffer the receiver asks for, to ride out bursts.
SOCKET_RCVBUF = 32 * 1024 * 1024
#: Linux's SO_RCVBUFFORCE, which Python's socket module does not name (value from <asm/socket.h>).
SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
#: Distinct senders remembered for the totals; beyond this they are counted as "more".
MAX_TRACKED_SENDERS = 65536


class DatagramTooLarge(SocketlabError):
    """A payload does not fit in one datagram."""


class NoReply(SocketlabError):
    """No datagram came back in time, or nobody listens at the target."""


class ReceiveTimeout(SocketlabError):
    """The receiver waited its timeout without a datagram."""


@dataclass
class ReceiverTotals:
    """What a receiver has seen so far."""

    datagrams: int = 0
    bytes: int = 0
    senders: set[Any] = field(default_factory=set)
    more_senders: bool = False
    #: Datagrams dropped because their sender is not allowed (--allow/--deny).
    refused: int = 0

    def describe(self) -> str:
        senders = plural(len(self.senders), "sender")
        if self.more_senders:
            senders = senders.replace(" ", "+ ", 1)
        refused = f", {self.refused} refused" if self.refused else ""
        return f"{plural(self.datagrams, 'datagram')}, {plural(self.bytes, 'byte')} from {senders}{refused}"


class DatagramReceiver:
    """Receives datagrams on one address until shutdown() or a limit.

    Raises AddressError when the address cannot be bound. ``payload`` is
    what on_datagram() logs: ``"text"``, ``"hex"`` or ``"quiet"``.
    ``max_datagrams`` ends serve_forever() after that many; ``timeout``
    makes it raise ReceiveTimeout after that many silent seconds. With
    ``access`` (an :class:`~socketlab.access.AccessRules`), datagrams from
    senders it does not permit are dropped and counted as refused. With
    ``output`` (a binary file), every datagram's bytes are written to it
    unchanged, one after another (``nc -u -l > file``); when it cannot be
    written the receiver logs why and stops.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        echo: bool = False,
        payload: str = "text",
        max_datagrams: int | None = None,
        timeout: float | None = None,
        access: AccessRules | None = None,
        output: BinaryIO | None = None,
        logger: logging.Logger = logger,
    ) -> None:
        host, port = address
        self.logger = logger
        self.output = output
        self.access = access if access is not None and access.restricts else None
        self.echo = echo
        self.payload = payload
        self.max_datagrams = max_datagrams
        self.timeout = timeout
        self.totals = ReceiverTotals()
        family, sockaddr = resolve(host, port, socket.SOCK_DGRAM, passive=True)
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            serve_both_families(self.socket)
            self._grow_receive_buffer()
            self.socket.bind(sockaddr)
        except OSError as error:
            self.socket.close()
            raise bind_error(host, port, error) from None
        self.server_address = self.socket.getsockname()
        self._stopping = False
        self._output_error: str | None = None
        self._waker = Waker()
        self._done = threading.Event()
        self._done.set()

    def _grow_receive_buffer(self) -> None:
        """Ask for SOCKET_RCVBUF: forced past net.core.rmem_max with CAP_NET_ADMIN, else up to it."""
        try:
            if SO_RCVBUFFORCE is None:
                raise PermissionError
            self.socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF)
        except OSError:
            try:  # capped by net.core.rmem_max for unprivileged users
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
            except OSError:
                pass

    @property
    def address_text(self) -> str:
        return format_address(self.server_address)

    # -- events -----------------------------------------------------------

    def on_listening(self) -> None:
        self.logger.info("Listening for UDP on %s", self.address_text)

    def on_datagram(self, data: bytes, sender: Any) -> None:
        """One datagram arrived from *sender* (already counted in totals)."""
        if self.output is not None:
            self._write_output(data)
        if self.payload == "quiet":
            return
        peer = format_address(sender)
        if not data:
            self.logger.info("Get message from client %s (empty datagram)", peer)
        elif self.payload == "hex":
            self.logger.info("Get message from client %s (%d bytes):\n%s", peer, len(data), hexdump(data))
        else:
            self.logger.info("Get message from client %s: %s", peer, display_bytes(data))

    def _write_output(self, data: bytes) -> None:
        assert self.output is not None
        try:
            write_to(self.output, data)
            self.output.flush()
        except OSError as error:
            self.output = None
            self._output_error = f"cannot write the output: {describe_os_error(error)}"
            self.logger.error("Cannot write the output: %s; stopping", describe_os_error(error))
            self._stopping = True

    def on_close(self) -> None:
        self.logger.info("Receiver closed: %s", self.totals.describe())

    # -- serving ----------------------------------------------------------

    def serve_forever(self) -> None:
        """Receive until shutdown(), max_datagrams, or timeout (ReceiveTimeout)."""
        self._done.clear()
        try:
            self.on_listening()
            self._receive_loop()
        finally:
            self._done.set()
        if self._output_error is not None:
            raise OutputError(self._output_error)

    def _receive_loop(self) -> None:
        """Read datagrams while there are any; wait in select() (the socket, and the waker) when there are none."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ, self.socket)
            self._waker.register(selector)
            self._receive(selector)

    def _receive(self, selector: selectors.BaseSelector) -> None:
        sock = self.socket
        sock.setblocking(False)
        buffer = bytearray(RECEIVE_BUFFER)
        view = memoryview(buffer)
        totals = self.totals
        senders = totals.senders
        recvfrom_into = sock.recvfrom_into
        on_datagram = self.on_datagram
        quiet = self.payload == "quiet" and self.output is None and type(self).on_datagram is DatagramReceiver.on_datagram
        echo = self.echo
        limit = self.max_datagrams
        access = self.access
        while not self._stopping:
            try:
                count, sender = recvfrom_into(buffer)
            except BlockingIOError:
                if not selector.select(self.timeout):
                    raise ReceiveTimeout(f"no datagram within {self.timeout:g} s on {self.address_text}") from None
                continue  # a datagram, or shutdown() woke us
            except OSError as error:
                if self._stopping:
                    return
                if error.errno in (errno.ECONNREFUSED, errno.EINTR):  # ICMP from an echo reply, signals
                    continue
                raise
            if access is not None and not access.permits(sender[0]):
                totals.refused += 1
                continue
            totals.datagrams += 1
            totals.bytes += count
            if sender not in senders:
                if len(senders) < MAX_TRACKED_SENDERS:
                    senders.add(sender)
                else:
                    totals.more_senders = True
            if not quiet:
                on_datagram(bytes(view[:count]), sender)
            if echo:
                try:
                    sock.sendto(view[:count], sender)
                except OSError as error:
                    self.logger.warning("Cannot echo to %s: %s", format_address(sender), error.strerror)
            if limit is not None and totals.datagrams >= limit:
                return

    def shutdown(self) -> None:
        """Stop serve_forever() (from another thread) and wait for it, as the servers stop: through a waker."""
        self._stopping = True
        self._waker.wake()
        self._done.wait(2.0)

    def server_close(self) -> None:
        self.socket.close()
        self._waker.close()

    def __enter__(self) -> "DatagramReceiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done.is_set():
            self.shutdown()
        self.server_close()


@dataclass
class SendReport:
    """What send_datagrams() did."""

    datagrams: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: The first reply, when send_datagrams() waited for one.
    reply: builtins.bytes | None = None
    #: Replies received while waiting.
    replies: int = 0

    def describe(self, target: str) -> str:
        """``Sent 1 datagram (16 bytes) to HOST:PORT in 0.000123 s (8,130 datagrams/s)``: every figure with its precision."""
        rate = f" ({format_rate(self.datagrams / self.seconds)} datagrams/s)" if self.seconds > 0 else ""
        return (
            f"Sent {plural(self.datagrams, 'datagram')} ({plural(self.bytes, 'byte')}) to {target} "
            f"in {format_seconds(self.seconds)} s{rate}"
        )


def check_payload(payload: bytes, family: int, target: str) -> None:
    """Raise DatagramTooLarge when *payload* does not fit one datagram."""
    limit = MAX_PAYLOAD.get(family, 65507)
    if len(payload) > limit:
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise DatagramTooLarge(
            f"a datagram of {len(payload)} bytes is larger than the {limit} bytes one {kind} datagram "
            f"can carry to {target}; nothing was sent"
        )


def send_datagrams(
    host: str,
    port: int,
    payloads: Iterable[bytes],
    *,
    repeat: int = 1,
    interval: float = 0.0,
    wait_reply: float | None = None,
    on_sent: Callable[[SendReport], None] | None = None,
    on_reply: Callable[[bytes, Any], None] | None = None,
) -> SendReport:
    """Send each payload as one datagram, *repeat* times, then maybe wait for replies.

    *on_sent(report)* is called once everything is sent, before any wait.
    With *wait_reply* seconds: without *on_reply*, the first reply is
    returned as ``report.reply``; with it, ``on_reply(data, sender)`` is called
    for every reply as it arrives until the wait ends. A list or tuple of
    payloads is checked completely before anything is sent. Raises
    AddressError (unknown host), DatagramTooLarge, and NoReply when the wait
    passes without a datagram or nobody listens.
    """
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM, passive=False, action="send to")
    target = format_address((host, port))
    if isinstance(payloads, (list, tuple)):
        for payload in payloads:
            check_payload(payload, family, target)
    report = SendReport()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(sockaddr)
        except OSError as error:
            raise bind_error(host, port, error, action="send to") from None
        start = time.perf_counter()
        try:
            _send_all(sock, payloads, repeat, interval, family, target, report)
            report.seconds = time.perf_counter() - start
            if on_sent is not None:
                on_sent(report)
            if wait_reply is not None:
                _wait_for_replies(sock, wait_reply, report, on_reply)
                if not report.replies:
                    raise NoReply(f"no reply from {target} within {wait_reply:g} s")
            elif sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED:
                raise ConnectionRefusedError
        except ConnectionRefusedError:
            raise NoReply(f"no one is listening on {target}") from None
        except OSError as error:
            raise bind_error(host, port, error, action="send to") from None
    return report


def _wait_for_replies(
    sock: socket.socket, seconds: float, report: SendReport, on_reply: Callable[[bytes, Any], None] | None
) -> None:
    """Receive replies until *seconds* pass (or the first one, without *on_reply*)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data, sender = sock.recvfrom(RECEIVE_BUFFER)
        except socket.timeout:
            return
        except ConnectionRefusedError:
            if report.replies:  # a reply came, then the port closed: what came stands
                return
            raise
        report.replies += 1
        if report.reply is None:
            report.reply = data
        if on_reply is None:
            return
        on_reply(data, sender)


def _send_all(
    sock: socket.socket,
    payloads: Iterable[bytes],
    repeat: int,
    interval: float,
    family: int,
    target: str,
    report: SendReport,
) -> None:
    send = sock.send
    listed = payloads if isinstance(payloads, (list, tuple)) else None
    if listed is not None and len(listed) == 1 and not interval:
        payload = listed[0]
        left = repeat
        while left:  # the flat-out path: nothing but send() in the loop
            try:
                for _ in range(left):
                    send(payload)
                    left -= 1
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.0005)  # out of kernel buffers: back off, then resume
        report.datagrams += repeat
        report.bytes += repeat * len(payload)
        return
    next_at = time.perf_counter()
    for _round in range(repeat):
        source = listed if listed is not None else payloads
        for payload in source:
            if listed is None:
                check_payload(payload, family, target)
            if interval and report.datagrams:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing, by design
            _send_retrying(send, payload)
            report.datagrams += 1
            report.bytes += len(payload)
        if listed is None:
            break  # a stream (stdin) is read once


def _send_retrying(send: Any, payload: bytes) -> None:
    """send(), waiting briefly when the kernel is out of buffers (ENOBUFS)."""
    while True:
        try:
            send(payload)
            return
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            time.sleep(0.0005)
