"""The accept loop alone: a listener that waits for room, and the wake-up that says there is some."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import pytest

from socketlab import serving
from socketlab.serving import Acceptor, listen
from support import TIMEOUT, wait_until

pytestmark = pytest.mark.timeout(30)


def test_resume_wakes_the_loop_after_a_resume_raced_with_its_drain(monkeypatch) -> None:
    """A resume() landing while the accept loop drains its waker does not leave later resume()s mute.

    The safety net (a look every ROOM_CHECK seconds) is made long, so only a wake-up can accept the
    waiting client in time: the race is made certain by a drain that calls resume() first.
    """
    monkeypatch.setattr(serving, "ROOM_CHECK", 60.0)
    room = [0]
    started: list[list[tuple[socket.socket, Any]]] = []
    accepted = threading.Event()

    def start(batch: list[tuple[socket.socket, Any]]) -> None:
        started.append(batch)
        accepted.set()

    acceptor = Acceptor(max_clients=10, logger=logging.getLogger("test"))
    listener = listen(("127.0.0.1", 0))
    acceptor.add_listener(listener, start, room=lambda: room[0])
    listening = threading.Event()
    thread = threading.Thread(target=acceptor.serve_forever, args=(listening.set,))
    thread.start()
    try:
        assert listening.wait(TIMEOUT)
        client = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        # No room: the loop sets the listener aside, and the client waits in the listen queue.
        wait_until(lambda: bool(acceptor._waiting_listeners), what="the listener set aside")
        real_drain = acceptor._waker.drain
        raced = threading.Event()

        def drain_with_a_resume_in_the_way() -> None:
            if not raced.is_set():
                raced.set()
                acceptor.resume()
            real_drain()

        acceptor._waker.drain = drain_with_a_resume_in_the_way  # type: ignore[method-assign]
        acceptor.resume()  # still no room: the loop wakes, drains (racing), looks, sets it aside again
        assert raced.wait(TIMEOUT)
        room[0] = 1
        acceptor.resume()
        assert accepted.wait(5.0), "the resume() after the race did not wake the accept loop"
        assert len(started) == 1 and len(started[0]) == 1
        for sock, _address in started[0]:
            sock.close()
        client.close()
    finally:
        acceptor.stop()
        thread.join(TIMEOUT)
        acceptor.close()


def test_wake_ups_before_a_drain_cost_one_byte_and_a_wake_up_after_it_wakes_again() -> None:
    """A crowd of wake-ups before the woken thread drains is one send(); after drain(), wake() sends again."""
    from socketlab.serving import Waker

    waker = Waker()
    try:
        for _ in range(100):
            waker.wake()
        assert waker._read.recv(4096) == b"x"
        waker.drain()
        waker.wake()
        assert waker._read.recv(4096) == b"x"
    finally:
        waker.close()


def test_a_wake_up_that_lands_inside_a_drain_does_not_mute_the_later_ones() -> None:
    """A wake() between the drain's read and its end: every later wake() still makes the waker readable."""
    import select

    from socketlab.serving import Waker

    waker = Waker()
    real = waker._read

    class ReadWithAWakeUpInTheWay:
        def recv(self, size: int) -> bytes:
            waker.wake()  # another thread, at the worst moment
            return real.recv(size)

    try:
        waker.wake()
        waker._read = ReadWithAWakeUpInTheWay()  # type: ignore[assignment]
        waker.drain()
        waker._read = real
        waker.wake()
        assert select.select([real], [], [], 1.0)[0] == [real], "a later wake-up was muted"
    finally:
        waker._read = real
        waker.close()
