"""The chat's line client: what ``socketlab chat connect`` runs.

:class:`ChatClient` is the library part -- connect, send a line, iterate the
server's lines. :func:`run_session` joins it to a terminal or a pipe: stdin
lines go to the server, server lines are printed (control characters
escaped) as they arrive, and on a terminal the half-typed input line is
redrawn below each incoming line instead of being garbled.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from typing import Any, Callable, Iterator, TextIO

from socketlab.lines import LineBuffer, LineTooLong
from socketlab.tcp import connect
from socketlab.text import escape_controls

#: Longest server line the client accepts (a /who of a big room is long).
MAX_SERVER_LINE = 1024 * 1024
#: How long the client waits for the server to close after /quit.
QUIT_TIMEOUT = 5.0
PROMPT = "> "


class ChatClient:
    """A connection to a chat server that speaks in lines."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float | None = 5.0, tls: ssl.SSLContext | None = None) -> "ChatClient":
        """Connect to *host*:*port* (over TLS with a client context *tls*).

        Raises AddressError naming the address, or TlsError naming why the handshake failed.
        """
        return cls(connect(host, port, timeout, tls=tls))

    def send_line(self, text: str) -> None:
        """Send *text* as one line (a newline inside it would start another)."""
        data = text.replace("\n", " ").encode("utf-8", "replace") + b"\n"
        with self._send_lock:
            self.sock.sendall(data)

    def lines(self) -> Iterator[str]:
        """Yield the server's lines, decoded, until it closes the connection."""
        framer = LineBuffer(MAX_SERVER_LINE)
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, OSError):
                data = b""
            items = framer.feed(data) if data else framer.finish()
            for item in items:
                if isinstance(item, LineTooLong):
                    yield f"(a line longer than {item.limit} bytes was skipped)"
                else:
                    yield item.decode("utf-8", "replace")
            if not data:
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TerminalOutput:
    """Prints server lines; on a terminal, keeps the input line intact."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self._lock = threading.Lock()
        self._readline = None
        if interactive:
            try:
                import readline

                self._readline = readline
            except ImportError:
                pass

    def show(self, line: str) -> None:
        text = escape_controls(line)
        with self._lock:
            if self.interactive:
                typed = self._readline.get_line_buffer() if self._readline else ""
                self.out.write(f"\r\x1b[K{text}\n{PROMPT}{typed}")
            else:
                self.out.write(text + "\n")
            self.out.flush()


def run_session(
    client: ChatClient,
    *,
    name: str | None = None,
    room: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
    status: Callable[[str], None] = lambda text: None,
) -> None:
    """Relay between *client* and stdin/stdout until the server closes.

    Sends ``/nick`` and ``/join`` first when *name* / *room* are given. At
    the end of stdin (or Ctrl-C) it sends ``/quit`` and waits up to
    QUIT_TIMEOUT seconds for the server to close.
    """
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if interactive is None:
        interactive = stdin.isatty() and out.isatty()
    display = TerminalOutput(out, interactive)
    closed = threading.Event()

    def receive() -> None:
        for line in client.lines():
            display.show(line)
        closed.set()

    def send() -> None:
        try:
            if name:
                client.send_line(f"/nick {name}")
            if room:
                client.send_line(f"/join {room}")
            while not closed.is_set():
                try:
                    line = input(PROMPT) if interactive else stdin.readline()
                except EOFError:
                    break
                if not interactive and not line:
                    break
                client.send_line(line.rstrip("\r\n"))
            client.send_line("/quit")
        except OSError:
            pass

    receiver = threading.Thread(target=receive, name="chat-receive", daemon=True)
    sender = threading.Thread(target=send, name="chat-send", daemon=True)
    receiver.start()
    sender.start()
    try:
        while not closed.wait(0.5):
            if not sender.is_alive():
                closed.wait(QUIT_TIMEOUT)
                break
    except KeyboardInterrupt:
        try:
            client.send_line("/quit")
        except OSError:
            pass
        closed.wait(QUIT_TIMEOUT)
    if interactive:
        out.write("\r\x1b[K")
        out.flush()
