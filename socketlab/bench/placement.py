"""CPU placement for benchmarks: the server under test on one CPU, the load on the others.

On a small machine a load generator that shares the server's CPU sets the
tail latency itself: a copy waits while the benchmark's own readers run.
With ``split`` placement the server (every thread, and the threads it makes
later) runs on the first CPU this process may use, and the benchmark's
processes on the rest, so each side's scheduling delays stay its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable
from socketlab.errors import BenchError


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server under test and the benchmark may use (empty: no pinning)."""

    server: frozenset[int] = frozenset()
    load: frozenset[int] = frozenset()

    @classmethod
    def named(cls, name: str) -> "Placement":
        """``shared`` (no pinning) or ``split``; BenchError when this machine cannot split."""
        if name == "shared":
            return cls()
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise BenchError(f"--placement split needs 2 CPUs, and this process may use {len(cpus)}")
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))

    def describe(self) -> dict[str, list[int]]:
        return {"server": sorted(self.server), "load": sorted(self.load)} if self.server else {}

    def pin_load(self) -> None:
        """Pin this process (and the processes it forks afterwards) to the load's CPUs."""
        if self.load:
            os.sched_setaffinity(0, self.load)

    def observed(self, pids: Iterable[int]) -> dict[str, list[int]]:
        """Where the servers' main threads and this process may run now (empty when nothing was pinned)."""
        if not self.server:
            return {}
        server = sorted({cpu for pid in pids for cpu in os.sched_getaffinity(pid)})
        return {"server": server, "load": sorted(os.sched_getaffinity(0))}

    def pin_server(self, pids: Iterable[int], saved: dict[int, dict[int, set[int]]] | None = None) -> None:
        """Pin every thread of every process in *pids* to the server's CPUs.

        Into *saved* go, before each process is touched, the CPUs each of its
        threads could use (for unpin_process()): filled as it goes, so a
        failure half-way still says what to undo.
        """
        if self.server:
            for pid in pids:
                if saved is not None and pid not in saved:
                    saved[pid] = thread_affinities(pid)
                pin_process(pid, self.server)


def thread_affinities(pid: int) -> dict[int, set[int]]:
    """The CPUs each thread of *pid* may use now, by thread id (empty when the process is gone)."""
    found = {}
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for thread in threads:
        try:
            found[int(thread)] = os.sched_getaffinity(int(thread))
        except OSError:  # the thread ended meanwhile
            pass
    return found


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Pin all of *pid*'s threads to *cpus* (threads it starts later inherit it).

    BenchError if the process is gone or may not be moved (another user's).
    """
    _set_every_thread(pid, lambda _thread: cpus, f"CPU {','.join(map(str, sorted(cpus)))}")


def unpin_process(pid: int, before: dict[int, set[int]]) -> None:
    """Put *pid*'s threads back where *before* (from thread_affinities()) says; threads started since
    get the first thread's. A process gone meanwhile is fine."""
    if not before:
        return
    default = before.get(pid, next(iter(before.values())))
    try:
        _set_every_thread(pid, lambda thread: before.get(thread, default), "its CPUs")
    except BenchError:
        pass


def _set_every_thread(pid: int, cpus_for: Callable[[int], Iterable[int]], where: str) -> None:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        raise BenchError(f"no process {pid} to place on {where}") from None
    for thread in threads:
        try:
            os.sched_setaffinity(int(thread), cpus_for(int(thread)))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
        except OSError as error:
            raise BenchError(f"cannot place process {pid} on {where}: {error.strerror}") from None
