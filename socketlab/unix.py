"""UNIX domain sockets: a listener whose socket file is made safely and cleaned up, and the client's connect.

A UNIX socket is named by a path in the file system; who may connect is
decided by that file's permissions, not by addresses (so ``--allow``,
``--deny`` and ``--max-per-ip`` have nothing to check). What a server
needs around the path, and what :func:`open_unix_listener` does:

- the file is created with *mode* (0600 by default: only the owner may
  connect) from the start, never more open even for a moment;
- a file left by a server that died (nobody accepts on it: *stale*) is
  replaced; a live one is refused with one line, as a taken TCP port is;
  anything that is not a socket is never touched;
- the file is removed when the listener is closed, if it is still ours (a
  newer server may have replaced it meanwhile).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from dataclasses import dataclass
from typing import Any

from socketlab.addresses import describe_os_error
from socketlab.errors import AddressError

#: Who may connect to a new socket file, unless told otherwise: its owner only.
DEFAULT_MODE = 0o600
#: How long the probe of an existing socket file waits for an answer.
PROBE_TIMEOUT = 1.0

_umask_lock = threading.Lock()


@dataclass(frozen=True)
class UnixAddress:
    """Where a server listens instead of HOST:PORT: a socket file at *path*, created with *mode*."""

    path: str
    mode: int = DEFAULT_MODE

    def __str__(self) -> str:
        return self.path


class UnixListener(socket.socket):
    """A listening UNIX socket that removes its file when closed, if the file is still the one it made."""

    _identity: tuple[int, int] | None = None

    def remember_file(self) -> None:
        """Note the socket file's identity (device, inode), to remove only that file."""
        info = os.stat(self.getsockname())
        self._identity = (info.st_dev, info.st_ino)

    def close(self) -> None:
        path, identity = self._path_and_identity()
        super().close()
        if path is None or identity is None:
            return
        try:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(path)
        except OSError:
            pass  # gone already, or not ours to remove

    def _path_and_identity(self) -> tuple[str | None, tuple[int, int] | None]:
        identity, self._identity = self._identity, None
        if identity is None or self.fileno() < 0:
            return None, None
        try:
            name = self.getsockname()
        except OSError:
            return None, None
        return (name if isinstance(name, str) and name else None), identity


def unix_error(path: str, error: OSError | str, action: str = "listen on") -> AddressError:
    """The one-line AddressError for *path*: ``cannot listen on /tmp/s.sock: permission denied``."""
    reason = error if isinstance(error, str) else describe_os_error(error)
    return AddressError(f"cannot {action} {path}: {reason}")


def open_unix_listener(address: UnixAddress, backlog: int = 1024) -> UnixListener:
    """A listening socket at *address*'s path, its file created with *address*'s mode.

    A stale socket file (nobody accepts on it) is replaced. Raises AddressError
    when a server is listening there already, when something other than a
    socket is in the way, or when the path cannot be bound (its folder is
    missing or not writable, the path is longer than 107 bytes, ...).
    """
    path = address.path
    if not path or "\0" in path:
        raise unix_error(path, "not a file path")
    _clear_stale(path)
    sock = UnixListener(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file under the umask: one that keeps it at *mode* or stricter covers the
        # moment before chmod() (which only ever opens it up to *mode*). The umask is the process's:
        # other threads only ever see it stricter, never looser.
        with _umask_lock:
            previous = os.umask(0o777)
            try:
                os.umask(previous | (0o777 & ~address.mode))
                sock.bind(path)
            finally:
                os.umask(previous)
        sock.remember_file()
        os.chmod(path, address.mode)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:  # another server won the race since _clear_stale()
            raise unix_error(path, "a server is listening there already") from None
        raise unix_error(path, error) from None
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket file at *path* that nobody listens on; refuse a live one or a non-socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise unix_error(path, error) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise unix_error(path, "a file that is not a socket is in the way; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: its server is gone
    except OSError as error:
        if error.errno == errno.EAGAIN:  # a live server with a full accept queue
            raise unix_error(path, "a server is listening there already") from None
        raise unix_error(path, error) from None
    else:
        raise unix_error(path, "a server is listening there already")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise unix_error(path, f"cannot remove the stale socket file ({describe_os_error(error)})") from None


def connect_unix(path: str, timeout: float | None = 5.0) -> socket.socket:
    """A connected UNIX stream socket, in blocking mode once connected.

    Raises AddressError naming the path: no such file, nobody listening
    (connection refused), permission denied, timed out.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as error:
        sock.close()
        reason = "no such socket file" if isinstance(error, FileNotFoundError) else describe_os_error(error)
        raise unix_error(path, reason, action="connect to") from None
    sock.settimeout(None)
    return sock


def is_unix(address: Any) -> bool:
    """Whether a server address is a UNIX socket's."""
    return isinstance(address, UnixAddress)
