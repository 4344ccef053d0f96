"""BoundedLogHandler: logging never blocks, drops are counted and told once, close() is bounded."""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator

import pytest

from socketlab.logqueue import BoundedLogHandler
from support import TIMEOUT, LineReader, wait_until

#: Emitting 100k records into a blocked output must take less than this (it takes well under 1 s).
EMIT_BOUND = TIMEOUT / 2


def fill(fd: int) -> int:
    """Write to the pipe *fd* until the kernel takes no more; return the bytes written."""
    os.set_blocking(fd, False)
    written = 0
    try:
        for size in (65536, 4096, 1):
            while True:
                written += os.write(fd, b"f" * size)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return written


class PipeReader:
    """Reads a pipe to its end on a thread, from start() on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump, daemon=True)

    def start(self) -> "PipeReader":
        self.thread.start()
        return self

    def _pump(self) -> None:
        while chunk := os.read(self.fd, 65536):
            with self._lock:
                self.data += chunk

    def lines(self, skip: int = 0) -> list[str]:
        """The complete lines read so far, after the first *skip* bytes."""
        with self._lock:
            text = bytes(self.data[skip:]).decode()
        return text.split("\n")[:-1]

    def lines_until(self, last: str, skip: int = 0) -> list[str]:
        """Wait for a line equal to *last*; return the lines read by then."""
        wait_until(lambda: last in self.lines(skip), what=repr(last))
        return self.lines(skip)


class Pipe:
    """An os.pipe() and what the tests did to it, closed in the right order at the end."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()
        self.filled = 0
        self.reader: PipeReader | None = None

    def fill(self) -> "Pipe":
        self.filled = fill(self.write)
        return self

    def start_reading(self) -> PipeReader:
        self.reader = PipeReader(self.read).start()
        return self.reader

    def close(self) -> None:
        os.close(self.write)  # the reader sees EOF once every handler has closed its copy
        if self.reader is not None:
            self.reader.thread.join(TIMEOUT)
        os.close(self.read)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def handlers() -> Iterator[list[BoundedLogHandler]]:
    """Handlers made by a test; closed (promptly, whatever their output does) at its end."""
    made: list[BoundedLogHandler] = []
    yield made
    for handler in made:
        handler.close(timeout=0)
        handler.writer.join(TIMEOUT)


def logger_for(handler: BoundedLogHandler) -> logging.Logger:
    """A logger of its own (not in logging's registry) that sends INFO and above to *handler*."""
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.Logger(f"test.logqueue.{id(handler)}", logging.INFO)
    log.addHandler(handler)
    return log


def drop_line(count: int) -> str:
    return f"socketlab: {count} log {'line' if count == 1 else 'lines'} dropped (output too slow)"


def assert_in_order(lines: list[str], prefix: str, count: int) -> None:
    """*lines* are *count* of the lines "PREFIX N ...", N rising: some dropped, none reordered or repeated."""
    numbers = [int(line.split()[1]) for line in lines]
    assert all(line.startswith(prefix + " ") for line in lines)
    assert len(numbers) == count
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 0  # the first line always gets through


def test_logging_into_a_blocked_pipe_returns_fast_and_counts_drops(pipe: Pipe, handlers: list[BoundedLogHandler]) -> None:
    """100k records into a full pipe nobody reads: bounded time, no call waits, the excess is counted."""
    pipe.fill()
    handler = BoundedLogHandler(pipe.write, max_lines=1000)
    handlers.append(handler)
    log = logger_for(handler)
    slowest = 0.0
    start = time.monotonic()
    for i in range(100_000):
        before = time.monotonic()
        log.info("line %d", i)
        slowest = max(slowest, time.monotonic() - before)
    elapsed = time.monotonic() - start
    assert elapsed < EMIT_BOUND, f"100k records took {elapsed:.2f} s"
    assert slowest < 1.0, f"one record took {slowest:.2f} s"
    # At most the queue and the one batch the writer holds got through.
    assert 100_000 - 1000 - handler.write_size <= handler.dropped < 100_000
    assert not handler.drain(0)


def test_lines_arrive_in_order_then_one_drop_line(pipe: Pipe, handlers: list[BoundedLogHandler]) -> None:
    """Once the reader drains the pipe: the kept lines in order, then the drop count exactly once."""
    pipe.fill()
    handler = BoundedLogHandler(pipe.write, max_lines=100)
    handlers.append(handler)
    log = logger_for(handler)
    for i in range(5000):
        log.info("line %d", i)
    dropped = handler.dropped
    kept = 5000 - dropped
    assert 100 <= kept < 5000
    reader = pipe.start_reading()
    assert handler.drain(TIMEOUT)
    lines = reader.lines_until(drop_line(dropped), pipe.filled)
    assert lines[-1] == drop_line(dropped)
    assert_in_order(lines[:-1], "line", kept)
    for i in range(3):  # the output keeps up again: no more drop lines
        log.info("after %d", i)
    assert handler.drain(TIMEOUT)
    wait_until(lambda: len(reader.lines(pipe.filled)) == kept + 4, what="the later lines")
    assert reader.lines(pipe.filled)[kept:] == [drop_line(dropped), "after 0", "after 1", "after 2"]
    assert handler.dropped == dropped


def test_a_single_dropped_line_is_told_in_the_singular(pipe: Pipe, handlers: list[BoundedLogHandler]) -> None:
    """'1 log line dropped', not '1 log lines'."""
    pipe.fill()
    handler = BoundedLogHandler(pipe.write, max_lines=1)
    handlers.append(handler)
    log = logger_for(handler)
    i = 0
    while not handler.dropped:  # the writer takes the first lines, the queue holds one, the next is dropped
        log.info("line %d", i)
        i += 1
    assert handler.dropped == 1
    reader = pipe.start_reading()
    assert handler.drain(TIMEOUT)
    assert reader.lines_until(drop_line(1), pipe.filled) == [f"line {n}" for n in range(i - 1)] + [drop_line(1)]


def test_close_returns_within_its_timeout_while_the_pipe_is_blocked(pipe: Pipe) -> None:
    """close(0.3) on a full pipe nobody reads returns in about 0.3 s, and its writer gives up."""
    pipe.fill()
    handler = BoundedLogHandler(pipe.write)
    log = logger_for(handler)
    for i in range(1000):
        log.info("line %d", i)
    start = time.monotonic()
    handler.close(timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 0.8, f"close(0.3) took {elapsed:.2f} s"
    handler.writer.join(TIMEOUT)  # it was waiting in poll(), not stuck in write()
    assert not handler.writer.is_alive()
    start = time.monotonic()
    handler.close()  # again, as logging.shutdown() does at exit: at once
    log.info("ignored after close")
    assert time.monotonic() - start < 0.1


def test_close_writes_what_is_waiting_when_the_output_takes_it(handlers: list[BoundedLogHandler]) -> None:
    """close() on a working output: every line written, later records ignored."""
    out = io.StringIO()
    handler = BoundedLogHandler(out)
    log = logger_for(handler)
    for i in range(2000):
        log.info("line %d", i)
    handler.close()
    assert not handler.writer.is_alive()
    log.info("after close")
    assert out.getvalue().splitlines() == [f"line {i}" for i in range(2000)]
    assert handler.dropped == 0


def test_lines_are_written_as_they_come(pipe: Pipe, handlers: list[BoundedLogHandler]) -> None:
    """With a reader, each line reaches the pipe without close() or flush()."""
    reader = pipe.start_reading()
    handler = BoundedLogHandler(pipe.write)
    handlers.append(handler)
    log = logger_for(handler)
    log.info("Server is listening on 127.0.0.1:%d", 3000)
    wait_until(lambda: reader.lines() == ["Server is listening on 127.0.0.1:3000"], what="the first line")
    log.info("caf\udce9 \u00e9")  # an unencodable surrogate is escaped, not an error
    wait_until(lambda: len(reader.lines()) == 2, what="the second line")
    assert reader.lines()[1] == "caf\\udce9 \u00e9"


def test_the_character_limit_drops_big_lines_while_others_wait(pipe: Pipe, handlers: list[BoundedLogHandler]) -> None:
    """max_chars bounds what waits; a line bigger than it still goes when nothing else waits."""
    pipe.fill()
    handler = BoundedLogHandler(pipe.write, max_chars=100)
    handlers.append(handler)
    log = logger_for(handler)
    big = "x" * 500
    for i in range(50):
        log.info("%d %s", i, big)
    # The writer holds a batch of a few (at most write_size characters), one waits, the rest are dropped.
    assert handler.dropped >= 50 - (handler.write_size // 500 + 2)
    reader = pipe.start_reading()
    assert handler.drain(TIMEOUT)
    lines = reader.lines_until(drop_line(handler.dropped), pipe.filled)
    assert lines[-1] == drop_line(handler.dropped)
    assert_in_order(["line " + line for line in lines[:-1]], "line", 50 - handler.dropped)
    assert all(line.endswith(" " + big) for line in lines[:-1])


def test_a_closed_pipe_makes_it_quiet_without_errors(
    pipe: Pipe, handlers: list[BoundedLogHandler], capsys: pytest.CaptureFixture[str]
) -> None:
    """EPIPE (the reader went away): no exception, nothing on stderr, later records ignored."""
    os.close(pipe.read)
    pipe.read = os.open(os.devnull, os.O_RDONLY)  # so the fixture has something to close
    handler = BoundedLogHandler(pipe.write)
    handlers.append(handler)
    log = logger_for(handler)
    for i in range(100):
        log.info("line %d", i)
    assert handler.drain(TIMEOUT)  # nothing left that could block
    handler.writer.join(TIMEOUT)
    assert not handler.writer.is_alive()
    log.info("still serving")
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_said_once_on_stderr(handlers: list[BoundedLogHandler], capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC: one line on stderr, however many records follow; whoever logs sees no error."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        handler = BoundedLogHandler(fd)
        handlers.append(handler)
        log = logger_for(handler)
        for i in range(100):
            log.info("line %d", i)
        assert handler.drain(TIMEOUT)
        for i in range(100):
            log.info("more %d", i)
        handler.writer.join(TIMEOUT)
    finally:
        os.close(fd)
    assert capsys.readouterr().err.splitlines() == [
        f"socketlab: cannot write the log to file descriptor {fd} (No space left on device); going on without it"
    ]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_on_output_error_is_called_once_with_the_error(handlers: list[BoundedLogHandler]) -> None:
    """A caller's on_output_error replaces the stderr line and is called once."""
    calls: list[tuple[int | None, str]] = []
    with open("/dev/full", "w") as full:
        fd = full.fileno()
        handler = BoundedLogHandler(full, on_output_error=lambda error, name: calls.append((error.errno, name)))
        handlers.append(handler)
        log = logger_for(handler)
        for i in range(10):
            log.info("line %d", i)
        assert handler.drain(TIMEOUT)
        log.info("ignored")
        handler.writer.join(TIMEOUT)
    assert calls == [(errno.ENOSPC, f"file descriptor {fd}")]


# -- end to end: a process whose stdout nobody reads ---------------------------

FLOOD_SCRIPT = textwrap.dedent(
    """
    import logging, signal, sys, threading, time
    from socketlab.logqueue import BoundedLogHandler

    handler = BoundedLogHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("socketlab")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    done = threading.Event()

    def flood():
        for i in range(200_000):
            log.info("line %d %s", i, "x" * 60)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    slowest = 0.0
    while not done.wait(0.001):  # the main thread logs too, and never waits for the output
        start = time.monotonic()
        log.info("main thread alive")
        slowest = max(slowest, time.monotonic() - start)
    print(f"flooded dropped={handler.dropped} slowest={slowest:.3f}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    print("stopping", file=sys.stderr, flush=True)
    # No explicit close(): logging.shutdown() closes the handler at exit, within close_timeout.
    """
)

SERVER_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from socketlab.logqueue import BoundedLogHandler
    from socketlab.serving import run_until_signal
    from socketlab.tcp import WelcomeServer

    handler = BoundedLogHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("socketlab")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    server = WelcomeServer(("127.0.0.1", 0), max_clients=1)
    print(f"port {server.server_address[1]}", file=sys.stderr, flush=True)
    with server:
        run_until_signal(server)
    print(f"stopped dropped={handler.dropped}", file=sys.stderr, flush=True)
    """
)


def start_script(script: str) -> tuple[subprocess.Popen[bytes], LineReader]:
    """Run *script* with stdout a pipe this test never reads; read its stderr lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc, LineReader(proc.stderr)


def stop_script(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM *proc*; return the seconds until it exited (status 0)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    return time.monotonic() - start


def end_script(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def test_a_process_whose_stdout_nobody_reads_stays_responsive_and_stops_within_a_second() -> None:
    """200k lines into an unread stdout pipe: no log call waits, SIGTERM ends the process within 1 s."""
    proc, err = start_script(FLOOD_SCRIPT)
    try:
        match = err.wait_for(r"^flooded dropped=(\d+) slowest=([\d.]+)$")
        assert int(match.group(1)) > 100_000  # most of 200k lines could not be written
        assert float(match.group(2)) < 0.5
        elapsed = stop_script(proc)
        assert elapsed < 1.0, f"exit took {elapsed:.2f} s after SIGTERM"
        assert err.rest() == ["stopping"]
    finally:
        end_script(proc)


def test_a_server_whose_stdout_nobody_reads_keeps_accepting_and_stops_within_a_second() -> None:
    """The bug: a flood of log lines into an unread pipe; the server still refuses (and logs) a client, then stops on SIGTERM."""
    proc, err = start_script(SERVER_SCRIPT)
    try:
        port = int(err.wait_for(r"^port (\d+)$").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as held:
            # Every chunk the server reads is logged: 8 MB of log into a 64 KiB pipe nobody reads.
            held.sendall(b"y" * (8 * 1024 * 1024))
            for _ in range(50):  # each refusal is logged by the accepting thread
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as refused:
                    refused.settimeout(TIMEOUT)
                    assert refused.recv(100) == b"server is full, try again later\n"
        elapsed = stop_script(proc)
        assert elapsed < 1.0, f"exit took {elapsed:.2f} s after SIGTERM"
        assert int(err.wait_for(r"^stopped dropped=(\d+)$").group(1)) > 0
        assert err.rest() == []
    finally:
        end_script(proc)
