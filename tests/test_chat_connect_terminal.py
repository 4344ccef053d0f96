"""`chat connect` on a terminal: the terminal left as it was on every way out, and the line being typed
kept whole while lines arrive (a pseudo-terminal for the first; tmux, a real terminal emulator, for
what the screen shows)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest

from support import CLI, TIMEOUT, CliServer, Peer, wait_until

pytestmark = pytest.mark.timeout(30)

WELCOMED = b"you are in lobby (type /help)"


class Terminal:
    """`socketlab chat connect ARGS` on a pseudo-terminal that is its controlling terminal, as in a shell.

    The test keeps the terminal's own end open, so its settings can be read after the client exits.
    """

    def __init__(self, *args: str, columns: int = 80, rows: int = 24) -> None:
        self.main_fd, self.tty_fd = os.openpty()
        fcntl.ioctl(self.tty_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.before = termios.tcgetattr(self.tty_fd)
        self.seen = b""
        self.proc = subprocess.Popen(
            CLI + ["chat", "connect", *args],
            stdin=self.tty_fd,
            stdout=self.tty_fd,
            stderr=self.tty_fd,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env={**os.environ, "TERM": "xterm", "INPUTRC": os.devnull},
        )

    def read_until(self, marker: bytes) -> bytes:
        """What the client wrote up to and including the first *marker* not read yet."""
        deadline = time.monotonic() + TIMEOUT
        start = len(self.seen) - len(self.unread)
        while marker not in self.seen[start:]:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.seen[start:]!r}"
            if select.select([self.main_fd], [], [], 0.1)[0]:
                self.seen += os.read(self.main_fd, 65536)
        end = self.seen.index(marker, start) + len(marker)
        self.unread = self.seen[end:]
        return self.seen[start:end]

    unread = b""

    def type(self, keys: bytes) -> None:
        os.write(self.main_fd, keys)

    def wait(self) -> int:
        """The client's exit status, once it has exited; what it wrote meanwhile is read too."""
        deadline = time.monotonic() + TIMEOUT
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; wrote {self.seen[-300:]!r}"
            if select.select([self.main_fd], [], [], 0.05)[0]:
                self.seen += os.read(self.main_fd, 65536)
        return self.proc.returncode

    def settings(self) -> list[Any]:
        return termios.tcgetattr(self.tty_fd)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        os.close(self.main_fd)
        os.close(self.tty_fd)


@pytest.fixture
def server() -> Iterator[CliServer]:
    with CliServer("chat", "serve", "--port", "0") as running:
        yield running


def typing_at_the_prompt(server: CliServer) -> Terminal:
    """A client that was welcomed and is halfway through typing a line (readline holds the terminal)."""
    terminal = Terminal("--port", str(server.port))
    terminal.read_until(WELCOMED)
    terminal.type(b"half typed")
    terminal.read_until(b"half typed")
    return terminal


def describe_modes(settings: list[Any]) -> str:
    """The flags `stty -a` shows broken, for a readable failure."""
    iflag, _oflag, _cflag, lflag, _ispeed, _ospeed, chars = settings
    flags = [
        ("icanon", lflag & termios.ICANON),
        ("echo", lflag & termios.ECHO),
        ("icrnl", iflag & termios.ICRNL),
        ("lnext", chars[termios.VLNEXT] != b"\x00"),
        ("discard", chars[termios.VDISCARD] != b"\x00"),
    ]
    return " ".join(name if on else f"-{name}" for name, on in flags)


EXITS: dict[str, tuple[Callable[[Terminal, CliServer], None], int]] = {
    "/quit": (lambda terminal, server: terminal.type(b"\x15/quit\r"), 0),
    "end of input (Ctrl-D)": (lambda terminal, server: terminal.type(b"\x15\x04"), 0),
    "Ctrl-C": (lambda terminal, server: terminal.type(b"\x03"), 128 + signal.SIGINT),
    "SIGTERM": (lambda terminal, server: terminal.proc.send_signal(signal.SIGTERM), 128 + signal.SIGTERM),
    "SIGHUP": (lambda terminal, server: terminal.proc.send_signal(signal.SIGHUP), 128 + signal.SIGHUP),
    "server shutdown": (lambda terminal, server: server.stop(), 0),
}


@pytest.mark.parametrize("way_out", list(EXITS))
def test_the_terminal_is_left_as_it_was(server: CliServer, way_out: str) -> None:
    """Every way out (/quit, Ctrl-D, Ctrl-C, SIGTERM, SIGHUP, the server gone) restores the terminal's settings."""
    leave, status = EXITS[way_out]
    terminal = typing_at_the_prompt(server)
    try:
        wait_until(lambda: terminal.settings() != terminal.before, what="readline taking the terminal")
        leave(terminal, server)
        assert terminal.wait() == status, terminal.seen[-300:]
        after = terminal.settings()
        assert after == terminal.before, f"{describe_modes(after)} (was {describe_modes(terminal.before)})"
    finally:
        terminal.close()


def test_ctrl_c_says_goodbye_to_the_server(server: CliServer) -> None:
    """Ctrl-C sends /quit: the others see a quit, not a dropped connection, and the terminal gets no traceback."""
    other = Peer(server.port)
    other.line()
    terminal = typing_at_the_prompt(server)
    try:
        assert other.line() == "* user2 joined lobby"
        terminal.type(b"\x03")
        assert terminal.wait() == 130
        assert other.line() == "* user2 left lobby"
        assert b"Traceback" not in terminal.seen and b"Aborted" not in terminal.seen
        assert terminal.seen.rstrip().endswith(b"Disconnected from Server"), terminal.seen[-200:]
    finally:
        terminal.close()
        other.close()


def test_a_line_typed_on_the_terminal_is_sent_and_kept_in_history(server: CliServer) -> None:
    """Enter sends the line; Up brings it back (readline's history), edited lines are sent as edited."""
    other = Peer(server.port)
    other.line()
    terminal = Terminal("--port", str(server.port))
    try:
        terminal.read_until(WELCOMED)
        assert other.line() == "* user2 joined lobby"
        terminal.type("first 한국\r".encode())
        assert other.line() == "<user2> first 한국"
        terminal.type(b"\x1b[A\x1b[D\x1b[D!\r")  # Up, Left, Left, "!", Enter
        assert other.line() == "<user2> first !한국"
    finally:
        terminal.close()
        other.close()


# -- what the screen shows: tmux -------------------------------------------------------------------------


class Screen:
    """`chat connect` in a tmux pane of a given size: keys in, the screen's rows out."""

    def __init__(self, port: int, columns: int = 40, rows: int = 16) -> None:
        self.folder = tempfile.mkdtemp(prefix="socketlab-tmux-", dir="/tmp")  # a socket path must be short
        self.tmux = [shutil.which("tmux") or "tmux", "-S", os.path.join(self.folder, "tmux"), "-f", os.devnull]
        command = " ".join(CLI + ["chat", "connect", "--port", str(port)])
        env = {**os.environ, "INPUTRC": os.devnull}
        subprocess.run(
            self.tmux + ["new-session", "-d", "-x", str(columns), "-y", str(rows), "-s", "chat", command],
            check=True,
            timeout=TIMEOUT,
            env=env,
        )

    def keys(self, *keys: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", "chat", *keys], check=True, timeout=TIMEOUT)

    def literal(self, text: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", "chat", "-l", text], check=True, timeout=TIMEOUT)

    def rows(self) -> list[str]:
        shown = subprocess.run(self.tmux + ["capture-pane", "-p", "-t", "chat"], capture_output=True, timeout=TIMEOUT)
        return shown.stdout.decode().rstrip("\n").split("\n")

    def wait_for(self, check: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            rows = self.rows()
            if check(rows):
                return rows
            assert time.monotonic() < deadline, f"no {what} on the screen:\n" + "\n".join(rows)
            time.sleep(0.02)  # polling the screen, not a synchronisation by time

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True, timeout=TIMEOUT)
        shutil.rmtree(self.folder, ignore_errors=True)


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux on this machine (apt-get install tmux)")


@pytest.fixture
def screen(server: CliServer) -> Iterator[Screen]:
    shown = Screen(server.port)
    try:
        yield shown
    finally:
        shown.close()


def prompt_rows(rows: list[str]) -> list[str]:
    return [row for row in rows if row.startswith(">")]


@needs_tmux
def test_start_up_shows_one_prompt(screen: Screen) -> None:
    """The welcome arrives as the prompt is drawn: one prompt below it, never '> >'."""
    rows = screen.wait_for(lambda rows: any("you are in lobby" in row for row in rows) and prompt_rows(rows), "prompt")
    assert prompt_rows(rows) == [">"], rows
    assert not any("> >" in row for row in rows)


@needs_tmux
def test_a_line_arriving_with_the_cursor_moved_left(server: CliServer, screen: Screen) -> None:
    """The screen shows what will be sent: 'hello Xworld', not 'hello worldXworld'."""
    screen.wait_for(prompt_rows, "prompt")
    other = Peer(server.port)
    try:
        other.line()
        screen.literal("hello world")
        screen.keys(*["Left"] * 5)
        screen.wait_for(lambda rows: "> hello world" in rows, "typed text")
        other.send(b"incoming\n")
        screen.wait_for(lambda rows: "<user2> incoming" in rows, "incoming line")
        screen.literal("X")
        rows = screen.wait_for(lambda rows: "> hello Xworld" in rows, "edited line")
        assert not any("worldXworld" in row for row in rows), rows
        assert prompt_rows(rows) == ["> hello Xworld"], rows
        screen.keys("Enter")
        assert other.until("<user1> hello Xworld")
    finally:
        other.close()


@needs_tmux
def test_a_wrapped_input_line_leaves_no_stale_rows(server: CliServer, screen: Screen) -> None:
    """A typed line wider than the terminal (two rows) stays one copy, below the lines that arrive."""
    screen.wait_for(prompt_rows, "prompt")
    other = Peer(server.port)
    try:
        other.line()
        typed = "".join(f"{n}" * 10 for n in range(6))  # 60 characters: two rows of 40 with the prompt
        screen.literal(typed)
        screen.keys(*["Left"] * 25)  # the cursor on the first row
        screen.wait_for(lambda rows: f"> {typed[:38]}" in rows, "typed text")
        for n in range(3):
            other.send(f"line {n}\n".encode())
        first, second = f"> {typed[:38]}", typed[38:]
        # The typed line is drawn again just after the last incoming line: wait for both, not the first alone.
        rows = screen.wait_for(lambda rows: "<user2> line 2" in rows and first in rows, "incoming lines, the typed line redrawn")
        assert rows.count(first) == 1 and rows.count(second) == 1, rows
        at = rows.index(first)
        assert rows[at + 1] == second and rows[at - 1] == "<user2> line 2", rows
        assert [row for row in rows if row.startswith("<user2>")] == [f"<user2> line {n}" for n in range(3)]
        screen.literal("Y")
        screen.keys("Enter")
        cut = len(typed) - 25
        assert other.until(f"<user1> {typed[:cut]}Y{typed[cut:]}")
    finally:
        other.close()


def test_help_stays_fast() -> None:
    """`chat connect --help` imports neither readline, websockets nor the chat client."""
    probe = (
        "import sys, runpy; sys.argv = ['socketlab', 'chat', 'connect', '--help']\n"
        "try:\n    runpy.run_module('socketlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('readline', 'websockets', 'socketlab.chat.client', 'ctypes') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=TIMEOUT)
    assert re.search(rb"HEAVY \[\]", result.stdout), result.stdout[-300:] + result.stderr[-300:]
