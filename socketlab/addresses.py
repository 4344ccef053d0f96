"""Resolving, formatting and binding socket addresses, with readable errors.

Every failure here raises :class:`~socketlab.errors.AddressError` whose
message names the host and port, e.g.
``cannot listen on 127.0.0.1:3000: address already in use``.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from socketlab.errors import AddressError

#: The host servers bind to unless told otherwise: never expose by default.
DEFAULT_HOST = "127.0.0.1"
#: The tutorial's port.
DEFAULT_PORT = 3000


#: The largest port number; port 0 means "any free port" when listening or binding.
MAX_PORT = 65535


def format_address(address: Any) -> str:
    """Format a socket address as ``HOST:PORT`` (``[HOST]:PORT`` for IPv6).

    A UNIX socket's address is its path; an unnamed one (a client that did
    not bind, as most do) is ``unix``.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):  # a Linux abstract UNIX address
        return "@" + address.lstrip(b"\0").decode("utf-8", "replace")
    if address == "":
        return "unix"
    return str(address)


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A port number in 1-65535 (0-65535 with *allow_zero*: a free port when listening or binding).

    Raises AddressError naming the range.
    """
    lowest = 0 if allow_zero else 1
    if not (text.isascii() and text.isdigit()) or not lowest <= int(text) <= MAX_PORT:
        raise AddressError(f"invalid port {text!r}: ports are {lowest}-{MAX_PORT}")
    return int(text)


def parse_address(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPv6]:PORT`` into ``(host, port)``; a missing host is 127.0.0.1.

    Port 0 (a free port) is accepted only with *allow_zero*. Raises
    AddressError when the text has no port, or names the range when the port
    is out of it.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise AddressError(f"invalid address {text!r}: expected HOST:PORT")
    lowest = 0 if allow_zero else 1
    if not lowest <= int(port_text) <= MAX_PORT:
        raise AddressError(f"invalid address {text!r}: the port must be {lowest}-{MAX_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or DEFAULT_HOST, int(port_text)


def parse_source(text: str) -> tuple[str, int]:
    """Parse a local address to bind before connecting: ``ADDR``, ``ADDR:PORT``, ``[IPv6]:PORT``, ``IPv6`` or ``:PORT``.

    Returns ``(host, port)``; port 0 (the default) lets the system choose, an
    empty host is any address. Raises AddressError naming the range for a bad port.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise AddressError(f"invalid address {text!r}: expected ADDR, ADDR:PORT or [IPv6]:PORT")
        return host, parse_port(rest[1:], allow_zero=True) if rest else 0
    if text.count(":") > 1:  # a bare IPv6 address, no port
        return text, 0
    host, sep, port_text = text.partition(":")
    if not sep:
        return host, 0
    try:
        return host, parse_port(port_text, allow_zero=True)
    except AddressError:
        raise AddressError(f"invalid address {text!r}: the port must be 0-{MAX_PORT}") from None


def describe_os_error(error: BaseException) -> str:
    """Return a short lower-case reason for a socket error."""
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if isinstance(error, socket.timeout):
        return "timed out"
    if isinstance(error, OSError):
        if error.errno == errno.EADDRINUSE:
            return "address already in use"
        if error.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if error.errno == errno.ECONNREFUSED:
            return "connection refused"
        if error.errno == errno.EADDRNOTAVAIL:
            return "address not available on this machine"
        if error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


def resolve(host: str, port: int, kind: int, *, passive: bool, action: str | None = None) -> tuple[int, Any]:
    """Resolve *host*/*port* to ``(family, sockaddr)`` for a socket of *kind*.

    Raises AddressError naming the address when the host is unknown; its
    message starts ``cannot <action>`` (default: listen on / connect to).
    """
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host or None, port, 0, kind, 0, flags)
    except (socket.gaierror, UnicodeError) as error:
        action = action or ("listen on" if passive else "connect to")
        reason = describe_os_error(error) if isinstance(error, OSError) else "unknown host"
        raise AddressError(f"cannot {action} {format_address((host, port))}: {reason}") from None
    family, _kind, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def bind_error(host: str, port: int, error: OSError, action: str = "listen on") -> AddressError:
    """Build the AddressError for a failed bind/connect of *host*:*port*."""
    return AddressError(f"cannot {action} {format_address((host, port))}: {describe_os_error(error)}")
