"""Bounded, never-blocking output for the chat's connections.

Every byte a chat client is owed goes through its :class:`Outbox`:
``write()`` offers data to the kernel at once (the socket is non-blocking)
and keeps only what the kernel did not take, at most ``limit`` bytes; a
single :class:`BacklogWriter` thread sends the rest when the socket becomes
writable. A client that stops reading fills only its own backlog and is
dropped as ``too slow``; nobody else waits. Transports (TCP lines, WebSocket
frames) encode first and write bytes here; the outbox knows nothing of them.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from typing import Callable

from socketlab.serving import Waker
from socketlab.tls import TlsError, TlsLayer


def reason_for(error: OSError) -> str:
    """The departure reason a failed send or recv means, e.g. ``connection reset``."""
    if error.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    return error.strerror or str(error)


class Outbox:
    """One connection's outgoing bytes. Every method runs under the chat lock.

    Overflow or a send error closes the outbox and shuts the socket down,
    which the reader loop sees as the client leaving; ``reason`` says why.
    """

    __slots__ = ("sock", "send_now", "limit", "writer", "chunks", "size", "idle", "closed", "reason", "ending", "held")

    def __init__(self, sock: socket.socket, limit: int, writer: "BacklogWriter") -> None:
        self.sock = sock
        self.send_now = sock.send
        self.limit = limit
        self.writer = writer
        self.chunks: list[bytes] = []
        self.size = 0
        #: Nothing waiting and not closed: write() sends at once (one test on the hot path).
        self.idle = True
        self.closed = False
        self.reason: str | None = None
        #: end() was called: fail with this reason once the backlog is sent.
        self.ending: str | None = None
        #: hold() is keeping writes back until release().
        self.held = False

    def write_raw(self, data: bytes) -> None:
        """What write() does, for bytes already encoded for the wire (TlsOutbox encrypts in write())."""
        self.write(data)

    def write(self, data: bytes) -> None:
        """Send *data* now if nothing is waiting, else queue it behind the backlog.

        The relay's hot path, once per receiver of every line: one non-blocking
        send() when the kernel takes it all.
        """
        if self.idle:
            try:
                sent = self.send_now(data)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                self.fail(reason_for(error))
                return
            if sent != len(data):
                self._backlog(data[sent:])
            return
        if self.closed or self.ending is not None:  # nothing goes out after a goodbye
            return
        if self.size + len(data) > self.limit and not self.held:  # held: one read's answer, not a backlog yet
            self.fail("too slow")
            return
        self.chunks.append(data)
        self.size += len(data)

    def _backlog(self, rest: bytes) -> None:
        """Start a backlog with *rest* and have the BacklogWriter send it."""
        if len(rest) > self.limit:
            self.fail("too slow")
            return
        self.chunks.append(rest)
        self.size = len(rest)
        self.idle = False
        self.writer.watch(self)

    def hold(self) -> None:
        """Keep what is written from now until release(), to send it with one send().

        A WebSocket handshake's answer and the welcome that follows it are one
        send() this way, not two. Does nothing with a backlog (it is sent in order anyway).
        """
        if self.idle:
            self.idle = False
            self.held = True

    def release(self) -> None:
        """Send what was kept since hold(): at once, or what the kernel leaves as a backlog."""
        if not self.held:
            return
        self.held = False
        if self.closed:
            return
        data = b"".join(self.chunks)
        ending, self.ending = self.ending, None
        self.chunks, self.size, self.idle = [], 0, True
        if data:
            Outbox.write(self, data)  # already encoded for the wire (encrypted, in a TlsOutbox)
        if ending is not None:
            self.end(ending)

    def flush(self) -> None:
        """Send as much of the backlog as the kernel takes now."""
        if self.closed or not self.size:
            return
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return
        except OSError as error:
            self.fail(reason_for(error))
            return
        if sent == len(data):
            self.chunks = []
            self.size = 0
            self.idle = True
            self.writer.unwatch(self)
            if self.ending is not None:
                self.fail(self.ending)
        elif sent:
            self.chunks = [data[sent:]]
            self.size = len(data) - sent

    def end(self, reason: str) -> None:
        """Shut the socket down, as fail() does, once the backlog is sent."""
        if self.closed or self.ending is not None:
            return
        if self.held:  # what was kept goes first, then the end: nothing is left held for good
            self.ending = reason
            self.release()
            return
        if self.size:
            self.ending = reason
        else:
            self.fail(reason)

    def fail(self, reason: str) -> None:
        """Drop the backlog, stop writing, and shut the socket down (the reader loop sees EOF)."""
        if self.closed:
            return
        self.close()
        self.reason = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop writing for good (the socket is being closed)."""
        if self.size:  # only a backlog is watched
            self.writer.unwatch(self)
        self.idle = False
        self.closed = True
        self.chunks = []
        self.size = 0


class BacklogWriter:
    """One thread that sends backlogs when sockets become writable.

    Every ``tick`` seconds (when set) it also calls *sweep* -- idle clients,
    keepalive pings, handshake deadlines -- outside the lock.
    """

    def __init__(self, lock: threading.Lock, tick: float | None, sweep: Callable[[], None]) -> None:
        self.lock = lock
        self.tick = tick
        self._sweep = sweep
        self._selector = selectors.DefaultSelector()
        self._waker = Waker()
        self._waker.register(self._selector)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="chat-backlog-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, outbox: Outbox) -> None:
        """Send *outbox*'s backlog when its socket is writable (lock held)."""
        try:
            self._selector.register(outbox.sock, selectors.EVENT_WRITE, outbox)
        except (KeyError, ValueError, OSError):
            pass

    def unwatch(self, outbox: Outbox) -> None:
        """Stop watching *outbox* (lock held)."""
        try:
            self._selector.unregister(outbox.sock)
        except (KeyError, ValueError, OSError):
            pass

    def stop(self) -> None:
        self._running = False
        self._waker.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._selector.close()
        self._waker.close()

    def _run(self) -> None:
        tick = self.tick
        next_sweep = time.monotonic() + (tick or 0)
        while self._running:
            try:
                events = self._selector.select(tick)
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            self._flush_ready(events)
            del events  # the outboxes it names (closed ones too) are not kept while the loop waits
            if tick and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + tick
                try:
                    self._sweep()
                except Exception:  # the timers must go on, and so must the backlogs
                    logging.getLogger("socketlab.chat").exception("Error in the chat's timers")

    def _flush_ready(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Flush the outboxes select() found writable; drain the waker if it was woken."""
        with self.lock:
            for key, _mask in events:
                if key.data is not None:
                    key.data.flush()
        for key, _mask in events:
            if key.data is None:
                self._waker.drain()


class TlsOutbox(Outbox):
    """An outbox that encrypts: ``write()`` takes plaintext, ``write_raw()`` records (the handshake's)."""

    __slots__ = ("tls",)

    def __init__(self, sock: socket.socket, limit: int, writer: BacklogWriter, tls: TlsLayer) -> None:
        super().__init__(sock, limit, writer)
        self.tls = tls

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            records = self.tls.send(data)
        except TlsError as error:
            self.fail(f"TLS error: {error}")
            return
        if records:
            Outbox.write(self, records)

    def write_raw(self, records: bytes) -> None:
        if records:
            Outbox.write(self, records)
