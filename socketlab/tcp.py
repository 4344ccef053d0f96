"""The tutorial's TCP part: a welcome (and echo) server and a client.

Server events mirror Node's ``net`` module and are methods a subclass may
override, each called on the connection's own thread:

===================  ==========================================
Node                 :class:`WelcomeServer`
===================  ==========================================
``'listening'``      ``on_listening()``
``'connection'``     ``on_connection(peer)`` (returns the welcome)
``'data'``           ``on_data(peer, chunk)``
``'end'``            ``on_end(peer, received)``
``'close'``          ``on_close()``
===================  ==========================================

A chunk is whatever one ``recv()`` returned: TCP is a byte stream, so one
chunk is not one message. :func:`exchange` is the client side in one call;
:func:`connect` and :func:`relay_stdio` are what ``socketlab tcp-client``
is made of.
"""

from __future__ import annotations

import logging
import os
import stat
import socket
import socketserver
import ssl
import sys
import threading
from typing import Any, BinaryIO

from socketlab.access import AccessRules
from socketlab.addresses import bind_error, describe_os_error, format_address, resolve
from socketlab.errors import AddressError, OutputError
from socketlab.serving import ConnectionServer
from socketlab.tls import HANDSHAKE_TIMEOUT, TlsError, TlsStream, describe
from socketlab.text import TerminalText, display_bytes, hexdump

logger = logging.getLogger("socketlab.tcp")

DEFAULT_WELCOME = "Welcome to Socket Server"

#: Bounds of the default buffer (the largest single recv() or send(), ``--buffer``).
SMALLEST_DEFAULT_BUFFER = 64 * 1024
MAX_READ = 1024 * 1024
#: The default buffer where the cache size is unknown.
FALLBACK_BUFFER = 256 * 1024
_CACHES = "/sys/devices/system/cpu/cpu0/cache"


def default_buffer_size() -> int:
    """A quarter of the CPU's level-2 cache, between 64 KiB and 1 MiB (256 KiB when unknown).

    A bulk copy touches its buffer, then as much again in the kernel: with a
    quarter of L2 both stay in it. Measured on a 2 MiB L2 (docs/benchmarks.md):
    512 KiB and 1 MiB equal, 4 MiB slower; 1 MiB buffers were reported at
    0.64x socat's 256 KiB on a machine with 1 MiB of L2.
    """
    try:
        for index in sorted(os.listdir(_CACHES)):
            folder = os.path.join(_CACHES, index)
            with open(os.path.join(folder, "level")) as level, open(os.path.join(folder, "type")) as kind:
                if level.read().strip() != "2" or kind.read().strip() == "Instruction":
                    continue
            with open(os.path.join(folder, "size")) as size:
                text = size.read().strip().upper()
            cache = int(text.rstrip("KM")) << (20 if text.endswith("M") else 10 if text.endswith("K") else 0)
            return max(SMALLEST_DEFAULT_BUFFER, min(MAX_READ, cache // 4))
    except (OSError, ValueError):
        pass
    return FALLBACK_BUFFER


#: First read size: an idle connection costs no more than this buffer.
FIRST_READ = 16 * 1024

#: What on_data() logs of each chunk.
PAYLOAD_MODES = ("text", "hex", "quiet")


class WelcomeHandler(socketserver.BaseRequestHandler):
    """One client: welcome it, read until EOF, report each event to the server."""

    server: "WelcomeServer"

    def handle(self) -> None:
        sock: Any = self.request
        if self.server.tls_context is None:
            self.serve(sock)
            return
        # TLS on this connection's own thread, never the accepting one. One thread uses the
        # connection, so the standard library's SSLSocket serves (OpenSSL reads and writes the
        # socket itself); it is registered in place of the plain socket, so shutdown() still
        # wakes this thread.
        tls_sock = self.server.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.server.replace_connection(sock, tls_sock)
        try:
            tls_sock.settimeout(self.server.handshake_timeout)
            try:
                tls_sock.do_handshake()
            except (ssl.SSLError, OSError) as error:
                reason = describe(error) if isinstance(error, ssl.SSLError) else describe_os_error(error)
                self.server.refusal_log.log(  # rate-limited: a scan of the TLS port cannot fill a disk
                    logging.INFO, "TLS handshake failed with %s: %s", format_address(self.client_address), reason
                )
                return
            tls_sock.settimeout(None)
            self.serve(tls_sock)
        finally:
            self.server.forget_connection(tls_sock)
            tls_sock.close()

    def serve(self, sock: Any) -> None:
        peer = format_address(self.client_address)
        server = self.server
        received = 0
        welcome = server.on_connection(peer)
        wants_chunks = server.echo or server.payload != "quiet" or type(server).on_data is not WelcomeServer.on_data
        try:
            if welcome:
                sock.sendall(welcome)
            buffer = bytearray(min(FIRST_READ, server.buffer_size))
            view = memoryview(buffer)
            while True:
                count = sock.recv_into(view)
                if not count:
                    break
                received += count
                if wants_chunks:
                    chunk = bytes(view[:count])
                    server.on_data(peer, chunk)
                    if server.echo:
                        sock.sendall(chunk)
                if count == len(buffer) and len(buffer) < server.buffer_size:
                    buffer = bytearray(min(len(buffer) * 4, server.buffer_size))
                    view = memoryview(buffer)
        except OSError as error:
            server.on_error(peer, error, received)
            return
        server.on_end(peer, received)
        try:
            if isinstance(sock, ssl.SSLSocket):  # our close_notify too (the client's has come)
                sock = sock.unwrap()
            sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass


class WelcomeServer(ConnectionServer):
    """The tutorial's TCP server: greets each client and logs what it sends.

    ``WelcomeServer(("127.0.0.1", 0))`` binds at once (port 0 picks a free
    port; read ``server_address``). Run ``serve_forever()`` on a thread and
    stop it with ``shutdown()``, or use a ``with`` block.

    Raises AddressError when the address cannot be bound.
    """

    full_message = b"server is full, try again later\n"

    def __init__(
        self,
        address: tuple[str, int],
        *,
        welcome: str = DEFAULT_WELCOME,
        echo: bool = False,
        payload: str = "text",
        max_clients: int | None = None,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        access: AccessRules | None = None,
        max_per_ip: int | None = None,
        buffer_size: int | None = None,
        logger: logging.Logger = logger,
    ) -> None:
        if payload not in PAYLOAD_MODES:
            raise ValueError(f"payload must be one of {PAYLOAD_MODES}")
        self.welcome = (welcome + "\n").encode() if welcome else b""
        self.tls_context = tls
        self.handshake_timeout = handshake_timeout
        self.echo = echo
        self.payload = payload
        self.buffer_size = buffer_size or default_buffer_size()
        super().__init__(address, WelcomeHandler, max_clients=max_clients, access=access, max_per_ip=max_per_ip, logger=logger)

    # -- events (override to change behaviour) ----------------------------

    def on_connection(self, peer: str) -> bytes:
        """A client connected; return the bytes to greet it with."""
        self.logger.info("Client connected %s", peer)
        return self.welcome

    def on_data(self, peer: str, chunk: bytes) -> None:
        """A chunk arrived from *peer* (one recv(), not one message)."""
        if self.payload == "text":
            self.logger.info("Get message from client %s: %s", peer, display_bytes(chunk))
        elif self.payload == "hex":
            self.logger.info("Get message from client %s (%d bytes):\n%s", peer, len(chunk), hexdump(chunk))

    def on_end(self, peer: str, received: int) -> None:
        """*peer* ended its side (EOF); the server closes the connection."""
        self.logger.info("Client disconnected %s (%d bytes received)", peer, received)

    def on_error(self, peer: str, error: OSError, received: int) -> None:
        """The connection to *peer* failed (reset, or closed by shutdown())."""
        if self._stopping:
            reason = "server closed"
        elif isinstance(error, ConnectionResetError):
            reason = "connection reset by peer"
        else:
            reason = error.strerror or str(error)
        self.logger.info("Client disconnected %s (%s, %d bytes received)", peer, reason, received)


# -- client side -------------------------------------------------------------


def connect(host: str, port: int, timeout: float | None = 5.0, tls: ssl.SSLContext | None = None) -> Any:
    """Open a TCP connection to *host*:*port*, in blocking mode once connected.

    With *tls* (a client SSLContext) the handshake runs too, within *timeout*,
    and a :class:`~socketlab.tls.TlsStream` (used like a socket) is returned.
    Raises AddressError naming the address on unknown host, refusal or
    timeout, TlsError naming the reason when the handshake fails.
    """
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=False)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except OSError as error:
        sock.close()
        raise bind_error(host, port, error, action="connect to") from None
    sock.settimeout(None)
    if tls is None:
        return sock
    stream = TlsStream.client(sock, tls, host)
    try:
        stream.handshake(timeout)
    except TlsError as error:
        sock.close()
        raise TlsError(f"TLS handshake with {format_address((host, port))} failed: {error}") from None
    except OSError as error:
        sock.close()
        raise bind_error(host, port, error, action="finish the TLS handshake with") from None
    return stream


def exchange(host: str, port: int, data: bytes, timeout: float | None = 5.0) -> bytes:
    """Connect, send *data*, half-close, and return everything until the server closes.

    The tutorial's client in one call. Raises AddressError on connection errors.
    """
    with connect(host, port, timeout) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(MAX_READ):
                chunks.append(chunk)
        except OSError as error:
            raise bind_error(host, port, error, action="talk to") from None
    return b"".join(chunks)


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of *data* to *fd*; a closed pipe raises BrokenPipeError, other failures OutputError."""
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write output: {error.strerror}") from None


def _copy_socket_to_fd(sock: socket.socket, out_fd: int, size: int) -> None:
    """Copy what the socket receives to *out_fd* until EOF.

    Bytes are copied unchanged, except to a terminal: there control
    characters are shown escaped, so a server cannot drive the terminal.
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    if os.isatty(out_fd):
        terminal = TerminalText()
        while count := sock.recv_into(view):
            _write_all(out_fd, memoryview(terminal.feed(view[:count].tobytes()).encode()))
        _write_all(out_fd, memoryview(terminal.feed(b"", final=True).encode()))
        return
    while count := sock.recv_into(view):
        _write_all(out_fd, view[:count])


def _copy_fd_to_socket(in_fd: int, sock: socket.socket, size: int) -> None:
    """Copy *in_fd* into the socket until EOF.

    A regular file goes by sendfile() (no copy through user space); anything
    else is read into one reused buffer -- measured faster than splice() from
    a pipe into a TCP socket on Linux.
    """
    if isinstance(sock, socket.socket) and stat.S_ISREG(os.fstat(in_fd).st_mode):
        while os.sendfile(sock.fileno(), in_fd, None, size):
            pass
        return
    buffer = bytearray(size)
    view = memoryview(buffer)
    source = open(in_fd, "rb", buffering=0, closefd=False)
    while count := source.readinto(buffer):
        sock.sendall(view[:count])


class StdioRelay:
    """Relay between a connected socket and two file descriptors, like ``nc``.

    ``run()`` copies *in_fd* to the socket on a helper thread (half-closing
    the socket at EOF) and the socket to *out_fd* on the calling thread,
    returning when the server closes its side. Errors from the socket raise
    AddressError; a closed output (``| head``) ends the relay quietly.
    """

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        port: int,
        in_fd: int | None,
        out_fd: int,
        prefix: bytes = b"",
        buffer_size: int | None = None,
    ) -> None:
        self.sock = sock
        self.buffer_size = buffer_size or default_buffer_size()
        self.prefix = prefix
        self.address = format_address((host, port))
        self.in_fd = in_fd
        self.out_fd = out_fd
        self._send_error: OSError | None = None

    def _send_side(self) -> None:
        try:
            if self.prefix:
                self.sock.sendall(self.prefix)
            if self.in_fd is not None:
                _copy_fd_to_socket(self.in_fd, self.sock, self.buffer_size)
            self.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the receive side reports how the connection ended
        except OSError as error:
            self._send_error = error

    def run(self) -> None:
        sender = threading.Thread(target=self._send_side, name="stdin-to-socket", daemon=True)
        sender.start()
        try:
            _copy_socket_to_fd(self.sock, self.out_fd, self.buffer_size)
        except BrokenPipeError:
            return
        except ConnectionResetError:
            raise AddressError(f"connection reset by {self.address}") from None
        except OSError as error:
            raise AddressError(f"connection to {self.address} failed: {error.strerror}") from None
        if self._send_error is not None:
            raise AddressError(f"cannot send to {self.address}: {self._send_error.strerror}")


def relay_stdio(
    sock: socket.socket,
    host: str,
    port: int,
    message: bytes | None,
    stdin: BinaryIO | None = None,
    buffer_size: int | None = None,
) -> None:
    """Send *message* (or stdin when None), half-close, copy replies to stdout (*buffer_size* bytes at most at a time)."""
    in_fd = None if message is not None else (stdin or sys.stdin.buffer).fileno()
    sys.stdout.flush()
    StdioRelay(sock, host, port, in_fd, sys.stdout.fileno(), prefix=message or b"", buffer_size=buffer_size).run()
