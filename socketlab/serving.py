"""A threaded TCP server whose shutdown is a contract, built on socketserver.

:class:`ConnectionServer` keeps socketserver's shape -- a request handler
class, ``serve_forever()``, ``shutdown()``, ``server_close()``, a ``with``
block -- and fixes what makes the stock ``ThreadingTCPServer`` unfit for a
server people leave running:

- ``serve_forever()`` waits on the listening socket *and* a wake-up pipe, so
  ``shutdown()`` returns at once instead of after a poll interval, and an
  accept failure such as "too many open files" backs off instead of spinning;
- every connection and its thread are registered under a lock before the
  thread starts; ``shutdown()`` closes them all with ``socket.shutdown()``
  (the only way to wake a blocked ``recv()``) and joins the threads, so idle
  clients cannot hold the process open (the stock ``block_on_close`` waits
  for them forever);
- at most ``max_clients`` connections are served; the next one is sent
  ``full_message`` and closed;
- every connection waiting in the kernel's queue is accepted in one wake-up
  (up to ``accept_burst``) and handed to ``start_connections()`` together,
  so a server can welcome a crowd in one step;
- handler errors are logged in one line instead of printing a traceback.

For the caller: ``server_address`` (the real address, port 0 resolved),
``serve_forever()``, ``shutdown()`` (idempotent, from any other thread),
``server_close()``, ``connection_count``.

May be overridden: ``on_listening()``, ``on_close()``, ``on_refused(request, address)``,
``start_connection(request, address)``, ``start_connections(accepted)``,
``close_connections()``.

More listening sockets (a second protocol on another port) are served by
the same accept loop: ``add_listener(sock, start)``.

Class variables that may be overridden: ``max_clients``, ``full_message``,
``request_queue_size``, ``accept_burst``, ``thread_stack_size``, ``join_timeout``,
``blocking_connections``.
"""

from __future__ import annotations

import errno
import logging
import selectors
import signal
import socket
import socketserver
import threading
import time
from typing import Any, Callable

from socketlab.access import AccessRules, PerAddressLimit, RateLimitedLog
from socketlab.addresses import bind_error, format_address, resolve

_RETRYABLE_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

#: What to do with the connections one listener accepted in one wake-up.
StartConnections = Callable[[list[tuple[socket.socket, Any]]], None]


class Waker:
    """Wakes a thread blocked in ``selector.select()`` from any other thread.

    ``register(selector)`` adds its read end (with ``data=None``); ``wake()``
    makes it readable; the woken thread calls ``drain()``.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def register(self, selector: selectors.BaseSelector) -> None:
        selector.register(self._read, selectors.EVENT_READ, None)

    def wake(self) -> None:
        try:
            self._write.send(b"x")
        except OSError:  # already pending (buffer full) or closed: either way nothing to add
            pass

    def drain(self) -> None:
        try:
            self._read.recv(4096)
        except OSError:
            pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


def serve_both_families(sock: socket.socket) -> None:
    """Let an IPv6 socket bound to "::" serve IPv4 too, as users of nc and Node expect (no-op for IPv4)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def open_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on *host*:*port* ("::" also serves IPv4).

    Raises AddressError naming the address when it cannot be bound.
    """
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        serve_both_families(sock)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise bind_error(host, port, error) from None
    return sock


class ConnectionServer(socketserver.TCPServer):
    """Threaded TCP server with tracked connections and a prompt shutdown."""

    allow_reuse_address = True
    #: Connections served at once; the next one is refused.
    max_clients: int = 1000
    #: Bytes sent to a client refused because the server is full.
    full_message: bytes = b"server is full\n"
    #: listen() backlog: connections the kernel queues before accept().
    request_queue_size = 1024
    #: Most connections accepted in one wake-up and handed to start_connections() together.
    accept_burst: int = 64
    #: Stack size of connection threads; small stacks keep idle clients cheap.
    thread_stack_size: int = 256 * 1024
    #: How long shutdown() waits for connection threads to finish.
    join_timeout: float = 2.0
    #: Accepted sockets are made blocking (for a thread per connection) or non-blocking.
    blocking_connections: bool = True
    #: The server's TLS context, if it speaks TLS (set by subclasses that do).
    tls_context: Any = None

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: Callable[..., socketserver.BaseRequestHandler],
        *,
        max_clients: int | None = None,
        access: AccessRules | None = None,
        max_per_ip: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        host, port = address
        self.logger = logger or logging.getLogger("socketlab.server")
        #: Who may connect (None: everyone); checked right after accept, before anything is read or sent.
        self.access = access if access is not None and access.restricts else None
        #: Concurrent connections per peer address (None: no limit).
        self.per_ip = PerAddressLimit(max_per_ip) if max_per_ip else None
        self._peer_hosts: dict[socket.socket, str] = {}
        #: Refusals are logged, but never more than a few a second: a flood cannot fill a disk.
        self.refusal_log = RateLimitedLog(self.logger, what="refused connections")
        if max_clients is not None:
            self.max_clients = max_clients
        self.address_family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=True)
        allow_open_files(self.max_clients + 64)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread | None] = {}
        self._threads: list[threading.Thread] = []  # every connection thread not yet reaped
        self._stopping = False
        self._closed = False
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._waker = Waker()
        self._listeners: dict[socket.socket, tuple[StartConnections, bool]] = {}
        try:
            super().__init__(sockaddr, handler_class, bind_and_activate=True)
        except OSError as error:
            self._waker.close()
            raise bind_error(host, port, error) from None
        self._listeners[self.socket] = (self.start_connections, True)

    def server_bind(self) -> None:
        serve_both_families(self.socket)
        super().server_bind()

    # -- for the caller ---------------------------------------------------

    @property
    def address_text(self) -> str:
        """The real listening address as ``HOST:PORT``."""
        return format_address(self.server_address)

    @property
    def connection_count(self) -> int:
        """How many connections are being served now."""
        with self._lock:
            return len(self._connections)

    def add_listener(self, sock: socket.socket, start: StartConnections, *, admit: bool = False) -> None:
        """Also accept connections on the listening *sock* and hand them to *start*.

        With *admit*, they count toward max_clients like the main listener's;
        otherwise *start* decides (e.g. after a handshake, with
        register_connection()). Call before serve_forever(); server_close()
        closes *sock*.
        """
        self._listeners[sock] = (start, admit)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections until shutdown(); each runs on its own thread."""
        self._stopped.clear()
        try:
            if self._stopping:
                return
            self._serving.set()
            self.on_listening()
            with selectors.DefaultSelector() as selector:
                for listener, handling in self._listeners.items():
                    listener.setblocking(False)  # accept until the queue is empty, never wait in accept()
                    selector.register(listener, selectors.EVENT_READ, handling)
                self._waker.register(selector)
                while not self._stopping:
                    for key, _mask in selector.select():
                        if key.data is not None and not self._stopping:
                            self._accept_waiting(key.fileobj, *key.data)  # type: ignore[arg-type]
        finally:
            self._serving.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop accepting, close every connection and join their threads.

        Idempotent; call it from any thread but the one in serve_forever().
        """
        self._stopping = True
        self._waker.wake()
        self._stopped.wait()
        self.close_connections()
        self._join_connections(time.monotonic() + self.join_timeout)
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self.refusal_log.flush()
            self.on_close()

    def server_close(self) -> None:
        """Close the listening socket (and any connection still open)."""
        super().server_close()
        for listener in self._listeners:
            listener.close()
        self._waker.close()
        if self.connection_count:
            self.close_connections()

    def __exit__(self, *args: Any) -> None:
        if not self._stopping:
            self.shutdown()
        self.server_close()

    # -- may be overridden ------------------------------------------------

    def on_listening(self) -> None:
        """Called once serve_forever() is accepting connections."""
        self.logger.info("Server is listening on %s%s", self.address_text, " (TLS)" if self.tls_context else "")

    def on_close(self) -> None:
        """Called once, when shutdown() has closed every connection."""
        self.logger.info("Server closed")

    def on_refused(self, request: socket.socket, client_address: Any) -> None:
        """Called for a connection beyond max_clients, before it is closed."""
        self.refusal_log.log(
            logging.WARNING, "Refused %s: server is full (%d clients)", format_address(client_address), self.max_clients
        )
        try:
            request.send(self.full_message, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close_connections(self) -> None:
        """Wake and end every connection: shutdown(SHUT_RDWR) on each socket."""
        with self._lock:
            sockets = list(self._connections)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- internals --------------------------------------------------------

    def _accept_waiting(self, listener: socket.socket, start: StartConnections, admit: bool) -> None:
        """Accept the connections waiting on *listener* (at most accept_burst) and start them together."""
        accepted: list[tuple[socket.socket, Any]] = []
        try:
            while len(accepted) < self.accept_burst:
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
                if (self.access is not None or self.per_ip is not None) and not self._screen(request, client_address):
                    continue
                # Whatever the platform's accept() inherits, as the connections are served.
                request.setblocking(self.blocking_connections)
                if not admit or self._admit(request, client_address):
                    accepted.append((request, client_address))
        finally:  # even when accept() fails for good, the ones accepted are served
            if accepted:
                start(accepted)

    def _screen(self, request: socket.socket, client_address: Any) -> bool:
        """Apply --allow/--deny and --max-per-ip to a connection just accepted; close it if refused."""
        host = client_address[0]
        if self.access is not None and not self.access.permits(host):
            self.refusal_log.log(logging.INFO, "Refused %s: not allowed", format_address(client_address))
            self._close_request(request)
            return False
        if self.per_ip is not None:
            if not self.per_ip.acquire(host):
                self.refusal_log.log(
                    logging.INFO,
                    "Refused %s: %d connections from that address already",
                    format_address(client_address),
                    self.per_ip.limit,
                )
                self.on_too_many_from(request)
                self._close_request(request)
                return False
            with self._lock:
                self._peer_hosts[request] = host
        return True

    def on_too_many_from(self, request: socket.socket) -> None:
        """Called for a connection over max_per_ip, before it is closed (by default: nothing is sent)."""

    def register_connection(self, request: socket.socket) -> bool:
        """Count *request* toward max_clients; False (and nothing registered) when full."""
        with self._lock:
            if len(self._connections) >= self.max_clients:
                return False
            self._connections[request] = None
            return True

    def _admit(self, request: socket.socket, client_address: Any) -> bool:
        """Register *request*, or refuse and close it when the server is full."""
        if self.register_connection(request):
            return True
        self.on_refused(request, client_address)
        self.forget_connection(request)  # its per-address count
        self._close_request(request)
        return False

    def start_connections(self, accepted: list[tuple[socket.socket, Any]]) -> None:
        """Serve connections accepted in one wake-up: by default start_connection() for each."""
        for request, client_address in accepted:
            try:
                self.start_connection(request, client_address)
            except Exception as error:  # e.g. "can't start new thread": refuse this one, keep serving
                self.logger.error("Cannot serve %s: %s", format_address(client_address), error)
                self.forget_connection(request)
                self._close_request(request)

    def start_connection(self, request: socket.socket, client_address: Any) -> None:
        """Serve an accepted, registered connection: by default on a thread of its own.

        A subclass that serves connections another way must call
        forget_connection() and close the socket when a connection ends.
        """
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"conn-{format_address(client_address)}",
            daemon=True,
        )
        with self._lock:
            self._connections[request] = thread
            if len(self._threads) > 2 * len(self._connections) + 64:
                self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        previous = threading.stack_size(self.thread_stack_size)
        try:
            thread.start()
        finally:
            threading.stack_size(previous)

    def replace_connection(self, old: socket.socket, new: socket.socket) -> None:
        """*new* now stands for the registered *old* (e.g. TLS wrapped around it): shutdown() shuts *new*."""
        with self._lock:
            if old in self._connections:
                self._connections[new] = self._connections.pop(old)
            if old in self._peer_hosts:
                self._peer_hosts[new] = self._peer_hosts.pop(old)

    def forget_connection(self, request: socket.socket) -> None:
        """Unregister a connection that has ended (it no longer counts toward max_clients or max_per_ip)."""
        with self._lock:
            self._connections.pop(request, None)
            host = self._peer_hosts.pop(request, None)
        if host is not None and self.per_ip is not None:
            self.per_ip.release(host)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as error:  # one client must never take the server down
            self.logger.error("Error serving %s: %s: %s", format_address(client_address), type(error).__name__, error)
            self.logger.debug("Traceback", exc_info=True)
        finally:
            self.forget_connection(request)
            self._close_request(request)

    @staticmethod
    def _close_request(request: socket.socket) -> None:
        try:
            request.close()
        except OSError:
            pass

    def _join_connections(self, deadline: float) -> None:
        """Join every connection thread, including ones that just unregistered."""
        with self._lock:
            threads, self._threads = self._threads, []
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


def allow_open_files(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE toward *wanted* (None: as far as it goes; never above the hard limit).

    Many systems start processes with a soft limit of 1024 descriptors, too
    few for a server meant to hold a thousand clients. Returns the soft limit.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted or 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


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
