"""The TCP welcome server and client helpers, used as a library in-process."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest

from socketlab import tcp
from socketlab.bench.common import close_with_reset
from socketlab.errors import AddressError
from socketlab.tcp import WelcomeServer, connect, exchange
from support import TIMEOUT, has_ipv6, recv_until_closed, serving, wait_until


class RecordingServer(WelcomeServer):
    """Records the tutorial's events in order, as a subclass would."""

    def __init__(self, *args, **kwargs) -> None:
        self.events: list[tuple] = []
        self.ended = threading.Event()
        super().__init__(*args, **kwargs)

    def on_connection(self, peer: str) -> bytes:
        self.events.append(("connection",))
        return super().on_connection(peer)

    def on_data(self, peer: str, chunk: bytes) -> None:
        self.events.append(("data", chunk))

    def on_end(self, peer: str, received: int) -> None:
        self.events.append(("end", received))
        self.ended.set()

    def on_error(self, peer: str, error: OSError, received: int) -> None:
        self.events.append(("error", type(error).__name__, received))
        self.ended.set()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="socketlab")
    return caplog


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_port_zero_gives_real_address_and_welcome() -> None:
    """Port 0 binds a free port; a client gets the welcome line and then EOF after ending."""
    with RecordingServer(("127.0.0.1", 0)) as server, serving(server):
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        reply = exchange(host, port, b"Hello Socket Server\n")
        assert reply == b"Welcome to Socket Server\n"
        assert server.ended.wait(TIMEOUT)
        assert server.events == [("connection",), ("data", b"Hello Socket Server\n"), ("end", 20)]


def test_log_lines_escape_control_characters(records: pytest.LogCaptureFixture) -> None:
    """Connected, message (escaped) and disconnected lines name the client's address."""
    with WelcomeServer(("127.0.0.1", 0)) as server, serving(server):
        with connect(*server.server_address[:2]) as sock:
            peer = "%s:%d" % sock.getsockname()[:2]
            sock.sendall(b"\x1b[2Jhi \xff\n")
            sock.shutdown(socket.SHUT_WR)
            recv_until_closed(sock)
        wait_until(lambda: any("Client disconnected" in m for m in log_messages(records)), what="disconnect log")
    messages = log_messages(records)
    assert messages[0] == f"Server is listening on 127.0.0.1:{server.server_address[1]}"
    assert f"Client connected {peer}" in messages
    assert f"Get message from client {peer}: \\x1b[2Jhi \ufffd\\n" in messages
    assert f"Client disconnected {peer} (9 bytes received)" in messages
    assert messages[-1] == "Server closed"


def test_hex_and_quiet_payload_modes(records: pytest.LogCaptureFixture) -> None:
    """--hex logs a dump; quiet logs no payload but still counts bytes."""
    for mode in ("hex", "quiet"):
        records.clear()
        with WelcomeServer(("127.0.0.1", 0), payload=mode, welcome="") as server, serving(server):
            assert exchange(*server.server_address[:2], b"AB\x00") == b""
            wait_until(lambda: any("Client disconnected" in m for m in log_messages(records)))
        text = "\n".join(log_messages(records))
        if mode == "hex":
            assert "(3 bytes):\n00000000  41 42 00" in text
        else:
            assert "Get message" not in text
        assert "(3 bytes received)" in text


def test_echo_round_trip_is_byte_exact() -> None:
    """--echo returns every byte unchanged, 1 MiB of random data included."""
    data = bytes(range(256)) * 4096
    with WelcomeServer(("127.0.0.1", 0), echo=True, welcome="", payload="quiet") as server, serving(server):
        assert exchange(*server.server_address[:2], data) == data


def test_fifty_concurrent_clients() -> None:
    """Fifty clients at once each get their own bytes echoed back."""
    results: dict[int, bytes] = {}
    with WelcomeServer(("127.0.0.1", 0), echo=True, welcome="", payload="quiet") as server, serving(server):
        address = server.server_address[:2]

        def client(n: int) -> None:
            results[n] = exchange(*address, f"client {n}\n".encode() * 100)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
    assert results == {n: f"client {n}\n".encode() * 100 for n in range(50)}


def test_client_reset_mid_stream_does_not_disturb_server(records: pytest.LogCaptureFixture) -> None:
    """A client that resets is logged as such; the next client is served normally."""
    with RecordingServer(("127.0.0.1", 0), payload="quiet") as server, serving(server):
        sock = connect(*server.server_address[:2])
        sock.recv(100)
        sock.sendall(b"partial line without newline")
        wait_until(lambda: any(e[0] == "data" for e in server.events), what="data event")
        close_with_reset(sock)
        assert server.ended.wait(TIMEOUT)
        assert server.events[-1] == ("error", "ConnectionResetError", 28)
        assert exchange(*server.server_address[:2], b"next\n") == b"Welcome to Socket Server\n"


def test_max_clients_refuses_with_one_line() -> None:
    """The client beyond max_clients gets one 'server is full' line and EOF."""
    with WelcomeServer(("127.0.0.1", 0), max_clients=2) as server, serving(server):
        address = server.server_address[:2]
        held = [connect(*address) for _ in range(2)]
        try:
            wait_until(lambda: server.connection_count == 2)
            with connect(*address) as extra:
                assert recv_until_closed(extra) == b"server is full, try again later\n"
        finally:
            for sock in held:
                sock.close()


def test_shutdown_with_idle_clients_is_prompt_and_leaves_no_threads() -> None:
    """shutdown() closes idle connections within a second and joins every thread."""
    before = set(threading.enumerate())
    server = WelcomeServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    clients = [connect(*server.server_address[:2]) for _ in range(20)]
    wait_until(lambda: server.connection_count == 20)
    start = time.monotonic()
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)
    assert time.monotonic() - start < 1.0
    assert server.connection_count == 0
    for sock in clients:
        assert recv_until_closed(sock) == b"Welcome to Socket Server\n"
        sock.close()
    assert set(threading.enumerate()) - before == set()
    server.shutdown()  # idempotent


def test_rebind_same_port_right_after_stop() -> None:
    """A new server binds the same port at once although connections sit in TIME_WAIT."""
    with WelcomeServer(("127.0.0.1", 0)) as server, serving(server):
        port = server.server_address[1]
        sock = connect("127.0.0.1", port)
        wait_until(lambda: server.connection_count == 1)
    recv_until_closed(sock)  # the server closed first: its side is in TIME_WAIT
    sock.close()
    with WelcomeServer(("127.0.0.1", port)) as again:
        assert again.server_address[1] == port


def test_port_in_use_is_an_address_error() -> None:
    """Binding a taken port raises AddressError naming host and port."""
    with WelcomeServer(("127.0.0.1", 0)) as server:
        port = server.server_address[1]
        with pytest.raises(AddressError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: address already in use$"):
            WelcomeServer(("127.0.0.1", port))


def test_connect_refused_names_address() -> None:
    """A refused connection is one AddressError line naming the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AddressError, match=rf"^cannot connect to 127\.0\.0\.1:{port}: connection refused$"):
        connect("127.0.0.1", port)


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this machine")
def test_ipv6_loopback() -> None:
    """The server binds ::1 and the client helper reaches it."""
    with WelcomeServer(("::1", 0), echo=True, welcome="hi") as server, serving(server):
        assert server.address_text.startswith("[::1]:")
        assert exchange("::1", server.server_address[1], b"six\n") == b"hi\nsix\n"


def _fake_caches(root: Any, caches: list[tuple[str, str, str]]) -> str:
    for index, (level, kind, size) in enumerate(caches):
        folder = root / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")
    return str(root)


@pytest.mark.parametrize("l2, expected", [("2048K", 512 << 10), ("1024K", 256 << 10), ("256K", 64 << 10), ("32M", 1 << 20)])
def test_default_buffer_is_a_quarter_of_l2_within_bounds(tmp_path: Any, monkeypatch: Any, l2: str, expected: int) -> None:
    monkeypatch.setattr(
        tcp, "_CACHES", _fake_caches(tmp_path, [("1", "Data", "48K"), ("1", "Instruction", "64K"), ("2", "Unified", l2)])
    )
    assert tcp.default_buffer_size() == expected


def test_default_buffer_without_cache_facts(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(tcp, "_CACHES", str(tmp_path / "missing"))
    assert tcp.default_buffer_size() == 256 << 10
    monkeypatch.setattr(tcp, "_CACHES", _fake_caches(tmp_path, [("2", "Unified", "lots")]))
    assert tcp.default_buffer_size() == 256 << 10


def test_output_gets_every_byte_from_one_client_at_a_time() -> None:
    """WelcomeServer(output=...): bytes land in the output unchanged; max_clients is 1 while one sends."""
    import io

    sink = io.BytesIO()
    data = bytes(range(256)) * 2000
    with WelcomeServer(("127.0.0.1", 0), output=sink, welcome="", payload="quiet", max_clients=50) as server, serving(server):
        assert server.max_clients == 1
        address = server.server_address[:2]
        with connect(*address) as first:
            wait_until(lambda: server.connection_count == 1)
            assert exchange(*address, b"refused?") == b"server is full, try again later\n"
            first.sendall(data)
            first.shutdown(socket.SHUT_WR)
            assert recv_until_closed(first) == b""
        assert exchange(*address, b"second") == b""
    assert sink.getvalue() == data + b"second"


def test_an_output_that_fails_stops_the_server_and_serve_forever_raises_it() -> None:
    """A full disk under the output: the server stops and serve_forever() raises the OSError."""
    import errno

    class FullDisk:
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    raised: list[BaseException] = []
    server = WelcomeServer(("127.0.0.1", 0), output=FullDisk(), welcome="")  # type: ignore[arg-type]

    def serve() -> None:
        try:
            server.serve_forever()
        except OSError as error:
            raised.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        exchange(*server.server_address[:2], b"x")
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert [getattr(error, "errno", None) for error in raised] == [errno.ENOSPC]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_once_returns_from_serve_forever_after_one_connection() -> None:
    """once=True: serve_forever() returns by itself when its one connection ends."""
    server = WelcomeServer(("127.0.0.1", 0), once=True, echo=True, welcome="")
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert exchange(*server.server_address[:2], b"only\n") == b"only\n"
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_program_server_shutdown_ends_and_reaps_its_programs() -> None:
    """ProgramServer: shutdown() ends programs that outlive their connection, promptly, leaving no child."""
    import sys

    from socketlab.programs import ProgramServer

    code = "import sys, time\nprint('up', flush=True)\ntime.sleep(60)\n"
    with ProgramServer(("127.0.0.1", 0), [sys.executable, "-c", code], max_clients=3) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        clients = [connect(*server.server_address[:2]) for _ in range(3)]
        for sock in clients:
            sock.settimeout(TIMEOUT)
            assert sock.makefile("rb").readline() == b"up\n"
        assert server.child_count == 3
        start = time.monotonic()
        server.shutdown()
        thread.join(TIMEOUT)
        assert time.monotonic() - start < 1.0
        assert server.child_count == 0
        for sock in clients:
            sock.close()


def test_connect_from_a_source_address() -> None:
    """connect(source=...) binds the local side first."""
    with WelcomeServer(("127.0.0.1", 0)) as server, serving(server):
        with connect(*server.server_address[:2], source=("127.0.0.5", 0)) as sock:
            assert sock.getsockname()[0] == "127.0.0.5"
