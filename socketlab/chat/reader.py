"""The chat's one reader thread: every client's input, whatever its transport.

Measured on 2 cores: with a thread per client, messages from four senders
each woke a different thread and the relay's p99 latency doubled compared
with one sender; one reader thread, woken by the selector, serves all
senders alike and holds no stack per idle client.

A client that leaves is first told everything it is owed: its outbox is
flushed (by the BacklogWriter), then the server ends its side and reads
until the client closes, so that no reset destroys the last lines -- for at
most FLUSH_TIMEOUT seconds.
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from socketlab.chat.connection import MAX_READ, Connection, Phase
from socketlab.chat.opening import looks_like_plaintext
from socketlab.chat.outbox import reason_for
from socketlab.chat.service import QUIT
from socketlab.lines import Item
from socketlab.serving import Waker
from socketlab.timers import Deadlines
from socketlab.tls import TlsError

if TYPE_CHECKING:
    from socketlab.access import RateLimitedLog
    from socketlab.chat.service import ChatCore

client_log = logging.getLogger("socketlab.chat.clients")

#: The selector key data of the epoll object that watches paused clients for hang-ups.
_HANGUPS = object()

#: How long a departing client (and shutdown) waits for its backlog to drain.
FLUSH_TIMEOUT = 2.0


class ReaderHost(Protocol):
    """What the reader loop needs of the server around it (ChatServer, or a test's stand-in)."""

    service: "ChatCore"
    #: Seconds of silence before a client is dropped (None: no limit): the loop then notes activity.
    idle_timeout: float | None
    logger: logging.Logger
    refusal_log: "RateLimitedLog"

    def join_arrivals(self, conns: list[Connection]) -> bool:
        """Make *conns* (handed over with ``add(..., join=True)``) members; False if they were refused (and closed)."""

    def join_late(self, conn: Connection) -> None:
        """*conn* finished its handshake (TLS, WebSocket): make it a member or refuse it."""

    def connection_closed(self, conn: Connection) -> None:
        """*conn* is closed for good."""


class ReaderLoop:
    """One thread that reads every connection and hands complete lines to the chat service."""

    #: Seconds stop() waits for the thread before leaving the connections to it.
    stop_timeout: float = 5.0

    def __init__(self, server: ReaderHost) -> None:
        self.server = server
        self.service = server.service
        self._selector = selectors.DefaultSelector()
        self._waker = Waker()
        self._waker.register(self._selector)
        self._closing: dict[Connection, None] = {}
        #: Clients over their flood budget, not read until their deadline here (timers: a wake-up looks
        #: only at those due); _held says which are paused.
        self._paused: Deadlines[Connection] = Deadlines()
        self._held: set[Connection] = set()
        #: Paused clients that hang up are noticed without reading them: epoll's EPOLLRDHUP, where there is epoll.
        self._hangups = select.epoll() if hasattr(select, "epoll") else None
        self._paused_by_fd: dict[int, Connection] = {}
        if self._hangups is not None:
            self._selector.register(self._hangups.fileno(), selectors.EVENT_READ, _HANGUPS)
        #: Connections handed over by other threads, registered by the reader thread itself: only the
        #: thread that sits in select() changes what its selector watches.
        self._arriving: deque[Connection] = deque()
        #: Batches of connections to make members before they are watched (see add()).
        self._joining: deque[list[Connection]] = deque()
        #: Clients the chat core asked not to read until their earlier lines are out (a cluster's publisher
        #: is behind), and those it lets go again (any thread hands them over; see resume_reading()).
        self._core_held: set[Connection] = set()
        self._resuming: deque[Connection] = deque()
        #: Members that quit, handed over by whichever thread applied the /quit (see request_leave()).
        self._quitting: deque[Connection] = deque()
        #: Every connection added and not finished yet (any thread reads the count, under _open_lock).
        self._open: set[Connection] = set()
        self._open_lock = threading.Lock()
        self._running = True
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="chat-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, conns: list[Connection], join: bool = False) -> None:
        """Start reading *conns* (any thread; their sockets are non-blocking): the reader thread registers them.

        With *join*, the reader thread first makes them members (the host's join_arrivals(), the batch at
        once): the thread that accepts them goes back to accepting at once, and in a crowd connecting at
        the same moment the listen queue is emptied as fast as connections come, not as fast as they are
        welcomed (measured: 19,000 TCP clients at once overflowed a queue of 4,096 ten thousand times, and
        those clients tried again a second or three later).
        """
        with self._open_lock:
            self._open.update(conns)
        for conn in conns:
            conn.on_quit = self.request_leave
        if join:
            self._joining.append(conns)
        else:
            self._arriving.extend(conns)
        self._waker.wake()

    def request_leave(self, conn: Connection) -> None:
        """*conn*'s member quit (any thread; the chat lock may be held): the reader thread takes it out."""
        self._quitting.append(conn)
        self._waker.wake()

    def resume_reading(self, conn: Connection) -> None:
        """The chat core has room for *conn*'s lines again (any thread): the reader thread reads it again."""
        self._resuming.append(conn)
        self._waker.wake()

    def _resume_held_by_core(self) -> None:
        while self._resuming:
            conn = self._resuming.popleft()
            if conn not in self._core_held:
                continue
            self._core_held.discard(conn)
            if conn not in self._held and conn.phase is not Phase.CLOSED:
                try:
                    self._selector.register(conn.sock, selectors.EVENT_READ, conn)
                except (ValueError, KeyError, OSError):  # closed meanwhile, or watched already
                    pass

    def _take_out_quitters(self) -> None:
        """Members that quit leave, as a client that ended its side does: flushed, then our side ended."""
        while self._quitting:
            self.leave(self._quitting.popleft(), QUIT)

    def _join_arrivals(self) -> None:
        """Make the batches handed over with join=True members, then watch them (reader thread)."""
        while self._joining:
            batch = [conn for conn in self._joining.popleft() if conn.phase is not Phase.CLOSED]
            try:
                joined = bool(batch) and self.server.join_arrivals(batch)
            except Exception as error:  # as for a client: never take the reader down; these are closed
                self.server.logger.error("Cannot welcome %d new client(s): %s: %s", len(batch), type(error).__name__, error)
                for conn in batch:
                    self.abandon(conn)
                continue
            if joined:
                self._arriving.extend(batch)

    def _register_arrivals(self) -> None:
        """Watch the connections other threads handed over (reader thread)."""
        while self._arriving:
            conn = self._arriving.popleft()
            if conn.phase is Phase.CLOSED:  # finished before it was ever watched
                continue
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, KeyError, OSError):  # its socket is closed already
                self.finish(conn)

    @property
    def held_count(self) -> int:
        """Clients held back by flood control now (reader thread; other threads read a near figure)."""
        return len(self._held)

    @property
    def count(self) -> int:
        """Connections still open (any thread)."""
        with self._open_lock:
            return len(self._open)

    def stop(self) -> None:
        """Stop the thread and close whatever is still open (idempotent).

        If the thread does not stop within ``stop_timeout``, its connections and selector are left to it (the
        thread is a daemon): closing them under a thread still using them would be worse.
        """
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        self._waker.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.stop_timeout)
            if self._thread.is_alive():
                self.server.logger.error(
                    "The chat reader did not stop within %g s; leaving %d connections open", self.stop_timeout, self.count
                )
                return
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, Connection):
                self.finish(key.data)
        with self._open_lock:
            remaining = list(self._open)
        for conn in remaining:
            self.finish(conn)
        self._selector.close()
        if self._hangups is not None:
            self._hangups.close()
        self._waker.close()

    def _run(self) -> None:
        track_idle = self.server.idle_timeout is not None
        while self._running:
            timeout = 0.05 if self._closing else None
            resume_at = self._paused.next_time() if self._held else None
            if resume_at is not None:
                soonest = max(0.0, resume_at - time.monotonic())
                timeout = soonest if timeout is None else min(timeout, soonest)
            try:
                events = self._selector.select(timeout)
            except (OSError, ValueError):
                if not self._running:
                    return
                continue
            self._waker.drain_if_among(events)  # first: a wake-up while the queues are looked at stays pending
            if self._joining:
                self._join_arrivals()
            if self._arriving:
                self._register_arrivals()
            if self._quitting:
                self._take_out_quitters()
            if self._resuming:
                self._resume_held_by_core()
            self._dispatch(events, track_idle)
            del events  # what it names (closed connections too) is not kept while the loop waits
            try:
                if self._closing:
                    self._advance_all()
                if self._held:
                    self._resume_due()
                self.service.flush()
            except Exception as error:  # the reader thread must never die: log it and go on
                self.server.logger.error("Error in the reader loop: %s: %s", type(error).__name__, error)

    def _dispatch(self, events: list[tuple[selectors.SelectorKey, int]], track_idle: bool) -> None:
        """Read from each connection select() found readable."""
        for key, _mask in events:
            conn = key.data
            if conn is None:  # the waker, drained already
                continue
            if conn is _HANGUPS:
                try:
                    self._paused_hung_up()
                except Exception as error:  # as for a client: never take the reader down
                    self.server.logger.error("Error in the reader loop: %s: %s", type(error).__name__, error)
                continue
            try:
                self._readable(conn, track_idle)
            except Exception as error:  # one client must never take the reader down
                self.server.logger.error("Error serving %s: %s: %s", conn.peer, type(error).__name__, error)
                self.abandon(conn)

    def _readable(self, conn: Connection, track_idle: bool) -> None:
        departed = conn.departed
        try:
            data = conn.sock.recv(MAX_READ if departed else conn.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            if departed:
                self.finish(conn)
            else:
                self._log_broken_handshake(conn, reason_for(error))
                self.leave(conn, conn.outbox.reason or reason_for(error))
            return
        if departed:  # the client has left: discard until it closes
            if not data:
                self.finish(conn) if conn.phase is Phase.DRAINING else self._stop_reading(conn)
            return
        if not data:
            self._log_broken_handshake(conn, "closed by the client")
            self._ended(conn)
            return
        if track_idle:
            conn.last_active = time.monotonic()
        size = len(data)
        if size == conn.read_size and conn.read_size < MAX_READ:
            conn.read_size *= 4
        if conn.tls is not None:
            plain = self._decrypt(conn, data)
            if plain is None:
                return
            data = plain
        items = conn.data_received(data) if data else []
        if conn.phase is Phase.HANDSHAKING and conn.ready_to_join():
            self.server.join_late(conn)
        if conn.gate is not None:
            now = time.monotonic()
            items = conn.gate.admit(items, size, now)
            resume = conn.gate.resume_at(now)
            if resume is not None:
                self._pause(conn, resume)
        if not self._hand_on(conn, items):
            return
        ended = conn.ended()
        if ended is not None:
            self.leave(conn, conn.outbox.reason or ended)
        elif conn.tls is not None and conn.tls.peer_closed:  # close_notify: the client ended its side
            self._ended(conn)

    def _hand_on(self, conn: Connection, items: list[Item]) -> bool:
        """Give *conn*'s lines to the chat; False when it quit (and has left)."""
        if items and conn.phase is Phase.MEMBER and not conn.outbox.closed:
            if self.service.receive(conn.member, items) is False and conn not in self._core_held:
                self._core_held.add(conn)  # TCP flow control holds the client until the core has room
                try:
                    self._selector.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
            if self._quitting:  # a /quit among them (on one server it is applied at once)
                self._take_out_quitters()
                return not conn.departed
        return True

    def _pause(self, conn: Connection, until: float) -> None:
        """Over its flood budget: stop reading *conn* until *until* (TCP flow control does the rest).

        A client held back is not idle: its held lines count as activity when they are released.
        """
        if conn not in self._held:
            self._held.add(conn)
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            if self._hangups is not None:
                fd = conn.sock.fileno()
                self._hangups.register(fd, select.EPOLLRDHUP)
                self._paused_by_fd[fd] = conn
        self._paused.schedule(conn, until)
        self._tell_held_back(conn)

    def _tell_held_back(self, conn: Connection, force: bool = False) -> None:
        """Tell a held-back client so, when due: a client that has closed answers with a reset."""
        assert conn.gate is not None
        if conn.phase is not Phase.MEMBER:  # a handshake under way has no chat to speak in yet
            return
        if conn.gate.notice_due(time.monotonic()) or force:
            with self.service.lock:
                conn.send(conn.gate.notice())

    def _unpause(self, conn: Connection) -> bool:
        """Take *conn* off the paused list (reading it again is the caller's); False if it was not paused."""
        if conn not in self._held:
            return False
        self._held.discard(conn)
        self._paused.cancel(conn)
        if self._hangups is not None:
            fd = conn.sock.fileno()
            self._paused_by_fd.pop(fd, None)
            try:
                self._hangups.unregister(fd)
            except OSError:
                pass
        return True

    def _paused_hung_up(self) -> None:
        """Paused clients that reset, or ended their side.

        A reset (or a hang-up both ways) means the client is gone: it leaves now, its held lines
        with it. A FIN alone may be a client that only ended its sending side and still reads: it
        keeps its held lines, is read again in turn (its EOF then ends it, as for anyone), and is
        told at once that it is held back -- a client that has really closed answers that with a
        reset, which lands here again.
        """
        assert self._hangups is not None
        for fd, mask in self._hangups.poll(0):
            conn = self._paused_by_fd.get(fd)
            if conn is None:
                continue
            if not mask & (select.EPOLLERR | select.EPOLLHUP):
                self._hangups.modify(fd, 0)  # from now on only a reset or hang-up is news
                self._tell_held_back(conn, force=True)
                continue
            held = conn.gate.drop() if conn.gate is not None else 0
            if held:
                client_log.info("Dropped %d lines over the rate limit from %s: it left", held, conn.peer)
            self.leave(conn, conn.outbox.reason or ("connection reset" if mask & select.EPOLLERR else "disconnected"))

    def _resume_due(self) -> None:
        """Release held lines of paused clients whose budget refilled; read them again when all are out."""
        now = time.monotonic()
        for conn in self._paused.due(now):
            if conn not in self._held:
                continue
            if conn.outbox.closed:  # dropped meanwhile (too slow, idle, shutdown): it leaves now
                self.leave(conn, conn.outbox.reason or "disconnected")
                continue
            assert conn.gate is not None
            conn.last_active = now  # sending over its rate is not being idle
            if not self._hand_on(conn, conn.gate.release(now)):
                continue
            resume = conn.gate.resume_at(now)
            if resume is not None:
                self._paused.schedule(conn, resume)
                self._tell_held_back(conn)
            else:
                self._unpause(conn)
                conn.gate.noticed = None
                if conn not in self._core_held:
                    self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _ended(self, conn: Connection) -> None:
        """The client ended its side: its last unterminated line still counts, then it leaves."""
        reason: str | None = conn.outbox.reason or "disconnected"
        items = conn.eof_received()
        if items:
            self._hand_on(conn, items)  # a last /quit makes it leave as one that quit
        self.leave(conn, reason)

    def _decrypt(self, conn: Connection, data: bytes) -> bytes | None:
        """TLS records in, plaintext out (handshake replies sent); None when the client was dropped."""
        tls = conn.tls
        assert tls is not None
        failure = None
        with self.service.lock:
            try:
                plain = tls.receive(data)
            except TlsError as error:
                plain, failure = b"", str(error)
            conn.outbox.write_raw(tls.outgoing())
        if failure is None:
            return plain
        stage = "handshake" if not tls.handshake_done else "connection"
        # Rate-limited like refusals: a scan of the TLS port cannot fill a disk.
        self.server.refusal_log.log(logging.INFO, "TLS %s failed with %s: %s", stage, conn.peer, failure)
        if conn.phase is Phase.HANDSHAKING:
            if not tls.handshake_done and looks_like_plaintext(data):  # a hint it can read, not TLS noise
                with self.service.lock:
                    conn.outbox.write_raw(conn.plaintext_hint())
            self.finish(conn)
        else:
            self.leave(conn, "TLS error")
        return None

    def _log_broken_handshake(self, conn: Connection, reason: str) -> None:
        """A client that resets or closes in the middle of its TLS handshake is logged, as a failed handshake."""
        if conn.phase is Phase.HANDSHAKING and conn.tls is not None and not conn.tls.handshake_done:
            self.server.refusal_log.log(logging.INFO, "TLS handshake failed with %s: %s", conn.peer, reason)

    def abandon(self, conn: Connection) -> None:
        """Close *conn* after an unexpected error, taking it out of the hub too."""
        if conn.phase is Phase.MEMBER:
            try:
                self.service.depart(conn.member, "server error")
            except Exception:  # the hub itself is failing: closing the socket is all that is left
                pass
        self.finish(conn)

    def leave(self, conn: Connection, reason: str | None) -> None:
        """The client is gone or going: tell its room, say goodbye, then flush and close."""
        if conn.departed:
            return
        held_by_core = conn in self._core_held
        self._core_held.discard(conn)
        if self._unpause(conn) or held_by_core:  # read again: the departure reads until the client closes
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (KeyError, ValueError):  # registered already
                pass
        if conn.phase is Phase.MEMBER:
            self.service.depart(conn.member, reason)
        with self.service.lock:
            conn.farewell(reason)
        if conn.outbox.reason is not None or reason == "connection reset" or self.service.shutting_down:
            self.finish(conn)
            return
        conn.left(time.monotonic() + FLUSH_TIMEOUT)
        self._closing[conn] = None
        self._advance(conn)

    def _advance_all(self) -> None:
        """_advance() each connection that is leaving."""
        for conn in list(self._closing):
            self._advance(conn)

    def _advance(self, conn: Connection) -> None:
        """End our side once the outbox is flushed; close at the deadline."""
        if time.monotonic() > conn.leave_by:
            self.finish(conn)
            return
        if conn.outbox.size or conn.phase is Phase.DRAINING:
            return
        if conn.phase is Phase.PEER_GONE:
            self.finish(conn)
            return
        conn.our_side_ended()
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.finish(conn)

    def _stop_reading(self, conn: Connection) -> None:
        """EOF while still flushing: wait for the flush without polling the socket."""
        conn.peer_ended()
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def finish(self, conn: Connection) -> None:
        """Close *conn* for good and unregister it everywhere (idempotent; later leave() calls do nothing)."""
        if not conn.closed():
            return
        self._closing.pop(conn, None)
        self._unpause(conn)
        self._core_held.discard(conn)
        with self._open_lock:
            self._open.discard(conn)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        with self.service.lock:
            conn.outbox.close()
        conn.member = None  # it and its member refer to each other: apart, reference counting frees them
        self.server.connection_closed(conn)
        try:
            conn.sock.close()
        except OSError:
            pass
