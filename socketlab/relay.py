"""``tcp-client``'s relay between a connected socket and stdin/stdout, like ``nc``.

:class:`StdioRelay` copies the input into the socket on a helper thread
(half-closing at its end) and the socket to the output on the calling
thread, until the server closes. What it adds to a plain copy, each a small
piece with no I/O of its own where it can be:

- :class:`RefusalWatch`: a socketlab server refuses a client with one line
  (``server is full ...``, ``too many connections ...``) and closes. The
  first bytes are held back while they could still be such a line; if the
  connection ends with exactly one, it is an error (:class:`ServerRefused`),
  not output;
- :class:`CrlfEncoder`: lines sent end in CRLF (``--crlf``, ncat's ``-C``);
- the output: bytes unchanged, escaped text on a terminal, or a hex dump
  whose offsets run on across chunks (``--hex``);
- :class:`IdleTimer`: the relay ends when nothing has moved either way for
  ``idle_timeout`` seconds (``-w``), as ``nc -w`` does.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
import time
from typing import Any, Callable

from socketlab.errors import AddressError, OutputError, SocketlabError
from socketlab.text import TerminalText, display_bytes, hexdump

#: How a socketlab server turns a client away: one of these lines, then the end of the connection
#: (tcp-server's and the chat's --max-clients and --max-per-ip, a cluster without its backend).
REFUSAL_LINE = re.compile(rb"(?:! )?(?:server (?:is )?full|too many connections|chat backend unavailable)[^\n]{0,200}\n")
_REFUSAL_STARTS = (b"server is full", b"server full", b"too many connections", b"chat backend unavailable")
#: Most bytes held back while they could still be a refusal line.
MAX_REFUSAL = 256
#: Once the server has ended its side, how long the input may stand still before the relay ends
#: anyway (a peer that only receives still reads what the input gives; a terminal may never give more).
LINGER = 0.5
#: ... and how long a send may take nothing (the peer not reading) before the relay gives up on it.
STUCK = 5.0
#: The most one send() or sendfile() hands the kernel at a time: progress is seen at this grain
#: (a peer reading 13 KB/s moves it within STUCK).
SLICE = 64 * 1024


class ServerRefused(SocketlabError):
    """The server turned this client away with a refusal line (the message says why)."""


class RefusalWatch:
    """Holds back a connection's first bytes while they could still be a refusal line.

    ``feed(data)`` returns the bytes to pass on now (nothing while undecided);
    ``finish()``, at the end of the connection, returns the bytes still held
    and the refusal's reason (None when it was not one). Sans-IO.
    """

    def __init__(self) -> None:
        self._held = b""
        self.deciding = True

    def feed(self, data: bytes) -> bytes:
        if not self.deciding:
            return data
        self._held += data
        if self._could_be_refusal():
            return b""
        self.deciding = False
        held, self._held = self._held, b""
        return held

    def finish(self) -> tuple[bytes, str | None]:
        held, self._held = self._held, b""
        if self.deciding and REFUSAL_LINE.fullmatch(held):
            return b"", display_bytes(held[:-1].removeprefix(b"! "))
        return held, None

    def _could_be_refusal(self) -> bool:
        held = self._held
        if len(held) > MAX_REFUSAL:
            return False
        line, newline, rest = held.partition(b"\n")
        if newline:
            return not rest and REFUSAL_LINE.fullmatch(held) is not None
        if line == b"!":
            return True
        text = line.removeprefix(b"! ")
        return any(start.startswith(text) or text.startswith(start) for start in _REFUSAL_STARTS)


class CrlfEncoder:
    """Ends every line in CRLF: a bare LF becomes CRLF, a CRLF stays one, across chunk boundaries. Sans-IO."""

    def __init__(self) -> None:
        self._after_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        head = b""
        if self._after_cr and data.startswith(b"\n"):  # the CRLF was split between two chunks
            head, data = b"\n", data[1:]
        self._after_cr = data.endswith(b"\r") if data else self._after_cr
        return head + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class IdleTimer:
    """Calls *on_idle* once no ``touch()`` has come for *seconds* (its own thread; ``stop()`` ends it)."""

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        self.seconds = seconds
        self.on_idle = on_idle
        self.expired = False
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-timer", daemon=True)

    def touch(self) -> None:
        """Something moved: the wait starts again."""
        self._last = time.monotonic()

    def start(self) -> None:
        self.touch()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(max(0.0, self._last + self.seconds - time.monotonic())):
            if time.monotonic() - self._last >= self.seconds:
                self.expired = True
                self.on_idle()
                return


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of *data* to *fd*; a closed pipe raises BrokenPipeError, other failures OutputError."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write output: {error.strerror}") from None


def write_to(output: Any, data: bytes | memoryview) -> None:
    """Write all of *data* to the binary file *output*, which may take only part of it at a time (unbuffered)."""
    view = memoryview(data)
    while view:
        written = output.write(view)
        view = view[len(view) if written is None else written :]


class TerminalWriter:
    """A binary output on a terminal: what is written goes out as escaped text (raw bytes could drive it:
    colours, a new title, a cleared screen). ``flush()`` ends a stream (an incomplete UTF-8 sequence shows)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._text = TerminalText()

    def write(self, data: bytes | memoryview) -> int:
        self._write(self._text.feed(bytes(data)).encode())
        return len(data)

    def flush(self) -> None:
        self._write(self._text.feed(b"", final=True).encode())

    def _write(self, text: bytes) -> None:
        """All of *text*; a failure is the OSError a file's write() raises (its callers handle that)."""
        view = memoryview(text)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        """The terminal stays open: it is not this writer's."""


class _Output:
    """Where received bytes go: unchanged, as escaped text on a terminal, or as a hex dump."""

    def __init__(self, fd: int, hex_dump: bool) -> None:
        self.fd = fd
        self.hex_dump = hex_dump
        self.offset = 0
        self.terminal = TerminalText() if not hex_dump and os.isatty(fd) else None

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self.hex_dump:
            write_all(self.fd, (hexdump(bytes(data), start=self.offset) + "\n").encode())
            self.offset += len(data)
        elif self.terminal is not None:
            write_all(self.fd, self.terminal.feed(bytes(data)).encode())
        else:
            write_all(self.fd, data)

    def finish(self) -> None:
        if self.terminal is not None:
            write_all(self.fd, self.terminal.feed(b"", final=True).encode())


class StdioRelay:
    """Relay between a connected socket and two file descriptors, like ``nc``.

    ``run()`` copies *in_fd* (after *prefix*) to the socket on a helper
    thread, half-closing the socket at its end, and the socket to *out_fd*
    on the calling thread (*buffer_size* bytes at most at a time), returning
    when the server has closed its side and the input is sent (or has stood
    still for LINGER seconds since: a terminal, a pipe with nothing to say):
    ``"closed"``, or ``"idle"`` when *idle_timeout* seconds passed with
    nothing sent or received. Input the server did not take (it closed, or
    stopped reading after it ended its side) is an error, as in ncat. Received bytes are copied unchanged, except to
    a terminal (control characters escaped) or with *hex_dump*; with *crlf*
    every line sent ends in CRLF.

    Raises ServerRefused when the server sent only a refusal line,
    AddressError when the connection fails; a closed output (``| head``)
    ends the relay quietly (BrokenPipeError is caught), OutputError when it
    cannot be written.
    """

    def __init__(
        self,
        sock: Any,
        address: str,
        in_fd: int | None,
        out_fd: int,
        prefix: bytes = b"",
        buffer_size: int = 256 * 1024,
        *,
        hex_dump: bool = False,
        crlf: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self.address = address
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.buffer_size = buffer_size
        self.crlf = CrlfEncoder() if crlf else None
        self.prefix = self.crlf.feed(prefix) if self.crlf is not None else prefix
        self.hex_dump = hex_dump
        self.idle = IdleTimer(idle_timeout, self._wake) if idle_timeout else None
        self._send_error: OSError | None = None
        #: Bytes handed to the socket so far; whether the sender is inside a send (else reading the input).
        self._sent = 0
        self._sending = False

    # -- the sending side (a helper thread) ---------------------------------

    def _send_side(self) -> None:
        try:
            if self.prefix:
                self.sock.sendall(self.prefix)
                self._touch()
            if self.in_fd is not None:
                self._copy_input()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as error:  # a reset is reported after the receive side has told what it saw
            if not (self.idle is not None and self.idle.expired):
                self._send_error = error

    def _copy_input(self) -> None:
        """Copy the input into the socket until its end.

        A regular file goes by sendfile() (no copy through user space) unless
        lines are rewritten (--crlf); anything else is read into one reused
        buffer -- measured faster than splice() from a pipe into a TCP socket
        on Linux.
        """
        assert self.in_fd is not None
        size = self.buffer_size
        if self.crlf is None and isinstance(self.sock, socket.socket) and stat.S_ISREG(os.fstat(self.in_fd).st_mode):
            self._sending = True
            while sent := os.sendfile(self.sock.fileno(), self.in_fd, None, min(size, SLICE)):
                self._sent += sent
                self._touch()
            self._sending = False
            return
        buffer = bytearray(size)
        view = memoryview(buffer)
        source = open(self.in_fd, "rb", buffering=0, closefd=False)
        while count := source.readinto(buffer):
            data = memoryview(self.crlf.feed(bytes(view[:count]))) if self.crlf is not None else view[:count]
            self._sending = True
            for start in range(0, len(data), SLICE):
                self.sock.sendall(data[start : start + SLICE])
                self._sent += min(SLICE, len(data) - start)
                self._touch()
            self._sending = False

    # -- the receiving side (the calling thread) ------------------------------

    def run(self) -> str:
        sender = threading.Thread(target=self._send_side, name="stdin-to-socket", daemon=True)
        if self.idle is not None:
            self.idle.start()
        sender.start()
        try:
            self._receive()
        except BrokenPipeError:
            return "closed"
        except ConnectionResetError:
            if not self._idled():
                raise AddressError(f"connection reset by {self.address}") from None
        except OSError as error:
            if not self._idled():
                raise AddressError(f"connection to {self.address} failed: {error.strerror}") from None
        else:
            self._finish_sending(sender)
        finally:
            if self.idle is not None:
                self.idle.stop()
        if self._idled():
            return "idle"
        failed = self._send_error
        if isinstance(failed, (BrokenPipeError, ConnectionResetError)):
            raise AddressError(f"connection reset by {self.address}: not all of the input was sent")
        if failed is not None:
            raise AddressError(f"cannot send to {self.address}: {failed.strerror}")
        if sender.is_alive() and self._sending:
            raise AddressError(f"{self.address} ended its side and stopped reading: not all of the input was sent")
        return "closed"

    def _finish_sending(self, sender: threading.Thread) -> None:
        """The server has ended its side: let the input go on while it moves (a peer that only receives
        reads it all), until it is sent, or stands still for LINGER seconds while the sender waits for
        input, or for STUCK seconds while it waits for the peer to take what it sends."""
        moved, since = self._sent, time.monotonic()
        while sender.is_alive() and not self._idled():
            now = time.monotonic()
            if self._sent != moved:
                moved, since = self._sent, now
            elif now - since >= (STUCK if self._sending else LINGER):
                return
            sender.join(0.05)

    def _receive(self) -> None:
        output = _Output(self.out_fd, self.hex_dump)
        watch = RefusalWatch()
        buffer = bytearray(self.buffer_size)
        view = memoryview(buffer)
        recv_into = self.sock.recv_into
        reset: ConnectionResetError | None = None
        try:
            while watch.deciding:  # the first bytes: could they be a refusal line?
                count = recv_into(view)
                if not count:
                    break
                self._touch()
                output.write(watch.feed(bytes(view[:count])))
            else:
                while count := recv_into(view):
                    self._touch()
                    output.write(view[:count])
        except ConnectionResetError as error:
            if not watch.deciding:
                raise
            reset = error  # a reset right after a refusal line is still a refusal
        held, refusal = watch.finish()
        if refusal is not None:
            raise ServerRefused(f"refused by {self.address}: {refusal}")
        output.write(held)
        output.finish()
        if reset is not None:
            raise reset

    # -- the idle timer -------------------------------------------------------

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.touch()

    def _idled(self) -> bool:
        return self.idle is not None and self.idle.expired

    def _wake(self) -> None:
        """Nothing moved for idle_timeout: end the connection, which wakes the blocked recv()."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
