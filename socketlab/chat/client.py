"""The chat's line client: what ``socketlab chat connect`` runs.

The library part is a :class:`LineClient`: connect, send a line, iterate the
server's lines. :class:`ChatClient` speaks the line protocol over TCP (TLS
included) or a UNIX domain socket; :class:`WebSocketClient` speaks it to the
``/ws`` endpoint of ``chat serve --web`` (each text message one or more lines).

:func:`run_session` joins a client to stdin and stdout until the server
closes. Through pipes it copies lines both ways and nothing else. On a
terminal it edits the input line with GNU readline's *callback* interface
(``rl_callback_handler_install`` / ``rl_callback_read_char``), the one meant
for programs that print while the user types. CPython's ``readline`` module
uses that interface inside ``input()`` but does not expose it, so
:class:`Readline` calls the same library through ``ctypes``. Everything that
touches readline runs on one thread, between keystrokes: an incoming line
clears every screen row of the prompt and the typed text
(``rl_clear_visible_line``), is printed, and readline redraws the input with
the cursor where it was (``rl_forced_update_display``). The terminal's
settings are saved first and restored on every way out: the server closing,
``/quit``, end of input, SIGINT, SIGTERM and SIGHUP (Ctrl-Z restores them
while suspended).

A session that ends before the server's welcome line ends in
:class:`ChatRefused`: the server's refusal (``! server full``), a TLS answer
to plaintext, or a close without a word.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, TextIO

from socketlab.addresses import describe_os_error, format_address
from socketlab.errors import AddressError, SocketlabError
from socketlab.lines import LineBuffer, LineTooLong
from socketlab.tcp import connect
from socketlab.text import escape_controls

#: Longest server line the client accepts (a /who of a big room is long).
MAX_SERVER_LINE = 1024 * 1024
#: Largest WebSocket message accepted from the server (it may coalesce many lines).
MAX_SERVER_MESSAGE = 16 * 1024 * 1024
#: websockets' own log for the client, silenced: its errors reach the user as this module's exceptions.
_QUIET_WEBSOCKETS = logging.getLogger("socketlab.chat.client.websockets")
_QUIET_WEBSOCKETS.addHandler(logging.NullHandler())
_QUIET_WEBSOCKETS.propagate = False
#: How long the client waits for the server to close after /quit.
QUIT_TIMEOUT = 5.0
PROMPT = "> "
#: The start of the line a socketlab chat server greets every member with.
WELCOME = "* welcome "


class ChatRefused(SocketlabError):
    """The connection ended before the server's welcome: refused, or not a chat server in the clear."""


class LineClient(Protocol):
    """What a session needs of a connection: lines out, lines in, close."""

    #: How the server is named in messages (``127.0.0.1:3000``, a socket path, a URL).
    address: str
    #: Whether the connection is encrypted.
    tls: bool

    def send_line(self, text: str) -> None:
        """Send *text* as one line; raises OSError when the connection is gone."""

    def lines(self) -> Iterator[str]:
        """The server's lines, decoded, until it closes (a reset or error ends them too)."""

    def not_chat(self) -> str | None:
        """After lines() ended: why the server does not look like a plaintext chat server, or None."""

    def close(self) -> None:
        """Close the connection, waking a thread blocked in lines()."""


def _looks_like_tls(data: bytes) -> bool:
    """Whether *data* starts a TLS record (an alert or a handshake), the answer of a TLS server to plaintext."""
    return len(data) >= 2 and data[0] in (0x14, 0x15, 0x16, 0x17) and data[1] == 0x03


class ChatClient:
    """A connection to a chat server that speaks in lines (TCP, TLS or a UNIX socket)."""

    def __init__(self, sock: Any, address: str = "the server", tls: bool = False) -> None:
        self.sock = sock
        self.address = address
        self.tls = tls
        #: Bytes sent and received so far, and whether the first received looked like TLS.
        self.sent = 0
        self.received = 0
        self.tls_reply = False
        self._send_lock = threading.Lock()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float | None = 5.0, tls: ssl.SSLContext | None = None) -> "ChatClient":
        """Connect to *host*:*port* (over TLS with a client context *tls*).

        Raises AddressError naming the address, or TlsError naming why the handshake failed.
        """
        return cls(connect(host, port, timeout, tls=tls), format_address((host, port)), tls is not None)

    @classmethod
    def connect_unix(cls, path: str, timeout: float | None = 5.0) -> "ChatClient":
        """Connect to the chat server listening on the UNIX domain socket *path*.

        Raises AddressError naming the path: no such socket, nobody listening on it (a stale
        file), permission denied.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as error:
            sock.close()
            if error.errno == errno.ENOENT:
                reason = "no such socket file"
            elif error.errno == errno.ECONNREFUSED:
                reason = "nobody is listening on it (a server that stopped left the file behind?)"
            elif error.errno == errno.ENOTSOCK:
                reason = "not a socket"
            else:
                reason = describe_os_error(error)
            raise AddressError(f"cannot connect to {path}: {reason}") from None
        sock.settimeout(None)
        return cls(sock, path)

    def send_line(self, text: str) -> None:
        """Send *text* as one line (a newline inside it would start another)."""
        data = text.replace("\n", " ").encode("utf-8", "replace") + b"\n"
        with self._send_lock:
            self.sock.sendall(data)
            self.sent += len(data)

    def lines(self) -> Iterator[str]:
        """Yield the server's lines, decoded, until it closes the connection.

        A first answer that is a TLS record (the server speaks TLS) ends them at once,
        unshown; :meth:`not_chat` then says so.
        """
        framer = LineBuffer(MAX_SERVER_LINE)
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, OSError):
                data = b""
            if data and self.received == 0 and not self.tls and _looks_like_tls(data):
                self.tls_reply = True
                return
            self.received += len(data)
            items = framer.feed(data) if data else framer.finish()
            for item in items:
                if isinstance(item, LineTooLong):
                    yield f"(a line longer than {item.limit} bytes was skipped)"
                else:
                    yield item.decode("utf-8", "replace")
            if not data:
                return

    def not_chat(self) -> str | None:
        if self.tls_reply:
            return f"{self.address} seems to speak TLS: try --tls"
        if self.received == 0:
            closed = f"{self.address} closed the connection without a word"
            if self.tls:
                return closed
            if self.sent:  # what a TLS server does with plaintext where it expects a ClientHello
                return f"{closed}: it seems to speak TLS: try --tls (or it does not let this address in)"
            return f"{closed} (if it speaks TLS, try --tls)"
        return None

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


class WebSocketClient:
    """A chat member on the WebSocket endpoint of ``chat serve --web`` (``ws://HOST:PORT/ws``, ``wss://``).

    Each line goes out as one text message; each message from the server holds
    whole lines. ``websockets``' threaded client does the handshake, framing,
    pings and closing.
    """

    def __init__(self, conn: Any, address: str, tls: bool = False) -> None:
        self.conn = conn
        self.address = address
        self.tls = tls
        self.received = 0
        #: The server's close code and reason, once it closed (e.g. 1013 for a full server).
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    def connect(cls, url: str, timeout: float | None = 5.0, tls: ssl.SSLContext | None = None) -> "WebSocketClient":
        """Open the WebSocket at *url* (``wss://`` with the client context *tls*).

        Raises AddressError (no answer, refused, or not a WebSocket endpoint, with the
        HTTP status it gave) or TlsError naming why the handshake failed.
        """
        from urllib.parse import urlsplit

        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect as ws_connect

        from socketlab.tls import TlsError, describe

        try:
            parts = urlsplit(url)
            port = parts.port  # ValueError: not a number, or not 0-65535
        except ValueError as error:
            raise AddressError(f"invalid URL {url!r}: {error}") from None
        if port == 0:
            raise AddressError(f"invalid URL {url!r}: the port must be 1-65535")
        where = format_address((parts.hostname or "", port or (443 if parts.scheme == "wss" else 80)))
        try:
            conn = ws_connect(
                url,
                ssl=tls if parts.scheme == "wss" else None,
                open_timeout=timeout,
                close_timeout=2.0,
                compression=None,
                max_size=MAX_SERVER_MESSAGE,
                logger=_QUIET_WEBSOCKETS,  # what goes wrong is told here, in one line
            )
        except (ConnectionClosed, AssertionError):
            # A server that is not a WebSocket server may answer and close while websockets' sync client
            # is still in its handshake; its reader thread and the handshake then race (websockets 17.4:
            # 'no close frame received or sent', or an assertion in send_context).
            raise AddressError(f"cannot open {url}: {where} closed the connection during the handshake") from None
        except ssl.SSLError as error:
            raise TlsError(f"TLS handshake with {where} failed: {describe(error)}") from None
        except InvalidStatus as error:
            response = error.response
            body = bytes(response.body or b"").decode("utf-8", "replace").strip().splitlines()
            phrase = response.reason_phrase
            said = f": {body[0]}" if body and len(body[0]) < 200 and body[0].rstrip(".").lower() != phrase.lower() else ""
            raise AddressError(f"cannot open {url}: the server answered HTTP {response.status_code} {phrase}{said}") from None
        except (InvalidURI, InvalidHandshake) as error:
            raise AddressError(f"cannot open {url}: {error}") from None
        except (OSError, TimeoutError) as error:
            raise AddressError(f"cannot connect to {where}: {describe_os_error(error)}") from None
        return cls(conn, url, parts.scheme == "wss")

    def send_line(self, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.conn.send(text.replace("\n", " "))
        except ConnectionClosed as closed:
            raise ConnectionResetError(errno.ECONNRESET, str(closed)) from None

    def lines(self) -> Iterator[str]:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = self.conn.recv()
            except ConnectionClosed as closed:
                if closed.rcvd is not None:
                    self.close_code, self.close_reason = closed.rcvd.code, closed.rcvd.reason
                return
            except OSError:
                return
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            self.received += len(text)
            parts = text.split("\n")
            if parts[-1] == "":
                parts.pop()
            for line in parts:
                yield line.removesuffix("\r")

    def not_chat(self) -> str | None:
        if self.received == 0:
            code = f" (close code {self.close_code}{': ' + self.close_reason if self.close_reason else ''})"
            return f"{self.address} closed the WebSocket without a word{code if self.close_code else ''}"
        return None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "WebSocketClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a session: stdin and stdout joined to a client ---------------------------------------------------


@dataclass
class SessionEnd:
    """How a session ended: *signal* is the number of the signal that stopped it, if one did;
    *server_closed* says whether the server closed the connection (not a timeout or a signal)."""

    signal: int | None = None
    server_closed: bool = True


class Welcome:
    """Watches the server's first lines: was the client welcomed, or refused, and why."""

    def __init__(self) -> None:
        self.welcomed = False
        self.refusal: str | None = None

    def see(self, line: str) -> None:
        if self.welcomed:
            return
        if line.startswith(WELCOME):
            self.welcomed = True
        elif line.startswith("! "):
            self.refusal = line[2:]

    def check(self, client: LineClient) -> None:
        """Raise ChatRefused, naming why, when the session ended before a welcome."""
        if self.welcomed:
            return
        if self.refusal is not None:
            raise ChatRefused(f"refused by {client.address}: {self.refusal}")
        raise ChatRefused(client.not_chat() or f"{client.address} closed the connection before any welcome")


def run_session(
    client: LineClient,
    *,
    name: str | None = None,
    room: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> SessionEnd:
    """Relay between *client* and stdin/stdout until the server closes.

    Sends ``/nick`` and ``/join`` first when *name* / *room* are given. At
    the end of stdin (or on SIGINT) it sends ``/quit`` and waits up to
    QUIT_TIMEOUT seconds for the server to close. On a terminal (both stdin and
    stdout, unless *interactive* says otherwise) the input line is edited with
    readline and kept whole below incoming lines. Raises ChatRefused when the
    server closed the connection before welcoming the client.
    """
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if interactive is None:
        interactive = stdin.isatty() and out.isatty()
    welcome = Welcome()
    readline = Readline.load() if interactive and threading.current_thread() is threading.main_thread() else None
    if readline is not None:
        end = TerminalSession(client, readline, stdin, out, welcome).run(name, room)
    else:
        end = _run_plain(client, name, room, stdin, out, welcome)
    if end.server_closed:
        welcome.check(client)
    return end


def _send_quietly(client: LineClient, text: str) -> None:
    try:
        client.send_line(text)
    except OSError:
        pass


def _run_plain(
    client: LineClient, name: str | None, room: str | None, stdin: TextIO, out: TextIO, welcome: Welcome
) -> SessionEnd:
    """Pipes (or a terminal without readline): each stdin line out, each server line printed."""
    closed = threading.Event()

    def receive() -> None:
        try:
            for line in client.lines():
                welcome.see(line)
                out.write(escape_controls(line) + "\n")
                out.flush()
        finally:  # an unwritable stdout ends the session too
            closed.set()

    def send() -> None:
        try:
            if name:
                client.send_line(f"/nick {name}")
            if room:
                client.send_line(f"/join {room}")
            while not closed.is_set():
                line = stdin.readline()
                if not line:
                    break
                client.send_line(line.rstrip("\r\n"))
            else:
                return  # the server closed first: nothing to say (and a silent close is not blamed on TLS)
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
        _send_quietly(client, "/quit")
        closed.wait(QUIT_TIMEOUT)
        return SessionEnd(signal.SIGINT, closed.is_set())
    return SessionEnd(None, closed.is_set())


# -- the terminal: GNU readline's callback interface ----------------------------------------------------


def input_rows(prompt_width: int, before_point: int, total: int, columns: int) -> tuple[int, int]:
    """Where the cursor is and how many screen rows the prompt and typed text fill, as readline draws them.

    *before_point* and *total* are display widths of the typed text up to the cursor and whole.
    Returns (the cursor's row within the input area, the rows it fills). Used only where
    readline lacks ``rl_clear_visible_line`` (before 7.0).
    """
    columns = max(1, columns)
    return (prompt_width + before_point) // columns, (prompt_width + total) // columns + 1


def _display_width(text: str) -> int:
    import unicodedata

    return sum(0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


class Readline:
    """GNU readline's alternate interface, through ctypes, on the library CPython's ``readline`` loaded.

    ``install(prompt)`` shows the prompt and puts the terminal in readline's
    mode; ``read_char()`` takes one keystroke when stdin is readable; finished
    lines (None for end of input) collect in :attr:`lines`. Only the thread
    that installed it may call any method, and never from inside a callback.
    Readline's own signal handlers stay off: the session handles signals.
    """

    def __init__(self, lib: Any, module: Any, ctypes: Any) -> None:
        self._lib = lib
        self._module = module  # the module that loaded (and initialised) the library stays imported
        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None)
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._libc.fflush.argtypes = [ctypes.c_void_p]
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        self._handler = handler_type(self._on_line)  # kept: readline holds a pointer to it
        lib.rl_callback_handler_install.argtypes = [ctypes.c_char_p, handler_type]
        lib.add_history.argtypes = [ctypes.c_char_p]
        lib.rl_callback_handler_install.restype = None
        for name in ("rl_callback_read_char", "rl_callback_handler_remove"):
            getattr(lib, name).restype = None
        self._clear_visible = getattr(lib, "rl_clear_visible_line", None)
        self.lines: list[bytes | None] = []
        self.installed = False
        self._prompt = b""

    @classmethod
    def load(cls) -> "Readline | None":
        """The GNU readline library behind CPython's ``readline`` module, or None (none, or libedit)."""
        try:
            import ctypes

            import readline
        except ImportError:
            return None
        if getattr(readline, "backend", "readline") != "readline" or "libedit" in (readline.__doc__ or ""):
            return None
        try:
            lib = ctypes.CDLL(getattr(readline, "__file__", None))
            for name in ("rl_callback_handler_install", "rl_callback_read_char", "rl_callback_handler_remove"):
                getattr(lib, name)
            for name in ("rl_forced_update_display", "rl_catch_signals", "rl_point", "rl_line_buffer"):
                getattr(lib, name)
        except (OSError, AttributeError):
            return None
        return cls(lib, readline, ctypes)

    def _on_line(self, pointer: int | None) -> None:
        # Called by readline inside read_char(): only note the line (an exception here would be lost).
        if pointer is None:
            self.lines.append(None)
            return
        line = self._ctypes.string_at(pointer)
        self._libc.free(pointer)
        if line.strip():  # here, before readline sets up the next line, so that Up finds it
            self._lib.add_history(line)
        self.lines.append(line)

    def _set_int(self, name: str, value: int) -> None:
        try:
            self._ctypes.c_int.in_dll(self._lib, name).value = value
        except ValueError:
            pass

    def install(self, prompt: str) -> None:
        """Show *prompt* and start reading a line (the terminal goes into readline's mode)."""
        self._set_int("rl_catch_signals", 0)
        self._set_int("rl_catch_sigwinch", 0)
        self._prompt = prompt.encode()
        self._lib.rl_callback_handler_install(self._prompt, self._handler)
        self.installed = True

    def read_char(self) -> None:
        self._lib.rl_callback_read_char()

    def clear(self, out: TextIO) -> None:
        """Erase every screen row of the prompt and the typed text; the cursor ends at the first one's start."""
        if self._clear_visible is not None:
            self._clear_visible()
            self._libc.fflush(None)
            return
        import shutil

        raw = self._ctypes.c_char_p.in_dll(self._lib, "rl_line_buffer").value or b""
        point = self._ctypes.c_int.in_dll(self._lib, "rl_point").value
        prompt = _display_width(self._prompt.decode())
        before = _display_width(raw[:point].decode("utf-8", "replace"))
        total = _display_width(raw.decode("utf-8", "replace"))
        row, _rows = input_rows(prompt, before, total, shutil.get_terminal_size().columns)
        out.write(f"\x1b[{row}A\r\x1b[J" if row else "\r\x1b[J")
        out.flush()

    def redraw(self) -> None:
        """Draw the prompt and the typed text anew from the cursor (at a line's start), cursor where it was."""
        self._lib.rl_forced_update_display()

    def resize(self) -> None:
        if hasattr(self._lib, "rl_resize_terminal"):
            self._lib.rl_resize_terminal()

    def suspend(self) -> None:
        """Give the terminal back as it was (for Ctrl-Z); resume() takes it again."""
        self._lib.rl_deprep_terminal()

    def resume(self) -> None:
        self._lib.rl_prep_terminal(1)
        self.redraw()

    def remove(self) -> None:
        """Stop reading: the terminal leaves readline's mode."""
        if self.installed:
            self._lib.rl_callback_handler_remove()
            self.installed = False


class TerminalSession:
    """A chat on a terminal: one thread edits and prints, a second only receives.

    The receiving thread queues the server's lines and wakes the main loop
    through a pipe; the main loop waits on stdin and that pipe, feeds
    keystrokes to readline and prints lines between keystrokes. Signal
    handlers only record the signal and wake the loop too.
    """

    #: What each stopping signal does: SIGINT says goodbye and waits for the server; the others leave at once.
    STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, client: LineClient, readline: Readline, stdin: TextIO, out: TextIO, welcome: Welcome) -> None:
        self.client = client
        self.readline = readline
        self.stdin = stdin
        self.out = out
        self.welcome = welcome
        self.encoding = getattr(stdin, "encoding", None) or "utf-8"
        self._events: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._output_ok = True

    # -- the receiving thread and signal handlers: record, then wake the loop --

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b".")
        except OSError:  # the pipe is full: the loop is awake already, or it was closed at the end
            pass

    def _receive(self) -> None:
        try:
            for line in self.client.lines():
                self._events.put(("line", line))
                self._wake()
        finally:
            self._events.put(("end", None))
            self._wake()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)
        self._wake()

    # -- the main thread --

    def _write(self, text: str) -> None:
        if not self._output_ok:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # a terminal that hung up
            self._output_ok = False

    def _show(self, lines: list[str]) -> None:
        """Print *lines* above the input, which readline then draws again as it was."""
        readline = self.readline
        if readline.installed and self._output_ok:
            self._try(lambda: readline.clear(self.out))
        self._write("".join("\r\x1b[K" + escape_controls(line) + "\n" for line in lines))
        if readline.installed and self._output_ok:
            self._try(readline.redraw)

    def _try(self, action: Callable[[], None]) -> None:
        try:
            action()
        except OSError:
            self._output_ok = False

    def _stop_reading(self) -> None:
        readline = self.readline
        if readline.installed:
            if self._output_ok:
                self._try(lambda: readline.clear(self.out))
            readline.remove()

    def run(self, name: str | None, room: str | None) -> SessionEnd:
        in_fd = self.stdin.fileno()
        import termios

        saved = termios.tcgetattr(in_fd)
        handled = [*self.STOPPING, signal.SIGWINCH, signal.SIGTSTP]
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        # A signal may land on the receiving thread: the interpreter then writes to this pipe, which
        # wakes the main thread's select(), so that it runs the handler at once.
        previous_wakeup = signal.set_wakeup_fd(self._wake_w)
        receiver = threading.Thread(target=self._receive, name="chat-receive", daemon=True)
        stopped_by: int | None = None
        server_closed = False
        try:
            receiver.start()
            if name:
                _send_quietly(self.client, f"/nick {name}")
            if room:
                _send_quietly(self.client, f"/join {room}")
            self.readline.install(PROMPT)
            deadline: float | None = None
            ended = False
            while not ended:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                watched = [self._wake_r] + ([in_fd] if self.readline.installed else [])
                ready = select.select(watched, [], [], timeout)[0]
                if not ready and deadline is not None:
                    break  # no close within QUIT_TIMEOUT
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                lines = []
                while True:
                    try:
                        kind, line = self._events.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "end":
                        ended = server_closed = True
                        break
                    assert line is not None
                    self.welcome.see(line)
                    lines.append(line)
                if lines:
                    self._show(lines)
                if ended:
                    break
                while self._signals:
                    signum = self._signals.pop(0)
                    if signum == signal.SIGWINCH:
                        if self.readline.installed:
                            self.readline.resize()
                    elif signum == signal.SIGTSTP:
                        self._suspend(in_fd, saved)
                    elif signum == signal.SIGINT and stopped_by is None:
                        stopped_by = signum
                        self._stop_reading()
                        _send_quietly(self.client, "/quit")
                        deadline = time.monotonic() + QUIT_TIMEOUT
                    else:  # SIGTERM, SIGHUP, or a second SIGINT: leave now
                        stopped_by = stopped_by or signum
                        if signum != signal.SIGINT:
                            _send_quietly(self.client, "/quit")
                        ended = True
                if ended:
                    break
                if in_fd in ready and self.readline.installed:
                    self.readline.read_char()
                    for raw in self.readline.lines:
                        if raw is None:  # Ctrl-D on an empty line: say goodbye, wait for the server
                            self._stop_reading()
                            _send_quietly(self.client, "/quit")
                            deadline = time.monotonic() + QUIT_TIMEOUT
                            break
                        _send_quietly(self.client, raw.decode(self.encoding, "replace"))
                    self.readline.lines.clear()
        finally:
            self._stop_reading()
            try:
                termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
            except (termios.error, OSError):
                pass
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return SessionEnd(stopped_by, server_closed)

    def _suspend(self, in_fd: int, saved: list[Any]) -> None:
        """Ctrl-Z: give the terminal back as it was, stop; on fg, take it again and redraw."""
        import termios

        reading = self.readline.installed
        if reading:
            self._try(lambda: self.readline.clear(self.out))
            self.readline.suspend()
        try:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        except (termios.error, OSError):
            pass
        os.kill(os.getpid(), signal.SIGSTOP)
        if reading:
            self.readline.resume()
