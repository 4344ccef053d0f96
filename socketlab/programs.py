"""A program per connection, with the connection as its stdin and stdout: inetd's ``nowait``, ncat's ``-e``.

:class:`ProgramServer` is a :class:`~socketlab.serving.ConnectionServer`
whose handler starts *argv* -- never through a shell: no pipes,
redirections, variables or globs -- with the accepted socket as file
descriptors 0 and 1, waits for it and logs how it ended. Its stderr is the
server's. Children are bounded by ``max_clients`` (one connection, one
child); ``shutdown()`` sends each SIGTERM once the connections are closed,
SIGKILL to those still running ``kill_timeout`` seconds later, and reaps
them all.

Each child finds ``SOCKETLAB_PEER`` (``HOST:PORT``, or ``unix#N``) in its
environment. TLS is not offered: the program would read ciphertext.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socketserver
import subprocess
import threading
from typing import Any, Sequence

from socketlab.access import AccessRules
from socketlab.addresses import format_address
from socketlab.errors import SocketlabError
from socketlab.serving import ConnectionServer
from socketlab.unix import UnixAddress

logger = logging.getLogger("socketlab.tcp")


class ProgramError(SocketlabError):
    """The program to run per connection cannot be found or run."""


def describe_exit(status: int) -> str:
    """``exited with status 0``, ``killed by SIGTERM``: how a child ended, from its Popen returncode."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"killed by {name}"


class ProgramHandler(socketserver.BaseRequestHandler):
    """One connection: its program, run to its end."""

    server: "ProgramServer"

    def handle(self) -> None:
        self.server.run_program(self.request, format_address(self.client_address))


class ProgramServer(ConnectionServer):
    """Runs *argv* for each connection with the socket as its stdin and stdout.

    ``ProgramServer(("127.0.0.1", 0), ["cat", "-n"])`` binds at once; run
    ``serve_forever()`` on a thread, stop with ``shutdown()`` or a ``with``
    block. Raises ProgramError when *argv*'s program cannot be found (before
    anything listens), AddressError when the address cannot be bound.
    """

    full_message = b"server is full, try again later\n"
    too_many_message = b"too many connections from your address, try again later\n"
    #: After SIGTERM at shutdown, how long children have before SIGKILL.
    kill_timeout: float = 0.5

    def __init__(
        self,
        address: tuple[str, int] | UnixAddress,
        argv: Sequence[str],
        *,
        max_clients: int | None = None,
        access: AccessRules | None = None,
        max_per_ip: int | None = None,
        once: bool = False,
        logger: logging.Logger = logger,
    ) -> None:
        if not argv:
            raise ProgramError("no program to run")
        found = shutil.which(argv[0])
        if found is None:
            where = "" if os.sep in argv[0] else " (not in PATH)"
            raise ProgramError(f"cannot run {argv[0]!r}: no such executable program{where}")
        self.argv = [found, *argv[1:]]
        #: The program's name in logs, as given.
        self.program = os.path.basename(argv[0])
        self._children: dict[subprocess.Popen[bytes], str] = {}
        self._children_changed = threading.Condition()
        self._killing = False
        super().__init__(
            address, ProgramHandler, max_clients=max_clients, access=access, max_per_ip=max_per_ip, once=once, logger=logger
        )

    def run_program(self, sock: Any, peer: str) -> None:
        """Start the program on *sock*, wait for it, log how it ended (the connection's thread)."""
        self.logger.info("Client connected %s", peer)
        env = {**os.environ, "SOCKETLAB_PEER": peer}
        sock.setblocking(True)
        with self._children_changed:
            if self._killing:
                return
            try:
                child = subprocess.Popen(self.argv, stdin=sock.fileno(), stdout=sock.fileno(), env=env, close_fds=True)
            except OSError as error:
                self.logger.error("Cannot run %s for %s: %s", self.program, peer, error.strerror or error)
                return
            self._children[child] = peer
        self.logger.info("Running %s for %s (pid %d)", self.program, peer, child.pid)
        try:
            status = child.wait()
        finally:
            with self._children_changed:
                self._children.pop(child, None)
                self._children_changed.notify_all()
        self.logger.info("Client disconnected %s (%s %s)", peer, self.program, describe_exit(status))

    @property
    def child_count(self) -> int:
        """How many programs are running now."""
        with self._children_changed:
            return len(self._children)

    def close_connections(self) -> None:
        """Close every connection, then end the children: SIGTERM, and SIGKILL after kill_timeout."""
        super().close_connections()
        with self._children_changed:
            self._killing = True
            self._signal_children(signal.SIGTERM)
            if not self._children_changed.wait_for(lambda: not self._children, self.kill_timeout):
                self._signal_children(signal.SIGKILL)
                self._children_changed.wait_for(lambda: not self._children, self.kill_timeout)

    def _signal_children(self, sig: int) -> None:
        for child in self._children:
            try:
                child.send_signal(sig)
            except ProcessLookupError:
                pass
