"""``socketlab tcp-server`` and ``tcp-client`` run the way a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from support import CLI, TIMEOUT, CliServer, has_ipv6, recv_until_closed, run_cli, wait_until


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
    """--max-clients 1: the second client reads the 'full' line and is closed."""
    with CliServer("tcp-server", "--port", "0", "--max-clients", "1") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.recv(100)
            result = run_cli("tcp-client", "--port", str(server.port))
            assert result.stdout == b"server is full, try again later\n"
            server.out.wait_for(r"Refused 127\.0\.0\.1:\d+: server is full \(1 clients\)")


def test_empty_welcome_and_client_reset() -> None:
    """--welcome '' sends nothing; a reset client is logged and the server goes on."""
    import struct

    with CliServer("tcp-server", "--port", "0", "--welcome", "") as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"abc")
        server.out.wait_for(r"Get message from client .*: abc$")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        server.out.wait_for(r"Client disconnected .* \(connection reset by peer, 3 bytes received\)")
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
