"""``socketlab tcp-server`` and ``tcp-client`` run the way a user runs them."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from socketlab.bench.common import close_with_reset
from support import CLI, TIMEOUT, CliServer, LineReader, has_ipv6, recv_until_closed, run_cli, wait_until

pytestmark = pytest.mark.timeout(30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], message: str) -> None:
    """Exit 1, exactly one stderr line equal to *message*, no traceback."""
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().splitlines() == [message]
    assert b"Traceback" not in result.stdout + result.stderr


def test_welcome_message_and_server_log() -> None:
    """Client prints the welcome; server logs connect, the message and the disconnect."""
    with CliServer("tcp-server", "--port", "0") as server:
        result = run_cli("tcp-client", "--port", str(server.port), "Hello", "Socket", "Server")
        assert result.returncode == 0
        assert result.stdout == b"Welcome to Socket Server\n"
        assert result.stderr.decode().splitlines() == [
            f"Connected to Server 127.0.0.1:{server.port}",
            "Disconnected from Server",
        ]
        peer = server.out.wait_for(r"^Client connected (127\.0\.0\.1:\d+)$").group(1)
        server.out.wait_for(rf"^Get message from client {peer}: Hello Socket Server\\n$")
        server.out.wait_for(rf"^Client disconnected {peer} \(20 bytes received\)$")
        status, _ = server.stop()
        assert status == 0
        server.out.wait_for("^Server closed$")


def test_echo_ten_mib_through_tcp_client_is_byte_exact(tmp_path) -> None:
    """10 MiB of random bytes through stdin, --echo and back to stdout, unchanged."""
    data = os.urandom(10 * 1024 * 1024)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    with CliServer("tcp-server", "--port", "0", "--echo", "--welcome", "", "-q") as server:
        with open(source, "rb") as stdin:  # a regular file: sendfile path
            result = subprocess.run(
                CLI + ["tcp-client", "--port", str(server.port)], stdin=stdin, capture_output=True, timeout=TIMEOUT
            )
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
        piped = run_cli("tcp-client", "--port", str(server.port), input=data)  # a pipe: splice path
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == data
        server.out.wait_for(r"Client disconnected .* \(10485760 bytes received\)")


def test_tiny_buffers_at_both_ends_stay_byte_exact() -> None:
    """--buffer only sizes each read and write: 7-byte server reads, 5-byte client copies, same bytes."""
    data = os.urandom(200_000)
    with CliServer("tcp-server", "--port", "0", "--echo", "--welcome", "", "-q", "--buffer", "7") as server:
        result = run_cli("tcp-client", "--port", str(server.port), "--buffer", "5", input=data)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
        server.out.wait_for(r"Client disconnected .* \(200000 bytes received\)")


def test_half_close_keeps_receiving_until_server_closes() -> None:
    """After the client ends its side it still reads what the server sends, then exits."""
    with CliServer("tcp-server", "--port", "0", "--echo", "--welcome", "hi") as server:
        result = run_cli("tcp-client", "--port", str(server.port), input=b"line one\nline two\n")
        assert result.stdout == b"hi\nline one\nline two\n"
        assert result.returncode == 0


def _one_connection_server(handle) -> tuple[int, threading.Thread, list]:  # type: ignore[no-untyped-def]
    """A listener on a free port whose one connection *handle(conn)* serves on a thread; its result in the list."""
    listener = socket.create_server(("127.0.0.1", 0))
    results: list = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                results.append(handle(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, results


def _receive_only(conn: socket.socket) -> bytes:
    """As `nc -l --recv-only`: end our side at once, then read to the end."""
    conn.shutdown(socket.SHUT_WR)
    return recv_until_closed(conn)


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_a_server_that_ends_its_side_first_still_gets_all_the_input(tmp_path, source: str) -> None:
    """A receiver that half-closes at once (ncat -l --recv-only > file) gets every byte of stdin, from a file
    (sendfile) or a pipe: the relay does not stop at the server's EOF while the input is still moving."""
    data = random.Random(7).randbytes(6 * 1024 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    port, thread, results = _one_connection_server(_receive_only)
    if source == "file":
        with open(path, "rb") as stdin:
            result = subprocess.run(CLI + ["tcp-client", "--port", str(port)], stdin=stdin, capture_output=True, timeout=TIMEOUT)
    else:
        result = run_cli("tcp-client", "--port", str(port), input=data)
    thread.join(TIMEOUT)
    assert (result.returncode, result.stdout) == (0, b""), result.stderr
    assert len(results[0]) == len(data) and results[0] == data


def test_input_the_server_did_not_take_is_an_error() -> None:
    """A server that reads ten bytes, answers and closes: its answer is shown, then one Error line and exit 1
    (ncat: 'Connection reset by peer'), not a quiet 0 with most of the input lost."""

    def early(conn: socket.socket) -> None:
        conn.recv(10)
        conn.sendall(b"enough\n")

    port, thread, _ = _one_connection_server(early)
    result = run_cli("tcp-client", "--port", str(port), input=b"x" * (16 * 1024 * 1024))
    thread.join(TIMEOUT)
    assert result.returncode == 1 and result.stdout == b"enough\n"
    assert re.fullmatch(
        rb"Connected to Server 127\.0\.0\.1:\d+\nError: connection reset by 127\.0\.0\.1:\d+(: not all of the input was sent)?\n",
        result.stderr,
    ), result.stderr


def test_a_server_that_ends_its_side_while_the_input_is_quiet_is_left_after_a_moment() -> None:
    """stdin open but silent (a terminal nobody types in): the client ends LINGER after the server's EOF."""
    from socketlab.relay import LINGER

    port, thread, _ = _one_connection_server(lambda conn: conn.sendall(b"bye\n"))
    proc = subprocess.Popen(CLI + ["tcp-client", "--port", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"bye\n"
        started = time.monotonic()
        assert proc.wait(TIMEOUT) == 0
        assert time.monotonic() - started < LINGER + 0.5
    finally:
        proc.kill()
        proc.wait()
        thread.join(TIMEOUT)


def test_output_to_a_terminal_is_escaped_text() -> None:
    """--output - on a terminal: a client's escape sequences (colours, a window title, BEL) are shown, not obeyed;
    into a pipe or a file the same bytes go out unchanged (see the byte-exact tests)."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        CLI + ["tcp-server", "--port", "0", "--once", "--output", "-"], stdout=terminal, stderr=subprocess.PIPE
    )
    os.close(terminal)
    try:
        assert proc.stderr is not None
        port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall("A\x1b[31mRED\x1b]0;pwned\x07B\x9bé\n".encode())
        assert proc.wait(TIMEOUT) == 0
        shown = b""
        while b"\n" not in shown:
            shown += os.read(controller, 1024)
        assert shown.replace(b"\r\n", b"\n") == "A\\x1b[31mRED\\x1b]0;pwned\\x07B\\x9bé\n".encode()
    finally:
        proc.kill()
        proc.wait()
        os.close(controller)


def test_a_server_whose_output_nobody_reads_still_stops_at_once() -> None:
    """--output - into a pipe nobody reads, a client sending: the connection's thread is stuck in write();
    SIGTERM still ends the server with status 0 well within the time it gives threads (0.75 s), not 2 s."""
    reader, writer = os.pipe()
    proc = subprocess.Popen(CLI + ["tcp-server", "--port", "0", "--output", "-"], stdout=writer, stderr=subprocess.PIPE)
    os.close(writer)
    try:
        assert proc.stderr is not None
        port = int(re.search(rb":(\d+)\n", proc.stderr.readline()).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(0.2)
            with pytest.raises(TimeoutError):  # the pipe and both socket buffers are full: the server is stuck
                while True:
                    client.sendall(b"x" * 65536)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
            assert time.monotonic() - started < 1.5
    finally:
        proc.kill()
        proc.wait()
        os.close(reader)


def test_check_only_connects_like_nc_z() -> None:
    """-z: status 0 when the port takes a connection (nothing is sent), 1 with one Error line when it does not."""
    with CliServer("tcp-server", "--port", "0") as server:
        result = run_cli("tcp-client", "-z", "--port", str(server.port), input=b"not sent\n")
        assert (result.returncode, result.stdout) == (0, b"")
        assert result.stderr.decode() == f"Connected to Server 127.0.0.1:{server.port}\n"
        server.out.wait_for(r"^Client disconnected 127\.0\.0\.1:\d+ \(0 bytes received\)$")
    closed = run_cli("tcp-client", "-z", "--port", str(server.port))
    assert closed.returncode == 1
    assert closed.stderr.decode() == f"Error: cannot connect to 127.0.0.1:{server.port}: connection refused\n"
    both = run_cli("tcp-client", "-z", "--port", "9", "hello")
    assert both.returncode == 2 and both.stderr.decode().splitlines()[-1] == "Error: -z only connects: drop the MESSAGE"


def test_sigterm_and_sigint_with_idle_clients_stop_within_a_second() -> None:
    """SIGTERM/Ctrl-C close idle clients, print 'Server closed' and exit 0 in < 1 s."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        with CliServer("tcp-server", "--port", "0") as server:
            clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
            for sock in clients:  # every client is greeted: the server holds it, idle
                sock.settimeout(TIMEOUT)
                assert sock.recv(100) == b"Welcome to Socket Server\n"
            status, seconds = server.stop(sig)
            assert status == 0
            assert seconds < 1.0
            assert server.out.rest()[-1] == "Server closed"
            assert server.proc.stderr.read() == b""
            for sock in clients:
                assert recv_until_closed(sock) == b""
                sock.close()


def test_restart_binds_the_same_port_at_once() -> None:
    """Stopping with a client connected leaves TIME_WAIT; a restart still binds."""
    with CliServer("tcp-server", "--port", "0") as first:
        port = first.port
        client = socket.create_connection(("127.0.0.1", port))
        first.out.wait_for("^Client connected")
        assert first.stop()[0] == 0
        recv_until_closed(client)
        client.close()
    with CliServer("tcp-server", "--port", str(port)) as second:
        assert second.port == port


def test_max_clients_option() -> None:
    """--max-clients 1: the second client is refused with the 'full' line, which a raw client reads."""
    with CliServer("tcp-server", "--port", "0", "--max-clients", "1") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.recv(100)
            with socket.create_connection(("127.0.0.1", server.port)) as refused:
                assert recv_until_closed(refused) == b"server is full, try again later\n"
            server.out.wait_for(r"Refused 127\.0\.0\.1:\d+: server is full \(1 client\)$")


def test_refused_tcp_client_exits_1_with_the_reason_on_stderr() -> None:
    """A refusal line from a socketlab server (tcp-server full, --max-per-ip, chat full) is an error, not output."""
    with CliServer("tcp-server", "--port", "0", "--max-clients", "1") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.recv(100)
            result = run_cli("tcp-client", "--port", str(server.port), "hi")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"Connected to Server 127.0.0.1:{server.port}",
        f"Error: refused by 127.0.0.1:{server.port}: server is full, try again later",
    ]
    with CliServer("tcp-server", "--port", "0", "--max-per-ip", "1") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.recv(100)
            result = run_cli("tcp-client", "--port", str(server.port), "hi")
        server.out.wait_for(r"Refused 127\.0\.0\.1:\d+: 1 connection from that address already$")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().splitlines()[-1] == (
        f"Error: refused by 127.0.0.1:{server.port}: too many connections from your address, try again later"
    )
    with CliServer("chat", "serve", "--port", "0", "--max-clients", "1") as chat:
        with socket.create_connection(("127.0.0.1", chat.port)) as held:
            held.recv(100)
            result = run_cli("tcp-client", "--port", str(chat.port), "hi")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().splitlines()[-1] == f"Error: refused by 127.0.0.1:{chat.port}: server full"


def test_a_reply_that_only_starts_like_a_refusal_is_output() -> None:
    """Lines that merely begin like a refusal, or more after one, are the server's output: exit 0."""
    with CliServer("tcp-server", "--port", "0", "--echo", "--welcome", "") as server:
        for text in (b"server is", b"server is full\nand more\n", b"too many cooks\n"):
            result = run_cli("tcp-client", "--port", str(server.port), input=text)
            assert (result.returncode, result.stdout) == (0, text)


def test_empty_welcome_and_client_reset() -> None:
    """--welcome '' sends nothing; a tab is logged escaped, as the help says; a reset client is logged and the server goes on."""
    with CliServer("tcp-server", "--port", "0", "--welcome", "") as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"a\tbc")
        server.out.wait_for(r"Get message from client .*: a\\tbc$")  # the tab escaped, as it says
        close_with_reset(sock)
        server.out.wait_for(r"Client disconnected .* \(connection reset by peer, 4 bytes received\)")
        result = run_cli("tcp-client", "--port", str(server.port), "x")
        assert result.returncode == 0 and result.stdout == b""


def test_port_in_use_is_one_line_error() -> None:
    """A taken port: one 'Error:' line naming host and port, exit 1."""
    with CliServer("tcp-server", "--port", "0") as server:
        result = run_cli("tcp-server", "--port", str(server.port))
        assert_one_line_error(result, f"Error: cannot listen on 127.0.0.1:{server.port}: address already in use")


def test_unknown_host_errors() -> None:
    """Unknown hosts in both commands: one line, exit 1."""
    result = run_cli("tcp-server", "--host", "nosuch.invalid", "--port", "0")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: cannot listen on nosuch.invalid:0: unknown host")
    result = run_cli("tcp-client", "--host", "nosuch.invalid", "--port", "5")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: cannot connect to nosuch.invalid:5: unknown host")
    assert len(result.stderr.splitlines()) == 1


def test_address_not_on_this_machine() -> None:
    """Binding an address this machine does not have is a one-line error."""
    result = run_cli("tcp-server", "--host", "192.0.2.1", "--port", "0")
    assert_one_line_error(result, "Error: cannot listen on 192.0.2.1:0: address not available on this machine")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind privileged ports")
def test_permission_denied() -> None:
    """A privileged port without privileges: one line, exit 1."""
    result = run_cli("tcp-server", "--port", "1")
    assert_one_line_error(result, "Error: cannot listen on 127.0.0.1:1: permission denied")


def test_connection_refused() -> None:
    """Nobody listening: one line naming the address, exit 1."""
    port = free_port()
    result = run_cli("tcp-client", "--port", str(port), "hi")
    assert_one_line_error(result, f"Error: cannot connect to 127.0.0.1:{port}: connection refused")


def test_connect_timeout() -> None:
    """A listener whose queue is full never answers: --timeout ends the wait, exit 1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue until SYNs are dropped
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            result = run_cli("tcp-client", "--port", str(port), "--timeout", "0.3", "hi")
        finally:
            for s in fillers:
                s.close()
    assert_one_line_error(result, f"Error: cannot connect to 127.0.0.1:{port}: timed out")


def test_bad_option_values_exit_2_without_traceback() -> None:
    """Click rejects a bad port with usage text, exit 2, no traceback."""
    result = run_cli("tcp-server", "--port", "70000")
    assert result.returncode == 2
    assert b"Invalid value for '--port'" in result.stderr
    assert b"Traceback" not in result.stderr


def test_environment_variables_set_host_and_port() -> None:
    """SOCKETLAB_HOST and SOCKETLAB_PORT work for both commands."""
    port = free_port()
    env = {"SOCKETLAB_HOST": "127.0.0.1", "SOCKETLAB_PORT": str(port)}
    with CliServer("tcp-server", env=env) as server:
        assert server.port == port
        result = run_cli("tcp-client", "ping", env=env)
        assert result.stdout == b"Welcome to Socket Server\n"


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this machine")
def test_ipv6_both_commands() -> None:
    """--host ::1 works for server and client; addresses are bracketed."""
    with CliServer("tcp-server", "--host", "::1", "--port", "0", "--echo") as server:
        result = run_cli("tcp-client", "--host", "::1", "--port", str(server.port), "v6")
        assert result.stdout == b"Welcome to Socket Server\nv6\n"
        assert result.stderr.decode().splitlines()[0] == f"Connected to Server [::1]:{server.port}"
        server.out.wait_for(r"^Client connected \[::1\]:\d+$")


def test_version_and_help_have_examples() -> None:
    """--version prints the version; each command's --help shows an example."""
    from socketlab import __version__

    result = run_cli("--version")
    assert result.stdout.decode().strip() == f"socketlab, version {__version__}"
    commands = [
        "tcp-server",
        "tcp-client",
        "chat serve",
        "chat connect",
        "udp-recv",
        "udp-send",
        "demo",
        "bench chat",
        "bench tcp",
        "bench udp",
    ]
    for command in commands:
        help_text = run_cli(*command.split(), "--help").stdout.decode()
        assert "Example" in help_text and f"socketlab {command}" in help_text, command


def test_server_keeps_serving_when_its_log_reader_goes_away() -> None:
    """`socketlab tcp-server | head -1`: no traceback, clients still served, clean stop."""
    proc = subprocess.Popen(CLI + ["tcp-server", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline().decode()
        port = int(first.rsplit(":", 1)[1])
        proc.stdout.close()  # the reader of the log is gone
        for _ in range(3):
            assert run_cli("tcp-client", "--port", str(port), "hi").stdout == b"Welcome to Socket Server\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_unwritable_output_is_one_line_error() -> None:
    """stdout on a full device: help, the demo and tcp-client say so in one line, exit 1."""
    with open("/dev/full", "wb") as full:
        for args in (["--help"], ["demo"]):
            result = subprocess.run(CLI + args, stdout=full, stderr=subprocess.PIPE, timeout=TIMEOUT)
            assert result.returncode == 1
            assert result.stderr.decode().splitlines() == ["Error: cannot write output: No space left on device"]
        with CliServer("tcp-server", "--port", "0") as server:
            result = subprocess.run(
                CLI + ["tcp-client", "--port", str(server.port), "hi"], stdout=full, stderr=subprocess.PIPE, timeout=TIMEOUT
            )
        assert result.returncode == 1
        assert result.stderr.decode().splitlines()[-1] == "Error: cannot write output: No space left on device"
        assert b"Traceback" not in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_server_whose_log_cannot_be_written_says_so_once_and_serves() -> None:
    """tcp-server logging to a full device: one line on stderr, clients still served, clean stop."""
    port = free_port()
    with open("/dev/full", "wb") as full:
        proc = subprocess.Popen(CLI + ["tcp-server", "--port", str(port)], stdout=full, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: run_cli("tcp-client", "--port", str(port), "hi").returncode == 0, what="server answering")
        assert run_cli("tcp-client", "--port", str(port), "again").stdout == b"Welcome to Socket Server\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr.read().decode().splitlines() == [
            "socketlab: cannot write the log to stdout (No space left on device); going on without it"
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def test_demo_into_a_closed_pipe_ends_quietly() -> None:
    """`socketlab demo | head -1`: status 1, nothing on stderr."""
    proc = subprocess.Popen(CLI + ["demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b"== TCP")
        proc.stdout.close()
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 1
        assert err == b""
    finally:
        if proc.poll() is None:
            proc.kill()


# -- ncat's everyday jobs -----------------------------------------------------------


def test_output_file_once_receives_byte_exact_and_exits_0(tmp_path) -> None:
    """--once --output FILE: no welcome, the client's bytes in FILE unchanged, the server exits 0 when it ends."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    target = tmp_path / "received.bin"
    with CliServer("tcp-server", "--port", "0", "--once", "--output", str(target)) as server:
        result = run_cli("tcp-client", "--port", str(server.port), input=data)
        assert (result.returncode, result.stdout) == (0, b"")
        assert server.proc.wait(TIMEOUT) == 0
        rest = server.out.rest()
    assert target.read_bytes() == data
    assert rest[-2:] == [f"Client disconnected {rest[0].split()[-1]} (3145745 bytes received)", "Server closed"]
    assert not any(line.startswith("Get message") for line in rest)  # payloads are in the file, not the log


def test_output_to_stdout_is_only_the_data() -> None:
    """--output -: stdout carries exactly the bytes received; the log goes to stderr."""
    data = bytes(range(256)) * 1000
    server = subprocess.Popen(
        CLI + ["tcp-server", "--port", "0", "--once", "--output", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        log = LineReader(server.stderr)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(server.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        port = int(log.wait_for(r"listening on .*:(\d+)$").group(1))
        assert run_cli("tcp-client", "--port", str(port), input=data).returncode == 0
        assert server.wait(TIMEOUT) == 0
        reader.join(TIMEOUT)
        assert received == [data]
        log.wait_for("^Server closed$")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(TIMEOUT)


def test_output_takes_one_client_at_a_time_and_appends_the_next(tmp_path) -> None:
    """With --output a second client is refused while one sends; the next one after it is appended."""
    target = tmp_path / "all.bin"
    with CliServer("tcp-server", "--port", "0", "--output", str(target)) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as first:
            first.sendall(b"first\n")
            server.out.wait_for(r"^Client connected")
            busy = run_cli("tcp-client", "--port", str(server.port), "second")
            assert busy.returncode == 1
            assert busy.stderr.decode().splitlines()[-1].endswith(": server is full, try again later")
            first.shutdown(socket.SHUT_WR)
            assert recv_until_closed(first) == b""
        assert run_cli("tcp-client", "--port", str(server.port), "third").returncode == 0
        server.out.wait_for(r"\(6 bytes received\)$")
        assert server.stop()[0] == 0
    assert target.read_bytes() == b"first\nthird\n"


def test_once_serves_one_connection_then_exits() -> None:
    """--once: after its one client ends, the server closes and exits 0 (the default keeps serving)."""
    with CliServer("tcp-server", "--port", "0", "--once", "--echo", "--welcome", "") as server:
        assert run_cli("tcp-client", "--port", str(server.port), "one").stdout == b"one\n"
        assert server.proc.wait(TIMEOUT) == 0
        assert server.out.rest()[-1] == "Server closed"
        assert run_cli("tcp-client", "--port", str(server.port), "two").returncode == 1  # nobody listens now


PROGRAM = (
    "import os, sys\n"
    "line = sys.stdin.readline()\n"
    "sys.stdout.write(os.environ['SOCKETLAB_PEER'] + ' ' + line.upper())\n"
    "sys.stdout.flush()\n"
    "sys.exit(3 if line.startswith('three') else 0)\n"
)


def exec_option(code: str) -> str:
    """--exec's value: this Python running *code*, quoted as a user would quote it."""
    import shlex

    return shlex.join([sys.executable, "-c", code])


def test_exec_runs_a_program_per_connection_with_the_socket_as_stdin_and_stdout() -> None:
    """--exec: each client talks to its own program (no shell), whose exit status is logged."""
    with CliServer("tcp-server", "--port", "0", "--exec", exec_option(PROGRAM)) as server:
        first = run_cli("tcp-client", "--port", str(server.port), "hello there; ls")
        assert first.returncode == 0
        assert first.stdout.decode().endswith(" HELLO THERE; LS\n")  # the program's, not a shell's, reading
        assert first.stdout.decode().startswith("127.0.0.1:")  # SOCKETLAB_PEER
        server.out.wait_for(r"^Client disconnected 127\.0\.0\.1:\d+ \(python\S* exited with status 0\)$")
        assert run_cli("tcp-client", "--port", str(server.port), "three").stdout.endswith(b" THREE\n")
        server.out.wait_for(r"\(python\S* exited with status 3\)$")
        assert server.stop()[0] == 0


def test_exec_is_bounded_by_max_clients_and_ends_its_programs_on_sigterm() -> None:
    """--exec, --max-clients 1: the next client is refused; SIGTERM ends even a program that ignores it, within a second."""
    stubborn = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    with CliServer("tcp-server", "--port", "0", "--max-clients", "1", "--exec", exec_option(stubborn)) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.settimeout(TIMEOUT)
            assert held.makefile("rb").readline() == b"ready\n"
            pid = int(server.out.wait_for(r"^Running python\S* for .* \(pid (\d+)\)$").group(1))
            refused = run_cli("tcp-client", "--port", str(server.port), "hi")
            assert refused.returncode == 1 and refused.stderr.decode().endswith(": server is full, try again later\n")
            status, seconds = server.stop(signal.SIGTERM)
            assert status == 0 and seconds < 1.0
        rest = server.out.rest()
    assert rest[-1] == "Server closed"
    assert re.fullmatch(r"Client disconnected 127\.0\.0\.1:\d+ \(python\S* killed by SIGKILL\)", rest[-2]), rest
    with pytest.raises(ProcessLookupError):  # reaped, not left behind
        os.kill(pid, 0)


def test_exec_of_a_missing_program_is_one_line_error() -> None:
    """--exec naming no program that exists: one line, exit 1, before anything listens."""
    result = run_cli("tcp-server", "--port", "0", "--exec", "no-such-program-here --flag")
    assert_one_line_error(result, "Error: cannot run 'no-such-program-here': no such executable program (not in PATH)")


def test_client_hex_dump_with_running_offsets() -> None:
    """tcp-client --hex prints a hex dump of what arrives instead of the bytes."""
    data = bytes(range(20))
    with CliServer("tcp-server", "--port", "0", "--echo", "--welcome", "") as server:
        result = run_cli("tcp-client", "--port", str(server.port), "--hex", input=data)
    assert result.returncode == 0
    rows = result.stdout.decode().splitlines()
    offsets = [int(row.split()[0], 16) for row in rows]
    assert offsets[0] == 0 and offsets == sorted(offsets) and rows[-1].startswith(f"{offsets[-1]:08x}  ")
    dumped = bytes(int(byte, 16) for row in rows for byte in row[10:57].split())
    assert dumped == data


def test_client_idle_timeout_ends_a_quiet_connection_with_status_0() -> None:
    """-w SECONDS: a connection where nothing moves for that long is ended, exit 0, and said so."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            CLI + ["tcp-client", "--port", str(port), "-w", "0.3", "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"hello\n")  # then silence; the server never closes
                out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    assert proc.returncode == 0
    assert out == b"hello\n"
    assert err.decode().splitlines()[-2:] == ["Nothing sent or received for 0.3 s: disconnecting", "Disconnected from Server"]


def test_client_source_address_and_port() -> None:
    """--source ADDR[:PORT] binds the local side: the server sees the connection come from there."""
    source_port = free_port()
    with CliServer("tcp-server", "--port", "0") as server:
        result = run_cli("tcp-client", "--port", str(server.port), "--source", f"127.0.0.2:{source_port}", "hi")
        assert result.returncode == 0, result.stderr
        server.out.wait_for(rf"^Client connected 127\.0\.0\.2:{source_port}$")
        result = run_cli("tcp-client", "--port", str(server.port), "--source", "127.0.0.3", "hi")
        server.out.wait_for(r"^Client connected 127\.0\.0\.3:\d+$")
        wrong = run_cli("tcp-client", "--port", str(server.port), "--source", "192.0.2.1", "hi")
    assert_one_line_error(
        wrong, f"Error: cannot use 192.0.2.1 as the source for 127.0.0.1:{server.port}: address not available on this machine"
    )


def test_client_crlf_ends_every_line_in_crlf() -> None:
    """--crlf: LF becomes CRLF in what is sent (stdin and MESSAGE); a CRLF stays one."""
    for args, data, expected in (
        (["--crlf"], b"a\nb\r\nc", b"a\r\nb\r\nc"),
        (["--crlf", "hello"], None, b"hello\r\n"),
    ):
        server = subprocess.Popen(
            CLI + ["tcp-server", "--port", "0", "--once", "--output", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            port = int(LineReader(server.stderr).wait_for(r"listening on .*:(\d+)$").group(1))
            assert run_cli("tcp-client", "--port", str(port), *args, input=data).returncode == 0
            out, _ = server.communicate(timeout=TIMEOUT)
            assert out == expected
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(TIMEOUT)


def test_ctrl_c_in_tcp_client_exits_130_quietly() -> None:
    """Ctrl-C (SIGINT) in tcp-client: status 130, no 'Aborted!', no traceback."""
    with CliServer("tcp-server", "--port", "0") as server:
        proc = subprocess.Popen(
            CLI + ["tcp-client", "--port", str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"Welcome to Socket Server\n"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    assert proc.returncode == 130
    assert err.decode().splitlines() == [f"Connected to Server 127.0.0.1:{server.port}"]


# -- UNIX domain sockets ----------------------------------------------------------------


class UnixCliServer(CliServer):
    """A server command listening on a UNIX socket: ready once it names its path."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            CLI + list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.out = LineReader(self.proc.stdout)
        self.path = self.out.wait_for(r"listening on (/.*)$").group(1)


def test_unix_socket_server_and_client(tmp_path) -> None:
    """--unix PATH on both ends: the file is 0600, peers are named unix#N, the file is gone after exit."""
    path = str(tmp_path / "s.sock")
    with UnixCliServer("tcp-server", "--unix", path, "--echo") as server:
        assert os.stat(path).st_mode & 0o777 == 0o600
        result = run_cli("tcp-client", "--unix", path, "over unix")
        assert result.returncode == 0
        assert result.stdout == b"Welcome to Socket Server\nover unix\n"
        assert result.stderr.decode().splitlines()[0] == f"Connected to Server {path}"
        server.out.wait_for(r"^Client connected unix#1$")
        server.out.wait_for(r"^Client disconnected unix#1 \(10 bytes received\)$")
        assert server.stop()[0] == 0
    assert not os.path.exists(path)


def test_unix_socket_file_stale_replaced_live_refused_mode_chosen(tmp_path) -> None:
    """A stale socket file is replaced, a live one refused in one line; --unix-mode sets the permissions."""
    import stat

    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as dead:  # a server that died: the file stays, nobody accepts
        dead.bind(path)
    with UnixCliServer("tcp-server", "--unix", path, "--unix-mode", "660"):
        assert stat.S_ISSOCK(os.stat(path).st_mode) and os.stat(path).st_mode & 0o777 == 0o660
        second = run_cli("tcp-server", "--unix", path)
        assert_one_line_error(second, f"Error: cannot listen on {path}: a server is listening there already")
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    result = run_cli("tcp-server", "--unix", str(plain))
    assert_one_line_error(
        result, f"Error: cannot listen on {plain}: a file that is not a socket is in the way; remove it or choose another path"
    )
    assert plain.read_text() == "keep me"
    result = run_cli("tcp-client", "--unix", str(tmp_path / "none.sock"), "hi")
    assert_one_line_error(result, f"Error: cannot connect to {tmp_path / 'none.sock'}: no such socket file")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_cannot_be_written_stops_the_server_with_one_error_line() -> None:
    """--output on a full device: the server says why once, stops and exits 1."""
    with CliServer("tcp-server", "--port", "0", "--output", "/dev/full") as server:
        run_cli("tcp-client", "--port", str(server.port), "hi")
        assert server.proc.wait(TIMEOUT) == 1
        server.out.wait_for("^Cannot write the output: no space left on device; stopping$")
        assert server.proc.stderr.read().decode() == "Error: cannot write output: No space left on device\n"  # type: ignore[union-attr]
