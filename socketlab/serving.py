"""Accepting connections, and a threaded TCP server whose shutdown is a contract.

:class:`Acceptor` is the part every socketlab TCP server is assembled from:
its listening sockets and the one loop that accepts on them.

- ``serve_forever()`` waits on the listeners *and* a wake-up pipe, so
  ``stop()`` returns at once instead of after a poll interval, and an accept
  failure such as "too many open files" backs off instead of spinning;
- every connection waiting in the kernel's queue is accepted in one wake-up
  (up to ``accept_burst``) and handed to the listener's *start* together, so
  a server can welcome a crowd in one step;
- each is screened right after accept (``--allow``/``--deny``,
  ``--max-per-ip``) and counted toward ``max_clients``; the next one is sent
  ``full_message`` and closed; refusals are logged a few a second at most.
  A UNIX socket's peers have no address to screen (the socket file's
  permissions decide who connects): they are counted, not screened, and
  named ``unix#N`` (or the path a client bound) in logs.

:class:`ConnectionServer` is socketserver's shape -- a request handler
class, ``serve_forever()``, ``shutdown()``, ``server_close()``, a ``with``
block, ``verify_request()``, ``process_request()``, ``handle_error()`` --
around an Acceptor, fixing what makes the stock ``ThreadingTCPServer`` unfit
for a server people leave running: every connection and its thread are
registered before the thread starts; ``shutdown()`` closes them all with
``socket.shutdown()`` (the only way to wake a blocked ``recv()``) and joins
the threads within ``join_timeout`` (the stock ``block_on_close`` waits for
idle clients forever); handler errors are one log line, not a traceback.
The chat server (:mod:`socketlab.chat.server`) uses an Acceptor directly,
with its own reader thread instead of a thread per connection.

For the caller: ``server_address`` (the real address, port 0 resolved),
``serve_forever()``, ``shutdown()`` (idempotent, from any other thread),
``server_close()``, ``connection_count``.

May be overridden: ``on_listening()``, ``on_close()``, ``close_connections()``,
socketserver's ``verify_request()`` and ``handle_error()``.

Class variables that may be overridden: ``max_clients``, ``full_message``,
``request_queue_size``, ``thread_stack_size``, ``join_timeout``.
"""

from __future__ import annotations

import errno
import logging
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from socketlab.access import AccessRules, PerAddressLimit, RateLimitedLog
from socketlab.addresses import bind_error, format_address, resolve
from socketlab.errors import SocketlabError
from socketlab.text import plural
from socketlab.unix import UnixAddress, open_unix_listener

_RETRYABLE_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: Seconds between checks of a listener that waits for room, should nobody call resume().
ROOM_CHECK = 0.1
#: Seconds a refused connection is kept, its input read and dropped, so that its refusal line arrives.
LINGER_TIMEOUT = 2.0
#: Refused connections kept at once; beyond that (a flood) they are closed at once.
MAX_LINGERING = 256

#: What to do with the connections one listener accepted in one wake-up.
StartConnections = Callable[[list[tuple[socket.socket, Any]]], None]


class Waker:
    """Wakes a thread blocked in ``selector.select()`` from any other thread.

    ``register(selector)`` adds its read end (with ``data=None``); ``wake()``
    makes it readable; the woken thread calls ``drain()``, then looks at what
    it was woken for. Until it drains, more wake-ups cost nothing: a crowd of
    hand-overs (an accept storm) is one system call, not one each.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        #: A wake-up was sent and not yet drained.
        self._pending = False

    def register(self, selector: selectors.BaseSelector) -> None:
        selector.register(self._read, selectors.EVENT_READ, None)

    def wake(self) -> None:
        if self._pending:  # the woken thread has not drained yet, and looks at everything after it does
            return
        self._pending = True
        try:
            self._write.send(b"x")
        except OSError:  # already pending (buffer full) or closed: either way nothing to add
            pass

    def drain(self) -> None:
        try:
            self._read.recv(4096)
        except OSError:
            pass
        # Cleared after the read, never before: a wake() that sent while the flag was clear would
        # have its byte read here and leave the flag set with nothing to read, muting every later
        # wake(). One that came before the clear was absorbed, and the caller, which looks at what
        # it was woken for after draining, sees it; one after it sends again.
        self._pending = False

    def drain_if_among(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Drain if the waker is among *events* (what select() returned): a loop that hands work over
        between threads calls this first, then looks at its queues, so no wake-up is drained unseen."""
        for key, _mask in events:
            if key.data is None:
                self.drain()
                return

    def close(self) -> None:
        self._read.close()
        self._write.close()


def serve_both_families(sock: socket.socket) -> None:
    """Let an IPv6 socket bound to "::" serve IPv4 too, as users of nc and Node expect (no-op for IPv4)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


#: listen() backlog when a server says nothing: connections the kernel queues before accept().
DEFAULT_BACKLOG = 1024


def listen_backlog(max_clients: int) -> int:
    """The listen() backlog for a server of *max_clients*: room for all of them connecting at once.

    A restarted server meets every client reconnecting together; a connection that finds the
    queue full is dropped by the kernel and retried by the client a second or more later. So the
    queue holds *max_clients* (at least :data:`DEFAULT_BACKLOG`). The kernel caps it silently at
    ``net.core.somaxconn`` (4096 on Linux since 5.4; see :func:`somaxconn`), and the queue costs
    memory only while connections wait in it.
    """
    return max(DEFAULT_BACKLOG, max_clients)


def somaxconn() -> int | None:
    """The kernel's cap on a listen() backlog (``net.core.somaxconn``), or None where it cannot be read."""
    try:
        with open("/proc/sys/net/core/somaxconn") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None


def open_listener(host: str, port: int, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on *host*:*port* ("::" also serves IPv4), queueing *backlog* connections.

    With *reuse_port* (SO_REUSEPORT), other processes of the same user may listen on the same address,
    and the kernel spreads new connections over them. Raises AddressError naming the address when it
    cannot be bound.
    """
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        serve_both_families(sock)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise bind_error(host, port, error) from None
    return sock


def listen(address: tuple[str, int] | UnixAddress, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False) -> socket.socket:
    """A listening socket on a TCP ``(host, port)`` (see open_listener()) or a :class:`~socketlab.unix.UnixAddress`.

    Raises AddressError naming the address or path when it cannot listen there.
    """
    if isinstance(address, UnixAddress):
        return open_unix_listener(address, backlog)
    return open_listener(*address, backlog=backlog, reuse_port=reuse_port)


class Acceptor:
    """Listening sockets and the one loop that accepts on them; screening; the count of connections.

    A server is assembled around one: it adds its listeners (``add_listener``), runs
    ``serve_forever()`` on a thread, and registers and forgets the connections it serves.
    Connections waiting in the kernel's queue are accepted in one wake-up (up to
    ``accept_burst``) and handed to the listener's *start* together; each is first screened
    (``access``, ``max_per_ip``) and, on a listener that admits, counted toward
    ``max_clients``: a connection beyond it is sent ``full_message`` and closed. Refusals are
    logged through ``refusal_log``, a few a second at most.

    For the owner: ``add_listener()``, ``serve_forever(on_listening)``, ``stop()`` (idempotent,
    from any other thread), ``close()``, ``register()``, ``forget()``, ``replace()``, ``count``,
    ``sockets()``, ``stopping``, ``refusal_log``.
    """

    #: Most connections accepted in one wake-up and handed to *start* together.
    accept_burst: int = 64

    def __init__(
        self,
        *,
        max_clients: int,
        logger: logging.Logger,
        access: AccessRules | None = None,
        max_per_ip: int | None = None,
        blocking: bool = True,
        full_message: bytes = b"server is full\n",
        too_many_message: bytes = b"",
    ) -> None:
        self.max_clients = max_clients
        self.logger = logger
        #: Who may connect (None: everyone); checked right after accept, before anything is read or sent.
        self.access = access if access is not None and access.restricts else None
        #: Concurrent connections per peer address (None: no limit).
        self.per_ip = PerAddressLimit(max_per_ip) if max_per_ip else None
        #: Accepted sockets are made blocking (for a thread per connection) or non-blocking.
        self.blocking = blocking
        self.full_message = full_message
        self.too_many_message = too_many_message
        #: Refusals are logged, but never more than a few a second: a flood cannot fill a disk.
        self.refusal_log = RateLimitedLog(logger, what="refused connections")
        allow_open_files(max_clients + SPARE_OPEN_FILES)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        #: Clients counted toward max_clients that hold no socket of their own (Socket.IO sessions).
        self._seats = 0
        self._peer_hosts: dict[socket.socket, str] = {}
        self._listeners: dict[socket.socket, tuple[StartConnections, bool, Callable[[], int] | None]] = {}
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._waker = Waker()
        #: Refused connections, our side ended, read until the client closes or the deadline (accept thread).
        self._lingering: dict[socket.socket, float] = {}
        self._selector: selectors.BaseSelector | None = None
        #: Listeners out of room, not watched until resume() (accept thread): listener -> its handling.
        self._waiting_listeners: dict[socket.socket, Any] = {}
        #: Numbers the unnamed peers of UNIX listeners (unix#1, unix#2, ...).
        self._unix_peers = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def count(self) -> int:
        """How many connections (and seats) are registered now."""
        with self._lock:
            return len(self._connections) + self._seats

    def sockets(self) -> list[socket.socket]:
        """The registered connections' sockets."""
        with self._lock:
            return list(self._connections)

    def add_listener(
        self, sock: socket.socket, start: StartConnections, *, admit: bool = False, room: Callable[[], int] | None = None
    ) -> None:
        """Accept connections on the listening *sock* and hand them to *start*.

        With *admit*, they count toward max_clients when accepted; otherwise *start* decides
        (e.g. after a handshake, with register()). With *room*, at most ``room()`` are accepted at
        a time: at 0 the listener is left alone (its clients wait in the kernel's listen queue, not
        refused) until resume() says there may be room again. Call before serve_forever();
        close() closes *sock*.
        """
        self._listeners[sock] = (start, admit, room)

    def resume(self) -> None:
        """There may be room again on a listener that waits for it (any thread).

        One wake-up until the accept thread has seen it: a storm of finished handshakes costs one
        system call, not one each.
        """
        if self._waiting_listeners:
            self._waker.wake()

    def serve_forever(self, on_listening: Callable[[], None] = lambda: None) -> None:
        """Accept connections until stop(); *on_listening* is called once the loop is about to wait."""
        self._stopped.clear()
        try:
            if self._stopping:
                return
            on_listening()
            with selectors.DefaultSelector() as selector:
                for listener, handling in self._listeners.items():
                    listener.setblocking(False)  # accept until the queue is empty, never wait in accept()
                    selector.register(listener, selectors.EVENT_READ, handling)
                self._waker.register(selector)
                self._selector = selector
                while not self._stopping:
                    timeout = min(self._lingering.values()) - time.monotonic() if self._lingering else None
                    if self._waiting_listeners:  # resume() wakes the loop; this is only a safety net
                        timeout = ROOM_CHECK if timeout is None else min(timeout, ROOM_CHECK)
                        self._watch_again(selector)
                    for key, _mask in selector.select(timeout):
                        if key.data is None:  # the waker: stop() or resume(), seen by _watch_again() next
                            self._waker.drain()
                        elif key.data is _LINGERING:
                            self._drain_refused(key.fileobj)  # type: ignore[arg-type]
                        elif not self._stopping:
                            self._accept_waiting(key.fileobj, *key.data)  # type: ignore[arg-type]
                    if self._lingering:
                        self._close_refused(time.monotonic())
        finally:
            self._selector = None
            self._close_refused(None)
            self._stopped.set()

    def stop(self) -> None:
        """Stop accepting; return once serve_forever() has returned (idempotent)."""
        self._stopping = True
        self._waker.wake()
        self._stopped.wait()

    def close_listeners(self) -> None:
        """Close the listening sockets: a client connecting from now on is refused, not left in the backlog."""
        for listener in self._listeners:
            listener.close()

    def close(self) -> None:
        """Close the listening sockets and the waker."""
        self.close_listeners()
        self._waker.close()

    def register(self, request: socket.socket) -> bool:
        """Count *request* toward max_clients; False (and nothing registered) when full."""
        with self._lock:
            if len(self._connections) + self._seats >= self.max_clients:
                return False
            self._connections.add(request)
            return True

    def take_seat(self) -> bool:
        """Count a client without a socket of its own toward max_clients; False when full."""
        with self._lock:
            if len(self._connections) + self._seats >= self.max_clients:
                return False
            self._seats += 1
            return True

    def free_seat(self) -> None:
        """A client counted by take_seat() has left."""
        with self._lock:
            self._seats = max(0, self._seats - 1)

    def replace(self, old: socket.socket, new: socket.socket) -> None:
        """*new* now stands for the registered *old* (e.g. TLS wrapped around it)."""
        with self._lock:
            if old in self._connections:
                self._connections.discard(old)
                self._connections.add(new)
            if old in self._peer_hosts:
                self._peer_hosts[new] = self._peer_hosts.pop(old)

    def forget(self, request: socket.socket) -> None:
        """Unregister a connection that has ended (it no longer counts toward max_clients or max_per_ip)."""
        with self._lock:
            self._connections.discard(request)
            host = self._peer_hosts.pop(request, None)
        if host is not None and self.per_ip is not None:
            self.per_ip.release(host)

    def refuse_full(self, request: socket.socket, client_address: Any) -> None:
        """Tell a connection beyond max_clients so (it is closed by the caller)."""
        self.refusal_log.log(
            logging.WARNING, "Refused %s: server is full (%s)", format_address(client_address), plural(self.max_clients, "client")
        )
        try:
            request.send(self.full_message, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close_refused(self, request: socket.socket) -> None:
        """Close a connection that was sent its refusal: end our side, then read until the client closes.

        Closing at once with the client's first bytes unread would send a reset, and a reset makes
        the client's kernel drop the refusal before the client reads it. A lingering close, as web
        servers do it: bounded in time (LINGER_TIMEOUT) and in number (MAX_LINGERING).
        """
        selector = self._selector
        if selector is None or len(self._lingering) >= MAX_LINGERING or self._stopping:
            close_quietly(request)
            return
        try:
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
            selector.register(request, selectors.EVENT_READ, _LINGERING)
        except (OSError, ValueError):
            close_quietly(request)
            return
        self._lingering[request] = time.monotonic() + LINGER_TIMEOUT

    def _drain_refused(self, request: socket.socket) -> None:
        try:
            data = request.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._forget_refused(request)

    def _close_refused(self, now: float | None) -> None:
        """Close the lingering connections past their deadline (all of them when *now* is None)."""
        for request, deadline in list(self._lingering.items()):
            if now is None or deadline <= now:
                self._forget_refused(request)

    def _forget_refused(self, request: socket.socket) -> None:
        self._lingering.pop(request, None)
        if self._selector is not None:
            try:
                self._selector.unregister(request)
            except (KeyError, ValueError):
                pass
        close_quietly(request)

    # -- internals --------------------------------------------------------

    def _watch_again(self, selector: selectors.BaseSelector) -> None:
        """Watch the listeners that waited for room again, where there is some (accept thread)."""
        for listener, handling in list(self._waiting_listeners.items()):
            if handling[2]() > 0:
                del self._waiting_listeners[listener]
                selector.register(listener, selectors.EVENT_READ, handling)

    def _accept_waiting(
        self, listener: socket.socket, start: StartConnections, admit: bool, room: Callable[[], int] | None
    ) -> None:
        """Accept the connections waiting on *listener* (at most accept_burst, and its room) and start them together."""
        limit = self.accept_burst if room is None else min(self.accept_burst, room())
        if limit <= 0 and room is not None and self._selector is not None:  # full: leave them in the listen queue
            self._selector.unregister(listener)
            self._waiting_listeners[listener] = (start, admit, room)
            return
        accepted: list[tuple[socket.socket, Any]] = []
        try:
            while len(accepted) < limit:
                try:
                    request, client_address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:
                    continue
                except OSError as error:
                    if error.errno not in _RETRYABLE_ACCEPT_ERRORS:
                        raise
                    self.logger.error("Cannot accept a connection: %s; retrying", error.strerror)
                    time.sleep(0.05)  # back off: the listener stays readable meanwhile
                    break
                if listener.family == socket.AF_UNIX:  # no address to screen: the file's permissions decided
                    client_address = self._unix_peer(client_address)
                elif (self.access is not None or self.per_ip is not None) and not self._screen(request, client_address):
                    continue
                # Whatever the platform's accept() inherits, as the connections are served.
                request.setblocking(self.blocking)
                if not admit or self._admit(request, client_address):
                    accepted.append((request, client_address))
        finally:  # even when accept() fails for good, the ones accepted are served
            if accepted:
                start(accepted)

    def _unix_peer(self, client_address: Any) -> str:
        """A UNIX peer's name in logs: the path it bound, else ``unix#N`` (N counts this server's UNIX peers)."""
        self._unix_peers += 1
        if isinstance(client_address, str) and client_address:
            return client_address
        return f"unix#{self._unix_peers}"

    def _screen(self, request: socket.socket, client_address: Any) -> bool:
        """Apply --allow/--deny and --max-per-ip to a connection just accepted; close it if refused."""
        host = client_address[0]
        if self.access is not None and not self.access.permits(host):
            self.refusal_log.log(logging.INFO, "Refused %s: not allowed", format_address(client_address))
            close_quietly(request)
            return False
        if self.per_ip is not None:
            if not self.per_ip.acquire(host):
                self.refusal_log.log(
                    logging.INFO,
                    "Refused %s: %s from that address already",
                    format_address(client_address),
                    plural(self.per_ip.limit or 0, "connection"),
                )
                if self.too_many_message:
                    try:
                        request.send(self.too_many_message, socket.MSG_DONTWAIT)
                    except OSError:
                        pass
                    self.close_refused(request)
                else:
                    close_quietly(request)
                return False
            with self._lock:
                self._peer_hosts[request] = host
        return True

    def _admit(self, request: socket.socket, client_address: Any) -> bool:
        """Register *request*, or refuse and close it when the server is full."""
        if self.register(request):
            return True
        self.refuse_full(request, client_address)
        self.forget(request)  # its per-address count
        self.close_refused(request)
        return False


class AcceptingServer:
    """What a server built around an Acceptor shows its caller (a mixin: ``acceptor``, ``server_address``,
    ``on_listening()``, ``shutdown()`` and ``server_close()`` come from the class it is mixed into)."""

    acceptor: Acceptor
    server_address: Any

    @property
    def address_text(self) -> str:
        """The real listening address as ``HOST:PORT``."""
        return format_address(self.server_address)

    @property
    def connection_count(self) -> int:
        """How many connections are counted toward max_clients now."""
        return self.acceptor.count

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until shutdown() (*poll_interval* is unused: shutdown() wakes the loop at once)."""
        self.acceptor.serve_forever(self.on_listening)

    if TYPE_CHECKING:  # provided by the class this is mixed into

        def on_listening(self) -> None: ...
        def shutdown(self) -> None: ...
        def server_close(self) -> None: ...

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *args: Any) -> None:
        if not self.acceptor.stopping:
            self.shutdown()
        self.server_close()


#: The selector key data of a refused connection that lingers (see Acceptor.close_refused).
_LINGERING = object()


def close_quietly(sock: socket.socket) -> None:
    """Close *sock*, ignoring errors."""
    try:
        sock.close()
    except OSError:
        pass


class ConnectionServer(AcceptingServer, socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Threaded TCP server with tracked connections and a prompt shutdown, around an :class:`Acceptor`.

    socketserver's documented hooks do their usual jobs: ``verify_request()``
    (the acceptor has screened already), ``process_request()`` (a thread per
    connection, registered before it starts), ``finish_request()`` (the
    handler), ``handle_error()`` (one log line, not a traceback),
    ``shutdown_request()``.

    *address* is ``(host, port)``, or a :class:`~socketlab.unix.UnixAddress`
    to listen on a UNIX socket file instead. With *once*, one connection is
    served (others are refused as full meanwhile) and serve_forever() returns
    when it ends. A connection's thread may end serving with
    ``stop_serving(error)``; serve_forever() then raises *error*.
    """

    allow_reuse_address = True
    #: Connections served at once; the next one is refused.
    max_clients: int = 1000
    #: Bytes sent to a client refused because the server is full.
    full_message: bytes = b"server is full\n"
    #: Bytes sent to a client refused by max_per_ip (b"": none).
    too_many_message: bytes = b""
    #: listen() backlog: connections the kernel queues before accept(); a server of more clients
    #: queues max_clients (listen_backlog()), capped by the kernel at net.core.somaxconn.
    request_queue_size = DEFAULT_BACKLOG
    #: Stack size of connection threads; small stacks keep idle clients cheap.
    thread_stack_size: int = 256 * 1024
    #: How long shutdown() waits for connection threads to finish: within a second of Ctrl-C in all. One
    #: that does not finish by then (blocked writing to an output nobody reads) is a daemon, left behind.
    join_timeout: float = 0.75
    #: The server's TLS context, if it speaks TLS (set by subclasses that do).
    tls_context: Any = None
    daemon_threads = True
    block_on_close = False  # shutdown() joins the threads itself, within join_timeout

    def __init__(
        self,
        address: tuple[str, int] | UnixAddress,
        handler_class: Callable[..., socketserver.BaseRequestHandler],
        *,
        max_clients: int | None = None,
        access: AccessRules | None = None,
        max_per_ip: int | None = None,
        once: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger("socketlab.server")
        #: Serve one connection, then return from serve_forever() (max_clients is 1 meanwhile).
        self.once = once
        if once:
            self.max_clients = 1
        elif max_clients is not None:
            self.max_clients = max_clients
        self.acceptor = Acceptor(
            max_clients=self.max_clients,
            logger=self.logger,
            access=access,
            max_per_ip=max_per_ip,
            full_message=self.full_message,
            too_many_message=self.too_many_message,
        )
        self.refusal_log = self.acceptor.refusal_log
        self.request_queue_size = max(self.request_queue_size, listen_backlog(self.max_clients))
        self._lock = threading.Lock()
        self._connection_threads: list[threading.Thread] = []  # every connection thread not yet reaped
        self._closed = False
        self._failure: BaseException | None = None
        if isinstance(address, UnixAddress):
            self._listen_unix(address, handler_class)
        else:
            host, port = address
            self.address_family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=True)
            try:
                super().__init__(sockaddr, handler_class, bind_and_activate=True)
            except OSError as error:
                self.acceptor.close()
                raise bind_error(host, port, error) from None
        self.acceptor.add_listener(self.socket, self.start_connections, admit=True)

    def _listen_unix(self, address: UnixAddress, handler_class: Callable[..., socketserver.BaseRequestHandler]) -> None:
        """Listen on a UNIX socket file (socketlab.unix: its mode, a stale file replaced, removed at close)."""
        self.address_family = socket.AF_UNIX
        super().__init__(address.path, handler_class, bind_and_activate=False)  # type: ignore[arg-type]
        self.socket.close()  # socketserver's own, unbound: ours replaces it
        try:
            self.socket = open_unix_listener(address, self.request_queue_size)
        except Exception:
            self.acceptor.close()
            raise
        self.server_address = self.socket.getsockname()

    def server_bind(self) -> None:
        serve_both_families(self.socket)
        super().server_bind()

    # -- for the caller ---------------------------------------------------

    @property
    def _stopping(self) -> bool:
        return self.acceptor.stopping

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until shutdown() or stop_serving(); raises the error given to stop_serving(), if any."""
        super().serve_forever(poll_interval)
        if self._failure is not None:
            raise self._failure

    def stop_serving(self, error: BaseException | None = None) -> None:
        """End serve_forever() from a connection's thread (never from serve_forever()'s own).

        For the end of *once*'s connection, or when something every connection
        needs has failed: serve_forever() then raises *error*. The connections
        still open are left to the caller's shutdown().
        """
        if error is not None and self._failure is None:
            self._failure = error
        self.acceptor.stop()

    def shutdown(self) -> None:
        """Stop accepting, close every connection and join their threads.

        Idempotent; call it from any thread but the one in serve_forever().
        """
        self.acceptor.stop()
        self.close_connections()
        self._join_threads(time.monotonic() + self.join_timeout)
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self.refusal_log.flush()
            self.on_close()

    def server_close(self) -> None:
        """Close the listening socket (and any connection still open)."""
        super().server_close()
        self.acceptor.close()
        if self.connection_count:
            self.close_connections()

    def replace_connection(self, old: socket.socket, new: socket.socket) -> None:
        """*new* now stands for the registered *old* (e.g. TLS wrapped around it): shutdown() shuts *new*."""
        self.acceptor.replace(old, new)

    def forget_connection(self, request: socket.socket) -> None:
        """Unregister a connection that has ended."""
        self.acceptor.forget(request)

    def end_connection(self, request: socket.socket) -> None:
        """A connection is over: with *once*, stop serving; then free its place (idempotent).

        A handler may call it before closing, so that its place is free before
        the client sees the end (a client that connects right after is let in).
        """
        if self.once:
            self.stop_serving()  # before its place is free: nobody else gets in meanwhile
        self.forget_connection(request)

    # -- may be overridden ------------------------------------------------

    def on_listening(self) -> None:
        """Called once serve_forever() is accepting connections."""
        self.logger.info("Server is listening on %s%s", self.address_text, " (TLS)" if self.tls_context else "")

    def on_close(self) -> None:
        """Called once, when shutdown() has closed every connection."""
        self.logger.info("Server closed")

    def close_connections(self) -> None:
        """Wake and end every connection: shutdown(SHUT_RDWR) on each socket."""
        for sock in self.acceptor.sockets():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- socketserver's hooks ---------------------------------------------

    def start_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """The acceptor's hand-over: each connection through verify_request() and process_request()."""
        for request, client_address in accepted:
            if not self.verify_request(request, client_address):
                self.forget_connection(request)
                self.shutdown_request(request)
                continue
            try:
                self.process_request(request, client_address)
            except Exception as error:  # e.g. "can't start new thread": refuse this one, keep serving
                self.logger.error("Cannot serve %s: %s", format_address(client_address), error)
                self.forget_connection(request)
                self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the (registered) connection on a thread of its own, with a small stack."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"conn-{format_address(client_address)}",
            daemon=True,
        )
        with self._lock:
            if len(self._connection_threads) > 2 * self.connection_count + 64:
                self._connection_threads = [t for t in self._connection_threads if t.is_alive()]
            self._connection_threads.append(thread)
        previous = threading.stack_size(self.thread_stack_size)
        try:
            thread.start()
        finally:
            threading.stack_size(previous)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # one client must never take the server down
            self.handle_error(request, client_address)
        finally:
            self.end_connection(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line for a handler's exception (the traceback at DEBUG), never a printed traceback."""
        error = sys.exc_info()[1]
        self.logger.error("Error serving %s: %s: %s", format_address(client_address), type(error).__name__, error)
        self.logger.debug("Traceback", exc_info=True)

    def shutdown_request(self, request: Any) -> None:
        close_quietly(request)

    def _join_threads(self, deadline: float) -> None:
        """Join every connection thread, including ones that just unregistered."""
        with self._lock:
            threads, self._connection_threads = self._connection_threads, []
        current = threading.current_thread()
        for thread in threads:
            if thread is current or not thread.ident:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                alive = sum(t.is_alive() for t in threads)
                self.logger.warning("%d connection threads did not finish", alive)
                return
            thread.join(remaining)


#: Descriptors a server needs besides one per client: its listeners, wakers and selectors, the log,
#: Redis, the metrics port. (Refused connections lingering until their refusal is read, at most
#: MAX_LINGERING, get room too where the hard limit allows; without it a refusal is a plain close.)
SPARE_OPEN_FILES = 64


class OpenFilesError(SocketlabError):
    """The process may not open as many files as its clients need: the hard RLIMIT_NOFILE is too low."""


def allow_open_files(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE toward *wanted* (None: as far as it goes; never above the hard limit).

    Many systems start processes with a soft limit of 1024 descriptors, too
    few for a server meant to hold a thousand clients. Returns the soft limit
    (``resource.RLIM_INFINITY`` when unlimited). The one place socketlab
    changes the limit; see allow_clients() for a server's check.
    """
    return _raise_soft_limit(wanted)[0]


def allow_clients(max_clients: int, extra: int = 0) -> int:
    """Make room for *max_clients* connections and *extra* more descriptors (say, handshakes in flight).

    Raises the soft open-file limit to what they need, plus :data:`SPARE_OPEN_FILES` (and
    MAX_LINGERING where there is room), never above the hard limit (only a privileged process may
    raise that), and returns it. Raises OpenFilesError saying what to do when that is not enough:
    one line at start-up rather than ``too many open files`` under load.
    """
    needed = max_clients + extra + SPARE_OPEN_FILES
    soft, hard, failure = _raise_soft_limit(needed + MAX_LINGERING)
    if soft == _UNLIMITED or soft >= needed:
        return soft
    room = soft if failure else hard  # the descriptors there are: the hard limit, or the soft one left as it was
    fewer = max_clients - (needed - room)
    lower = f"lower --max-clients to {fewer} or less, or " if fewer >= 1 else ""
    if failure is None:  # the hard limit is the wall
        raise OpenFilesError(
            f"--max-clients {max_clients} needs {needed} open files, but this process may open at most {hard} "
            f"(its hard limit): {lower}raise the hard limit (ulimit -Hn {needed} as root, "
            f"or LimitNOFILE={needed} in a systemd unit)"
        )
    raise OpenFilesError(
        f"--max-clients {max_clients} needs {needed} open files, but the limit could not be raised past {soft} "
        f"({failure}): {lower}raise fs.nr_open and the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit)"
    )


#: What getrlimit() says of a limit that is not set (resource.RLIM_INFINITY; -1 where there is no resource module).
_UNLIMITED: int = -1


def _raise_soft_limit(wanted: int | None) -> tuple[int, int, str | None]:
    """Raise the soft RLIMIT_NOFILE toward *wanted*: (soft, hard, why setrlimit failed or None)."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to raise
        return _UNLIMITED, _UNLIMITED, None
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = hard if hard != unlimited else 1 << 20
    failure = None
    if soft != unlimited and soft < wanted:
        target = wanted if hard == unlimited else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:  # e.g. above fs.nr_open with an unlimited hard limit
            failure = getattr(error, "strerror", None) or str(error)
    if soft == unlimited:
        soft = _UNLIMITED
    return soft, (_UNLIMITED if hard == unlimited else hard), failure


def run_until_signal(server: Any, on_stop: Callable[[], None] | None = None) -> None:
    """Serve on a background thread until SIGINT or SIGTERM, then shut down.

    *server* needs ``serve_forever()`` and ``shutdown()``. Runs in the main
    thread (signal handlers live there). Also returns when serve_forever()
    ends by itself; an exception it raised is re-raised here, after
    shutdown. *on_stop* is called after shutdown.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as error:  # handed to the main thread
            failure.append(error)
        finally:
            stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=serve, name="serve-forever", daemon=True)
    thread.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if on_stop is not None:
            on_stop()
    if failure:
        raise failure[0]
