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
chunk is not one message. With *output* the server writes what clients send
there, byte for byte (``nc -l > file``), one client at a time; with *once*
it serves one connection and stops. :class:`~socketlab.programs.ProgramServer`
runs a program per connection instead (``--exec``). Both listen on a UNIX
socket file when given a :class:`~socketlab.unix.UnixAddress`.

:func:`exchange` is the client side in one call; :func:`connect` (or
:func:`~socketlab.unix.connect_unix`) and :func:`relay_stdio`
(:mod:`socketlab.relay`) are what ``socketlab tcp-client`` is made of.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import ssl
import sys
from typing import Any, BinaryIO

from socketlab.access import AccessRules
from socketlab.addresses import bind_error, describe_os_error, format_address, resolve
from socketlab.errors import AddressError
from socketlab.relay import ServerRefused, StdioRelay, write_to
from socketlab.serving import ConnectionServer
from socketlab.tls import HANDSHAKE_TIMEOUT, TlsError, TlsStream, describe
from socketlab.text import display_bytes, hexdump, plural
from socketlab.unix import UnixAddress

__all__ = [
    "WelcomeServer",
    "StdioRelay",
    "ServerRefused",
    "connect",
    "exchange",
    "relay_stdio",
    "start_tls",
]

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
        output = server.output
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
                if output is not None and not server.write_output(view[:count]):
                    server.on_error(peer, OSError("output failed"), received)
                    return
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
        if output is not None and not server.write_output(b""):  # flushed: all of it is out
            server.on_error(peer, OSError("output failed"), received)
            return
        server.on_end(peer, received)
        server.end_connection(sock)  # its place is free before the client sees the end: clients in turn get in
        try:
            if isinstance(sock, ssl.SSLSocket):  # our close_notify too (the client's has come)
                sock = sock.unwrap()
            sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass


class WelcomeServer(ConnectionServer):
    """The tutorial's TCP server: greets each client and logs what it sends.

    ``WelcomeServer(("127.0.0.1", 0))`` binds at once (port 0 picks a free
    port; read ``server_address``); ``WelcomeServer(UnixAddress(path))``
    listens on a UNIX socket file. Run ``serve_forever()`` on a thread and
    stop it with ``shutdown()``, or use a ``with`` block.

    With *output* (a binary file, e.g. ``open(path, "wb")`` or
    ``sys.stdout.buffer``) every byte a client sends is written there,
    unchanged, and flushed when its connection ends. The output takes one
    client at a time: max_clients is 1, so another client is refused as full
    while one sends, and clients one after another are appended in turn.
    When the output cannot be written (a full disk, a reader gone), the
    server stops: serve_forever() raises the OSError.

    Raises AddressError when the address cannot be bound.
    """

    full_message = b"server is full, try again later\n"
    too_many_message = b"too many connections from your address, try again later\n"

    def __init__(
        self,
        address: tuple[str, int] | UnixAddress,
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
        output: BinaryIO | None = None,
        once: bool = False,
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
        #: Where clients' bytes are written (one client at a time), or None.
        self.output = output
        if output is not None:
            max_clients = 1
        super().__init__(
            address, WelcomeHandler, max_clients=max_clients, access=access, max_per_ip=max_per_ip, once=once, logger=logger
        )

    def write_output(self, data: bytes | memoryview) -> bool:
        """Write *data* to the output (b"": flush it); False, and the server stopping, when it fails."""
        assert self.output is not None
        try:
            write_to(self.output, data)
            if not data:
                self.output.flush()
        except OSError as error:
            self.on_output_error(error)
            return False
        return True

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
        self.logger.info("Client disconnected %s (%s received)", peer, plural(received, "byte"))

    def on_error(self, peer: str, error: OSError, received: int) -> None:
        """The connection to *peer* failed (reset, or closed by shutdown())."""
        if self._stopping:
            reason = "server closed"
        elif isinstance(error, ConnectionResetError):
            reason = "connection reset by peer"
        else:
            reason = error.strerror or str(error)
        self.logger.info("Client disconnected %s (%s, %s received)", peer, reason, plural(received, "byte"))

    def on_output_error(self, error: OSError) -> None:
        """The output cannot be written: stop serving; serve_forever() raises *error*."""
        self.logger.error("Cannot write the output: %s; stopping", describe_os_error(error))
        self.stop_serving(error)


# -- client side -------------------------------------------------------------


def connect(
    host: str,
    port: int,
    timeout: float | None = 5.0,
    tls: ssl.SSLContext | None = None,
    source: tuple[str, int] | None = None,
) -> Any:
    """Open a TCP connection to *host*:*port*, in blocking mode once connected.

    With *source* ``(address, port)`` the local side is bound there first
    (port 0: any; an empty address: any of the right family). With *tls* (a
    client SSLContext) the handshake runs too, within *timeout*, and a
    :class:`~socketlab.tls.TlsStream` (used like a socket) is returned.
    Raises AddressError naming the address on unknown host, a source that
    cannot be bound, refusal or timeout, TlsError naming the reason when the
    handshake fails.
    """
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=False)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if source is not None:
        _bind_source(sock, family, source, format_address((host, port)))
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except OSError as error:
        sock.close()
        raise bind_error(host, port, error, action="connect to") from None
    sock.settimeout(None)
    if tls is None:
        return sock
    return start_tls(sock, tls, host, format_address((host, port)), timeout)


def _bind_source(sock: socket.socket, family: int, source: tuple[str, int], target: str) -> None:
    """Bind *sock* to the local *source* address, or close it and raise AddressError naming both ends."""
    host, port = source
    what = f"cannot use {format_address(source) if port else host} as the source for {target}"
    try:
        infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        sock.close()
        reason = describe_os_error(error) if isinstance(error, OSError) else "unknown host"
        if isinstance(error, socket.gaierror) and error.errno in (socket.EAI_ADDRFAMILY, socket.EAI_NONAME, socket.EAI_FAMILY):
            reason += ", or not of the target's address family"
        raise AddressError(f"{what}: {reason}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a fixed source port in TIME_WAIT, as nc does
        sock.bind(infos[0][4])
    except OSError as error:
        sock.close()
        raise AddressError(f"{what}: {describe_os_error(error)}") from None


def start_tls(sock: socket.socket, tls: ssl.SSLContext, server_name: str, address: str, timeout: float | None) -> TlsStream:
    """Run a client TLS handshake on the connected *sock* (verifying *server_name*); the stream, used like a socket.

    Closes *sock* and raises TlsError naming the reason, or AddressError,
    when the handshake fails.
    """
    stream = TlsStream.client(sock, tls, server_name)
    try:
        stream.handshake(timeout)
    except TlsError as error:
        sock.close()
        raise TlsError(f"TLS handshake with {address} failed: {error}") from None
    except OSError as error:
        sock.close()
        raise AddressError(f"cannot finish the TLS handshake with {address}: {describe_os_error(error)}") from None
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


def relay_stdio(
    sock: Any,
    address: str,
    message: bytes | None,
    stdin: BinaryIO | None = None,
    buffer_size: int | None = None,
    *,
    hex_dump: bool = False,
    crlf: bool = False,
    idle_timeout: float | None = None,
) -> str:
    """Send *message* (or stdin when None), half-close, copy replies to stdout; see :class:`~socketlab.relay.StdioRelay`.

    *address* names the server in errors. Returns ``"closed"`` when the
    server closed, ``"idle"`` when *idle_timeout* ended the connection.
    """
    in_fd = None if message is not None else (stdin or sys.stdin.buffer).fileno()
    sys.stdout.flush()
    relay = StdioRelay(
        sock,
        address,
        in_fd,
        sys.stdout.fileno(),
        prefix=message or b"",
        buffer_size=buffer_size or default_buffer_size(),
        hex_dump=hex_dump,
        crlf=crlf,
        idle_timeout=idle_timeout,
    )
    return relay.run()
