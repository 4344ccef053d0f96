"""The chat server over real sockets: relay, rooms, limits, abuse, lifecycle."""

from __future__ import annotations

import selectors
import signal
import socket
import struct
import threading
import time

import pytest

from socketlab.chat import server as chat_server
from socketlab.chat.server import ChatServer
from support import TIMEOUT, CliServer, Peer, has_ipv6, rss_kib, run_cli, serving, wait_until


@pytest.fixture
def chat():
    """A running ChatServer factory; every server is shut down and joined."""
    started = []

    def start(**options) -> ChatServer:
        server = ChatServer(("127.0.0.1", 0), **options)
        context = serving(server)
        context.__enter__()
        started.append((server, context))
        return server

    yield start
    for _server, context in reversed(started):
        context.__exit__(None, None, None)


def join(server: ChatServer, count: int) -> list[Peer]:
    """Connect *count* raw clients and consume their welcome/join notices."""
    peers = []
    for _ in range(count):
        peer = Peer(server.server_address[1])
        assert peer.line().startswith("* welcome user")
        for earlier in peers:
            assert earlier.line().endswith("joined lobby")
        peers.append(peer)
    return peers


def test_message_relayed_to_others_not_sender(chat) -> None:
    """Lines reach every other member as '<name> text', never the sender."""
    server = chat()
    a, b, c = join(server, 3)
    a.send(b"hello\r\n")
    assert b.line() == "<user1> hello"
    assert c.line() == "<user1> hello"
    b.send(b"/who\n")
    assert b.line() == "* in lobby: user1, user2, user3"  # a got nothing in between
    a.send(b"/who\n")
    assert a.line() == "* in lobby: user1, user2, user3"


def test_lines_split_across_chunks_arrive_whole(chat) -> None:
    """A sender that writes byte by byte still produces whole lines at receivers."""
    server = chat()
    a, b = join(server, 2)
    a.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in "héllo wörld 👋\nsecond\n".encode():
        a.send(bytes([byte]))
    assert b.lines(2) == ["<user1> héllo wörld 👋", "<user1> second"]


def test_two_hundred_clients_same_order_nothing_lost(chat) -> None:
    """200 clients, 4 senders: every receiver gets every other sender's line once, one order."""
    server = chat()
    port = server.server_address[1]
    socks = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port))
        socks.append(sock)
    wait_until(lambda: len(server.hub.members) == 200, what="200 members")
    senders = socks[:4]
    per_sender = 100
    for n in range(per_sender):
        for index, sock in enumerate(senders):
            sock.sendall(f"s{index} m{n:03d}\n".encode())
    received: dict[socket.socket, list[str]] = {sock: [] for sock in socks}
    buffers = {sock: b"" for sock in socks}
    expected_messages = {sock: per_sender * (4 if sock not in senders else 3) for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + TIMEOUT * 3
    done = lambda: all(sum(1 for l in received[s] if l.startswith("<")) >= expected_messages[s] for s in socks)
    while not done():
        assert time.monotonic() < deadline, "not every message arrived"
        for key, _ in selector.select(1):
            data = key.fileobj.recv(65536)
            assert data, "server closed a connection"
            lines = (buffers[key.fileobj] + data).split(b"\n")
            buffers[key.fileobj] = lines.pop()
            received[key.fileobj] += [l.decode() for l in lines]
    selector.close()
    chat_lines = {s: [l for l in received[s] if l.startswith("<")] for s in socks}
    reference = chat_lines[socks[-1]]
    assert len(reference) == 400 and len(set(reference)) == 400
    for index, sock in enumerate(socks):
        lines = chat_lines[sock]
        assert len(lines) == len(set(lines)) == expected_messages[sock], "lost or duplicated"
        assert lines == [l for l in reference if not (sock in senders and l.endswith(f"> s{index} " + l.split(" ")[-1]))]
    for index in range(4):  # each sender's own lines keep their sending order
        own = [l.split()[-1] for l in reference if f" s{index} " in l]
        assert own == [f"m{n:03d}" for n in range(per_sender)]
    for sock in socks:
        sock.close()


def test_never_reading_client_dropped_others_keep_receiving(chat) -> None:
    """A client that never reads overflows its own backlog and is dropped as too slow.

    The sender waits for the reading client to keep up (at most two chunks ahead, far below
    max_backlog): the reader runs in this process, under its GIL, and on a busy machine could
    otherwise fall 256 KiB behind and be dropped as too slow itself, which is right, but not
    what this test is about.
    """
    server = chat(max_backlog=256 * 1024)
    sender, reader = join(server, 2)
    slow = Peer(server.server_address[1], rcvbuf=4096)  # never reads after this
    sender.line(), reader.line()  # "user3 joined lobby"
    total = 12000  # 12 MB: more than the slow client's kernel buffers and its backlog
    per_chunk = 100
    line = b"x" * 1000 + b"\n"
    result: dict[str, object] = {}
    progress = threading.Condition()
    received = bytearray()

    def read_all() -> None:  # as fast as a client can: big reads, no per-line work
        expected = total * len(b"<user1> ") + total * len(line)
        while len(received) < expected + len(b"* user3 left lobby (too slow)\n"):
            data = reader.sock.recv(1 << 20)
            if not data:
                break
            with progress:
                received.extend(data)
                progress.notify()
        lines = bytes(received).split(b"\n")
        result.update(
            seen=sum(1 for got in lines if got == b"<user1> " + b"x" * 1000),
            notices=[got.decode() for got in lines if got and not got.startswith(b"<user1> ")],
        )

    thread = threading.Thread(target=read_all)
    thread.start()
    relayed_chunk = per_chunk * (len(b"<user1> ") + len(line))
    for sent in range(total // per_chunk):
        needed = (sent - 2) * relayed_chunk
        with progress:
            assert progress.wait_for(lambda needed=needed: len(received) >= needed, TIMEOUT), "the reader fell behind"
        sender.send(line * per_chunk)
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the reading client stalled"
    assert (result["seen"], result["notices"]) == (total, ["* user3 left lobby (too slow)"])
    slow.close()


def test_long_line_refused_and_stream_goes_on(chat) -> None:
    """A line over --max-line is refused with one reply; nothing of it is relayed."""
    server = chat(max_line=64)
    a, b = join(server, 2)
    a.send(b"y" * 65 + b"\nshort\n")
    assert a.line() == "! line too long (max 64 bytes)"
    assert b.line() == "<user1> short"


def test_hundred_megabytes_without_newline_keeps_memory_flat() -> None:
    """100 MB with no newline: one refusal, server RSS grows by less than 16 MiB."""
    # Flood control off: it would hold this client to 20 KiB/s (tested in test_flood.py).
    with CliServer("chat", "serve", "--port", "0", "-q", "--max-rate", "0") as server:
        a = Peer(server.port)
        b = Peer(server.port)
        a.line(), a.line(), b.line()
        before = rss_kib(server.proc.pid)
        chunk = b"z" * (1024 * 1024)
        for _ in range(100):
            a.send(chunk)
        a.send(b"\nafter\n")
        assert a.line() == "! line too long (max 4096 bytes)"
        assert b.line() == "<user1> after"
        growth = rss_kib(server.proc.pid) - before
        assert growth < 16 * 1024, f"RSS grew by {growth} KiB"


def test_invalid_utf8_and_escape_sequences_are_neutralised(chat) -> None:
    """ESC becomes \\x1b, invalid bytes U+FFFD; Korean, emoji and accents pass byte for byte."""
    server = chat()
    a, b = join(server, 2)
    a.send(b"\x1b[2J\x1b]0;owned\x07 bad\xff\n")
    a.send("안녕하세요 🎉 naïve\n".encode())
    assert b.line() == "<user1> \\x1b[2J\\x1b]0;owned\\x07 bad\ufffd"
    raw = b.file.readline()
    assert raw == "<user1> 안녕하세요 🎉 naïve\n".encode()


def test_reset_mid_line_is_announced_and_partial_line_dropped(chat) -> None:
    """A client that resets with half a line: the room hears why; the fragment is never relayed."""
    server = chat()
    a, b = join(server, 2)
    a.send(b"half a li")
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    assert b.line() == "* user1 left lobby (connection reset)"
    b.send(b"/who\n")
    assert b.line() == "* in lobby: user2"


def test_a_failure_serving_one_client_closes_only_that_client(chat, caplog) -> None:
    """A bug hit by one client's line: that client is closed and leaves its room; the rest go on."""
    server = chat()
    a, b = join(server, 2)
    real_receive = server.hub.receive

    def receive(member, items):
        if member.name == "user1" and b"boom" in items:
            raise RuntimeError("hub bug")
        return real_receive(member, items)

    server.hub.receive = receive  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="socketlab.chat"):
        a.send(b"boom\n")
        assert b.line() == "* user1 left lobby (server error)"
        assert a.rest() == b""
    assert "Error serving 127.0.0.1:" in caplog.text and "RuntimeError: hub bug" in caplog.text
    b.send(b"/who\n")
    assert b.line() == "* in lobby: user2"
    c = Peer(server.server_address[1])
    assert c.line() == "* welcome user3, you are in lobby (type /help)"
    c.send(b"still here\n")
    assert b.until("<user3> still here")[-1] == "<user3> still here"


def test_a_failure_welcoming_clients_closes_only_them(chat, caplog) -> None:
    """A bug while connecting newcomers to the hub: they are closed unwelcomed; the server goes on."""
    server = chat()
    (a,) = join(server, 1)
    real_connect = server.hub.connect

    def connect(transport=None):
        raise RuntimeError("hub bug")

    server.hub.connect = connect  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="socketlab.chat"):
        refused = Peer(server.server_address[1])
        assert refused.rest() == b""
    assert "Cannot welcome 1 new client(s): RuntimeError: hub bug" in caplog.text
    wait_until(lambda: server.connection_count == 1, what="the refused client to be forgotten")
    server.hub.connect = real_connect  # type: ignore[method-assign]
    b = Peer(server.server_address[1])
    assert b.line() == "* welcome user2, you are in lobby (type /help)"
    assert a.line() == "* user2 joined lobby"
    b.send(b"hello\n")
    assert a.line() == "<user2> hello"


def test_half_closed_client_lines_delivered_then_left(chat) -> None:
    """A client that ends its side: its last (unterminated) line is relayed, then it leaves."""
    server = chat()
    a, b = join(server, 2)
    a.send(b"bye for now\nlast words")
    a.sock.shutdown(socket.SHUT_WR)
    assert b.lines(3) == ["<user1> bye for now", "<user1> last words", "* user1 left lobby (disconnected)"]
    assert a.rest() == b""


def test_room_capacity_private_messages_and_nick_collision(chat) -> None:
    """room_size=2 refuses the third member; /msg is private; a taken nick is refused."""
    server = chat(room_size=2)
    a, b, c = join(server, 3)
    a.send(b"/nick alice\n")
    for peer in (a, b, c):
        assert peer.line() == "* user1 is now known as alice"
    b.send(b"/nick ALICE\n")
    assert b.line() == "! nickname ALICE is taken"
    a.send(b"/join r\n")
    assert a.line() == "* you are in r"
    b.line(), c.line()
    b.send(b"/join r\n")
    assert b.line() == "* you are in r"
    assert a.line() == "* user2 joined r"
    c.line()
    c.send(b"/join r\n")
    assert c.line() == "! room r is full (2/2)"
    c.send(b"/msg alice psst\n")
    assert a.line() == "<user3> (private) psst"
    assert c.line() == "* to alice: psst"
    a.send(b"in room\n")
    assert b.line() == "<alice> in room"
    c.send(b"/who\n")
    assert c.line() == "* in lobby: user3"


def test_quit_flushes_bye_and_closes(chat) -> None:
    """/quit: '* bye', then the server closes; the room is told."""
    server = chat()
    a, b = join(server, 2)
    a.send(b"/quit\nignored\n")
    assert a.line() == "* bye"
    assert a.rest() == b""
    assert b.line() == "* user1 left lobby"


def test_a_crowd_accepted_at_once_is_welcomed_together_in_order() -> None:
    """Clients queued before the server accepts are started together; each reads exactly
    its welcome and the joins after it, as if they had come one by one."""

    bursts: list[int] = []

    class Recording(ChatServer):
        def start_connections(self, accepted):
            bursts.append(len(accepted))
            super().start_connections(accepted)

    server = Recording(("127.0.0.1", 0), announce_rate=0)  # every join announced, however many a second
    crowd = [Peer(server.server_address[1]) for _ in range(20)]  # queued: nothing accepts yet
    with serving(server):
        for number, peer in enumerate(crowd, 1):
            expected = [f"* welcome user{number}, you are in lobby (type /help)"]
            expected += [f"* user{later} joined lobby" for later in range(number + 1, 21)]
            assert peer.lines(len(expected)) == expected
        assert sum(bursts) == 20
        assert bursts[0] > 1, bursts
        crowd[5].send(b"hello\n")
        assert [peer.line() for peer in crowd if peer is not crowd[5]] == ["<user6> hello"] * 19
        late = Peer(server.server_address[1])
        assert late.line() == "* welcome user21, you are in lobby (type /help)"
        assert crowd[0].line() == "* user21 joined lobby"
        for peer in crowd + [late]:
            peer.close()


def test_a_crowd_arriving_at_once_is_announced_fifty_at_once() -> None:
    """70 clients accepted together: the first hears the next fifty arrive (a few more if the budget
    refilled meanwhile, at 10 a second), not all of them; /who names everyone."""
    server = ChatServer(("127.0.0.1", 0))
    crowd = [Peer(server.server_address[1]) for _ in range(70)]  # queued: accepted in one go
    with serving(server):
        first = crowd[0]
        assert first.line() == "* welcome user1, you are in lobby (type /help)"
        for peer in crowd[1:]:
            peer.lines(1)  # its welcome
        first.send(b"/who\n")
        heard = []
        while not (line := first.line()).startswith("* in lobby: "):
            heard.append(line)
        assert line == "* in lobby: " + ", ".join(f"user{number}" for number in range(1, 71))
        assert heard == [f"* user{number} joined lobby" for number in range(2, len(heard) + 2)]
        assert 50 <= len(heard) < 69, len(heard)
        for peer in crowd:
            peer.close()


def test_a_crowd_beyond_max_clients_is_refused_past_the_limit() -> None:
    server = ChatServer(("127.0.0.1", 0), max_clients=3)
    crowd = [Peer(server.server_address[1]) for _ in range(5)]  # queued: nothing accepts yet
    with serving(server):
        assert crowd[0].lines(3) == [
            "* welcome user1, you are in lobby (type /help)",
            "* user2 joined lobby",
            "* user3 joined lobby",
        ]
        assert [peer.rest() for peer in crowd[3:]] == [b"! server full\n"] * 2
        assert server.connection_count == 3
        for peer in crowd:
            peer.close()


def test_max_clients_refuses_with_server_full(chat) -> None:
    """The client beyond max_clients reads '! server full' and EOF."""
    server = chat(max_clients=2)
    members = join(server, 2)
    extra = Peer(server.server_address[1])
    assert extra.rest() == b"! server full\n"
    assert len(members) == server.connection_count == 2


def test_idle_timeout_disconnects_silent_clients(chat) -> None:
    """A client silent longer than idle_timeout is told and dropped; the room hears why."""
    server = chat(idle_timeout=1.0)  # the second member joins well before it, on a slow machine too
    a, b = join(server, 2)
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while "* user1 left lobby (idle timeout)" not in seen:  # b stays active; a says nothing
        assert time.monotonic() < deadline
        b.send(b"/who\n")
        seen.append(b.line())
    assert a.line() == "! idle for 1 s, disconnecting"
    assert a.rest() == b""
    b.send(b"/who\n")
    assert b.until("* in lobby: user2")


def test_shutdown_tells_clients_and_closes_all(chat) -> None:
    """shutdown(): everyone reads '* server shutting down' then EOF, quickly."""
    server = ChatServer(("127.0.0.1", 0))
    with serving(server):
        peers = join(server, 5)
        start = time.monotonic()
    assert time.monotonic() - start < 1.0
    for peer in peers:
        assert peer.rest() == b"* server shutting down\n"
    assert server.connection_count == 0


def test_connecting_after_shutdown_is_refused() -> None:
    """After shutdown() a newcomer (TCP or web) is refused at once, not left in the listen backlog."""
    server = ChatServer(("127.0.0.1", 0), web=("127.0.0.1", 0))
    with serving(server):
        addresses = [server.server_address, server.web_address]
        server.shutdown()
        for address in addresses:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=TIMEOUT)
    assert server.web_address == addresses[1]


def test_cli_sigterm_with_clients_connected() -> None:
    """SIGTERM: clients are told, 'Server closed' is printed, exit 0 within a second."""
    with CliServer("chat", "serve", "--port", "0") as server:
        peers = [Peer(server.port) for _ in range(3)]
        for peer in peers:
            peer.line()
        names = {server.out.wait_for(r"^Client connected 127\.0\.0\.1:\d+ as (user\d+)$").group(1) for _ in range(3)}
        assert names == {"user1", "user2", "user3"}
        status, seconds = server.stop(signal.SIGTERM)
        assert status == 0 and seconds < 1.0
        assert server.out.rest()[-1] == "Server closed"
        for peer in peers:
            assert peer.rest().endswith(b"* server shutting down\n")


def test_cli_log_lines_and_verbose_text() -> None:
    """The log names connects, nick changes, joins and departures; text only with -v."""
    for verbose in (False, True):
        args = ["chat", "serve", "--port", "0"] + (["-v"] if verbose else [])
        with CliServer(*args) as server:
            a = Peer(server.port)
            a.line()
            a.send(b"secret text\n/nick bo\n/join den\n/quit\n")
            a.rest()
            server.out.wait_for(r"^Client disconnected bo \(quit\)$")
            server.stop()
            log = server.out.seen + server.out.rest()
        assert any(l.startswith("Client connected 127.0.0.1:") and l.endswith(" as user1") for l in log)
        assert "user1 is now known as bo" in log
        assert "bo left lobby and joined den" in log
        assert ("user1: secret text" in log) is verbose


def test_cli_startup_error_is_one_line() -> None:
    """A taken port gives one 'Error:' line and exit 1."""
    with CliServer("chat", "serve", "--port", "0") as server:
        result = run_cli("chat", "serve", "--port", str(server.port))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [f"Error: cannot listen on 127.0.0.1:{server.port}: address already in use"]


def test_chat_connect_through_a_pipe() -> None:
    """chat connect sends stdin lines, prints server lines, quits at EOF and exits 0."""
    with CliServer("chat", "serve", "--port", "0") as server:
        listener = Peer(server.port)
        listener.line()
        result = run_cli(
            "chat", "connect", "--port", str(server.port), "--name", "pipe", "--room", "lobby", input="one\nzwei 둘\n".encode()
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            "* welcome user2, you are in lobby (type /help)",
            "* user2 is now known as pipe",
            "* you are in lobby",
            "* bye",
        ]
        assert result.stderr.decode().splitlines() == [f"Connected to Server 127.0.0.1:{server.port}", "Disconnected from Server"]
        assert listener.lines(5) == [
            "* user2 joined lobby",
            "* user2 is now known as pipe",
            "<pipe> one",
            "<pipe> zwei 둘",
            "* pipe left lobby",
        ]


def test_chat_connect_refused_is_one_line() -> None:
    """No server: one line naming the address, exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("chat", "connect", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [f"Error: cannot connect to 127.0.0.1:{port}: connection refused"]


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this machine")
def test_chat_over_ipv6() -> None:
    """The chat server and a client work on ::1."""
    server = ChatServer(("::1", 0))
    with serving(server):
        a = Peer(server.server_address[1], host="::1")
        b = Peer(server.server_address[1], host="::1")
        a.line(), a.line(), b.line()
        a.send(b"v6\n")
        assert b.line() == "<user1> v6"


def test_chat_connect_on_a_terminal_redraws_the_input_line() -> None:
    """On a pty, an incoming line is printed above the prompt and the half-typed input is redrawn."""
    import os
    import pty
    import select
    import subprocess
    import sys

    with CliServer("chat", "serve", "--port", "0") as server:
        main_fd, child_fd = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "socketlab", "chat", "connect", "--port", str(server.port)],
            stdin=child_fd,
            stdout=child_fd,
            stderr=child_fd,
            close_fds=True,
        )
        os.close(child_fd)
        seen = b""

        def read_until(marker: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + TIMEOUT
            while marker not in seen:
                assert time.monotonic() < deadline, seen
                if select.select([main_fd], [], [], 0.1)[0]:
                    seen += os.read(main_fd, 4096)

        try:
            read_until(b"you are in lobby")
            os.write(main_fd, b"half typed")
            read_until(b"half typed")
            other = Peer(server.port)
            other.line()
            other.send(b"\x1b[31mhello\n")
            read_until(b"<user2> \\x1b[31mhello")
            start = seen.index(b"<user2>") - 4
            deadline = time.monotonic() + TIMEOUT
            while b"half typed" not in seen[start:]:  # readline may redraw what it holds a moment later
                assert time.monotonic() < deadline, seen
                if select.select([main_fd], [], [], 0.1)[0]:
                    seen += os.read(main_fd, 4096)
            tail = seen[start:]
            assert tail.startswith(b"\r\x1b[K<user2> \\x1b[31mhello\r\n> "), tail
            prompt_line = tail.split(b"\r\n", 1)[1]
            assert b"half typed" in prompt_line and b"<user2>" not in prompt_line, tail
            os.write(main_fd, b" done\n")
            assert other.line() == "<user1> half typed done"
            os.write(main_fd, b"/quit\n")
            read_until(b"* bye")
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(main_fd)


def test_shutdown_twice_and_no_threads_left() -> None:
    """shutdown() is idempotent and leaves no reader, writer or connection thread behind."""
    import threading as _threading

    before = set(_threading.enumerate())
    server = ChatServer(("127.0.0.1", 0))
    thread = _threading.Thread(target=server.serve_forever)
    thread.start()
    peers = [Peer(server.server_address[1]) for _ in range(3)]
    for peer in peers:
        assert peer.line().startswith("* welcome")
    server.shutdown()
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)
    assert set(_threading.enumerate()) - before == set()
    for peer in peers:
        assert peer.rest().endswith(b"* server shutting down\n")
        peer.close()


class TimedStandIn:
    """A connection as the server's timers see it: it counts its ticks and wants no further one."""

    def __init__(self) -> None:
        self.ticks = 0

    def tick(self, now: float) -> None:
        self.ticks += 1

    def next_tick(self) -> None:
        return None


def test_a_sweep_runs_every_due_timer_a_slice_at_a_time(monkeypatch) -> None:
    """Timers that come due together (a storm's members reach their keepalive together) are run a slice at a
    time, the lock let go in between, and one sweep goes on until none is due: twelve with slices of five."""
    monkeypatch.setattr(chat_server, "SWEEP_SLICE", 5)
    server = ChatServer(("127.0.0.1", 0))  # no web, TLS or idle timeout: no sweep of its own runs
    try:
        stand_ins = [TimedStandIn() for _ in range(12)]
        taken: list[float] = []
        monkeypatch.setattr(server, "lock", CountingLock(taken))
        for stand_in in stand_ins:
            server._timers.schedule(stand_in, time.monotonic() - 1)  # type: ignore[arg-type]
        server.sweep()
        assert [stand_in.ticks for stand_in in stand_ins] == [1] * 12
        assert len(server._timers) == 0 and len(taken) >= 3  # three slices, three holds of the lock at least
    finally:
        server.server_close()


class CountingLock:
    """A lock that records each time it is taken."""

    def __init__(self, taken: list[float]) -> None:
        self._lock = threading.Lock()
        self._taken = taken

    def __enter__(self) -> None:
        self._lock.acquire()
        self._taken.append(time.monotonic())

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class AlwaysDueStandIn(TimedStandIn):
    """A connection whose timer, once run, is due again at once (a tick that found nothing to do yet)."""

    def next_tick(self) -> float:  # type: ignore[override]
        return time.monotonic() - 1


def test_a_sweep_ends_even_when_timers_come_due_again_at_once(monkeypatch) -> None:
    """A timer put back at a time already past waits for the next sweep: a sweep runs as many slices as
    there are timers, not until none is due (Engine.IO sessions draining used to do this)."""
    monkeypatch.setattr(chat_server, "SWEEP_SLICE", 4)
    server = ChatServer(("127.0.0.1", 0))
    try:
        stand_ins = [AlwaysDueStandIn() for _ in range(10)]
        for stand_in in stand_ins:
            server._timers.schedule(stand_in, time.monotonic() - 1)  # type: ignore[arg-type]
        server.sweep()
        ticks = [stand_in.ticks for stand_in in stand_ins]
        assert sum(ticks) == 12 and min(ticks) >= 1  # 10 // 4 + 1 = 3 slices of 4
        assert len(server._timers) == 10
    finally:
        server.server_close()
