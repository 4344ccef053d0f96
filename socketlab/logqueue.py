"""A log handler that never blocks the thread that logs: a bounded queue and a writer thread.

A server's log usually goes to stdout. ``logging.StreamHandler`` writes from
the thread that logs, so when stdout is a pipe nobody reads (or a stopped
terminal, a stalled disk), the first thread to log blocks in ``write()`` and
every other thread queues up behind the handler's lock: the accepting thread
stops accepting, and shutdown waits for it forever. :class:`BoundedLogHandler`
takes the output off the serving threads:

- ``emit()`` formats the record and hands the line to a bounded queue without
  waiting; when the queue is full (``max_lines`` lines or ``max_chars``
  characters), the line is dropped and counted. A dropped record costs no
  formatting.
- One daemon writer thread takes lines in order and writes them to the output.
  When lines were dropped, the first time the output has taken every waiting
  line the writer adds one line saying how many (``drop_message``): one line
  per episode of a slow output, after the lines written before it.
- The writer waits for the output with ``poll()`` before every ``write()`` of at
  most ``write_size`` bytes (``PIPE_BUF``, cut at a newline when one fits), so on
  a full pipe it waits where ``close()`` can tell it to give up, and a write
  that the kernel said it could take does not block in practice. It never
  writes through the stream object (``sys.stdout``) but through its own
  duplicate of the descriptor beneath, so a writer stuck in the kernel holds
  no lock the interpreter needs at exit (a ``BufferedWriter`` whose lock a
  daemon thread holds aborts the interpreter at exit).
- ``close(timeout)`` writes what the output takes within *timeout* (default
  ``close_timeout``) and returns regardless; the writer is a daemon thread and
  cannot keep the process alive. ``logging.shutdown()`` at exit calls
  ``close()`` too (a second call returns at once); ``flush()`` does not wait.
- When the output fails (``EPIPE``: the reader went away; ``ENOSPC``: a full
  disk; any other ``OSError``), the handler goes quiet: ``on_output_error``
  is called once (by default one line on stderr, nothing for ``EPIPE``) and
  later records are ignored. Whoever logs never sees the error.

What this cannot do: make the interpreter's own flush of ``sys.stdout`` at exit
return when something else left unwritten data in its buffer and the pipe is
full. A caller that may have done so points stdout elsewhere when
``drain()`` or ``close()`` times out (see ``socketlab.cli``).

For the caller: ``BoundedLogHandler(output)``, ``drain(timeout)``,
``close(timeout)``, ``dropped``, ``writer``.

Class variables that may be overridden: ``max_lines``, ``max_chars``,
``write_size``, ``poll_interval``, ``close_timeout``, ``drop_message``,
``terminator``.
"""

from __future__ import annotations

import codecs
import errno
import logging
import os
import queue
import select
import sys
import threading
import time
from typing import Callable, TextIO

__all__ = ["BoundedLogHandler", "report_output_error"]

#: What the writer is told when the output fails: the error, and the output's name.
OutputErrorCallback = Callable[[OSError, str], None]


def report_output_error(error: OSError, output_name: str) -> None:
    """Say once on stderr that the log cannot be written -- nothing for a closed pipe.

    The default ``on_output_error``; the wording is the CLI's own.
    """
    if error.errno == errno.EPIPE:  # `| head` went away: that is what the user asked for
        return
    reason = error.strerror or str(error)
    line = f"socketlab: cannot write the log to {output_name} ({reason}); going on without it\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no stderr either: nobody to tell
        pass


class BoundedLogHandler(logging.Handler):
    """Log lines to *output* from a writer thread; never block the caller of ``emit()``.

    *output* is a file descriptor or a text stream (default ``sys.stdout``).
    A stream with a descriptor is written through a duplicate of that
    descriptor, in *encoding* (the stream's, else UTF-8; unencodable characters
    are backslash-escaped); a stream without one (``io.StringIO``) is written
    with ``write()`` and ``flush()`` -- only use such a stream where writing
    cannot block. Anything else written to the same stream through its Python
    buffer may come out of order with the log.

    Raises ``ValueError`` for a limit below 1, ``LookupError`` for an unknown
    *encoding*, and ``OSError`` if the descriptor cannot be duplicated (too
    many open files).
    """

    #: Lines waiting for the output; more are dropped and counted.
    max_lines: int = 10_000
    #: Characters waiting for the output (about bytes for ASCII); a line that
    #: would exceed this is dropped, unless nothing else is waiting.
    max_chars: int = 4 * 1024 * 1024
    #: Most bytes per write(): PIPE_BUF, so a write the output said it could take
    #: does not block, and lines are not torn by other writers to the same pipe.
    write_size: int = getattr(select, "PIPE_BUF", 512)
    #: Seconds between the waiting writer's checks for close().
    poll_interval: float = 0.05
    #: How long close() waits for the output by default.
    close_timeout: float = 0.5
    #: The line written once the writer has caught up after dropping lines.
    drop_message: str = "socketlab: {count} log {lines} dropped (output too slow)"
    #: Appended to every formatted record.
    terminator: str = "\n"

    def __init__(
        self,
        output: int | TextIO | None = None,
        *,
        max_lines: int | None = None,
        max_chars: int | None = None,
        encoding: str | None = None,
        on_output_error: OutputErrorCallback | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        if max_lines is not None:
            self.max_lines = max_lines
        if max_chars is not None:
            self.max_chars = max_chars
        if self.max_lines < 1 or self.max_chars < 1:
            raise ValueError("max_lines and max_chars must be positive")
        self.on_output_error = on_output_error or report_output_error
        #: Records dropped because the queue was full, since the handler was made.
        self.dropped = 0
        self._reported = 0  # dropped records the writer has told the output about
        self._accepted = 0  # lines put in the queue
        self._done = 0  # lines written (or given up on when the output failed)
        self._queued_chars = 0
        self._queue: queue.Queue[str | None] = queue.Queue(self.max_lines)
        self._count_lock = threading.Lock()  # dropped, _accepted, _queued_chars; never held while blocking
        self._progress = threading.Condition()  # _done, _reported; notified by the writer
        self._quiet = False  # the output failed: ignore records
        self._closing = False
        self._stop = threading.Event()  # the writer gives up on what it holds
        self._finished = False
        self._fd: int | None = None
        self._stream: TextIO | None = None
        if output is None:
            output = sys.stdout
        self.output_name, self.encoding = _describe(output, encoding)
        codecs.lookup(self.encoding)  # fail here, not in the writer thread
        if isinstance(output, int):
            self._fd = os.dup(output)
        elif output is None:  # no stdout at all (fd 1 was closed at start)
            self._quiet = True
        else:
            try:
                fd = output.fileno()
            except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
                self._stream = output
            else:
                self._fd = os.dup(fd)
        #: The daemon thread that writes to the output.
        self.writer = threading.Thread(target=self._run, name="socketlab-log-writer", daemon=True)
        if self._quiet:
            self._finished = True
        else:
            self.writer.start()

    # -- logging.Handler ----------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue *record* as one line; drop and count it when the queue is full. Never blocks."""
        if self._quiet or self._closing:
            return
        if self._queue.full():  # drop before paying for formatting
            self._drop()
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self._count_lock:
            if self._queued_chars and self._queued_chars + len(line) > self.max_chars:
                self.dropped += 1
                return
            try:
                self._queue.put_nowait(line)
            except queue.Full:
                self.dropped += 1
                return
            self._queued_chars += len(line)
            self._accepted += 1

    def flush(self) -> None:
        """Nothing to do: the writer writes as soon as the output takes lines.

        (``logging.shutdown()`` calls this at exit; use :meth:`drain` to wait.)
        """

    def close(self, timeout: float | None = None) -> None:
        """Write what the output takes within *timeout* seconds, then stop the writer.

        Returns within *timeout* (default ``close_timeout``) whatever the output
        does; a writer still waiting for the output is told to give up, and a
        writer stuck inside ``write()`` is left behind as a daemon thread.
        Records emitted after this are ignored. A second call returns at once.
        """
        if not self._closing:
            deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
            self.drain(max(0.0, deadline - time.monotonic()))
            self._closing = True
            self._stop.set()
            try:
                self._queue.put_nowait(None)  # wakes a writer waiting for lines
            except queue.Full:  # then it is waiting for the output and will see _stop
                pass
            if self.writer.is_alive():
                self.writer.join(max(0.0, deadline - time.monotonic()))
        super().close()

    # -- for the caller -----------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until every line emitted so far is written.

        That includes the line telling of records dropped so far. Returns True
        when they are written, or when the output has failed (nothing is left
        that could block); False when the time ran out or the handler was
        closed first.
        """
        with self._count_lock:
            lines, drops = self._accepted, self.dropped

        def written() -> bool:
            return self._quiet or (self._done >= lines and self._reported >= drops)

        with self._progress:
            self._progress.wait_for(lambda: written() or self._finished, timeout)
            return written()

    # -- the writer thread --------------------------------------------------

    def _drop(self) -> None:
        with self._count_lock:
            self.dropped += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                first = self._queue.get()
                if first is None:
                    return
                lines = [first]
                size = len(first)
                while size < self.write_size:
                    try:
                        line = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if line is None:
                        self._stop.set()
                        break
                    lines.append(line)
                    size += len(line)
                with self._count_lock:
                    self._queued_chars -= size
                if not self._write("".join(lines)):
                    return
                with self._progress:
                    self._done += len(lines)
                    self._progress.notify_all()
                if not self._report_drops():
                    return
        finally:
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
            with self._progress:
                self._finished = True
                self._progress.notify_all()

    def _report_drops(self) -> bool:
        """Once the output has taken every waiting line, say how many were dropped.

        Drops happen only while lines wait, so every drop is followed by a
        moment when the queue is empty after a write: this one. False if told
        to stop or the output failed.
        """
        with self._count_lock:
            unreported = self.dropped - self._reported if self._queue.empty() else 0
        if not unreported:
            return True
        line = self.drop_message.format(count=unreported, lines="line" if unreported == 1 else "lines")
        if not self._write(line + self.terminator):
            return False
        with self._progress:
            self._reported += unreported
            self._progress.notify_all()
        return True

    def _write(self, text: str) -> bool:
        """Write *text* to the output; False if told to stop or the output failed."""
        try:
            if self._fd is None:
                assert self._stream is not None
                self._stream.write(text)
                self._stream.flush()
                return True
            return self._write_fd(self._fd, text.encode(self.encoding, "backslashreplace"))
        except ValueError as error:  # a closed stream
            self._fail(OSError(errno.EBADF, str(error)))
        except OSError as error:
            self._fail(error)
        return False

    def _write_fd(self, fd: int, data: bytes) -> bool:
        """Write *data* in pieces the output says it can take; False if told to stop first.

        Raises OSError when the output fails.
        """
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        start = 0
        while start < len(data):
            while not poller.poll(self.poll_interval * 1000):  # POLLERR/POLLHUP: write() says what
                if self._stop.is_set():
                    return False
            end = min(len(data), start + self.write_size)
            if end < len(data):
                newline = data.rfind(b"\n", start, end)
                if newline >= 0:
                    end = newline + 1
            try:
                start += os.write(fd, data[start:end])
            except BlockingIOError:  # someone made the output non-blocking and it filled up
                if self._stop.wait(self.poll_interval / 10):
                    return False
        return True

    def _fail(self, error: OSError) -> None:
        """The output is gone: go quiet, say so once, release whoever waits in drain()."""
        self._quiet = True
        with self._progress:
            self._progress.notify_all()
        try:
            self.on_output_error(error, self.output_name)
        except Exception:  # a failing callback must not kill the writer's cleanup
            pass


def _describe(output: int | TextIO | None, encoding: str | None) -> tuple[str, str]:
    """A name for messages (``stdout``) and the encoding to write *output* in."""
    if isinstance(output, int) or output is None:
        fd = output
        stream_encoding = None
    else:
        stream_encoding = getattr(output, "encoding", None)
        try:
            fd = output.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
    names = {1: "stdout", 2: "stderr"}
    if fd in names:
        name = names[fd]
    elif fd is not None:
        name = f"file descriptor {fd}"
    else:
        name = str(getattr(output, "name", "the log stream"))
    return name, encoding or stream_encoding or "utf-8"
