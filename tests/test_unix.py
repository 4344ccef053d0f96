"""UNIX domain sockets: the socket file's life (mode, stale, live, removal) and the servers that listen on one."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from typing import Iterator

import pytest

from socketlab.errors import AddressError
from socketlab.tcp import WelcomeServer
from socketlab.unix import UnixAddress, connect_unix, open_unix_listener
from support import CLI, TIMEOUT, LineReader, recv_until_closed, serving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def folder() -> Iterator[str]:
    """A short folder: UNIX socket paths are limited to 107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sl-") as path:
        yield path


def test_listener_file_has_the_mode_from_the_start_and_goes_when_closed(folder) -> None:
    """The socket file is 0600 (or the mode asked), the umask left as it was; closing removes it."""
    path = os.path.join(folder, "a.sock")
    umask = os.umask(0)
    os.umask(umask)
    listener = open_unix_listener(UnixAddress(path))
    assert stat.S_ISSOCK(os.stat(path).st_mode) and os.stat(path).st_mode & 0o777 == 0o600
    assert os.umask(umask) == umask
    listener.close()
    assert not os.path.exists(path)
    with open_unix_listener(UnixAddress(path, 0o666)):
        assert os.stat(path).st_mode & 0o777 == 0o666
    assert not os.path.exists(path)


def test_closing_removes_only_its_own_file(folder) -> None:
    """A listener whose file was replaced meanwhile (a newer server) leaves the new file alone."""
    path = os.path.join(folder, "b.sock")
    old = open_unix_listener(UnixAddress(path))
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as newer:
        newer.bind(path)
        old.close()
        assert os.path.exists(path)


def test_stale_file_replaced_live_refused_other_files_kept(folder) -> None:
    """Nobody listening: replaced. Somebody listening: AddressError. Not a socket: never touched."""
    path = os.path.join(folder, "c.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)
    with open_unix_listener(UnixAddress(path)):
        with pytest.raises(AddressError, match="^cannot listen on .*c.sock: a server is listening there already$"):
            open_unix_listener(UnixAddress(path))
    other = os.path.join(folder, "notes.txt")
    with open(other, "w") as file:
        file.write("mine")
    with pytest.raises(AddressError, match="a file that is not a socket is in the way"):
        open_unix_listener(UnixAddress(other))
    with open(other) as file:
        assert file.read() == "mine"
    with pytest.raises(AddressError, match="^cannot listen on .*: "):
        open_unix_listener(UnixAddress(os.path.join(folder, "missing", "d.sock")))
    with pytest.raises(AddressError, match="^cannot connect to .*e.sock: no such socket file$"):
        connect_unix(os.path.join(folder, "e.sock"))


def test_welcome_server_on_a_unix_socket_names_peers_unix_n(folder, caplog) -> None:
    """WelcomeServer(UnixAddress): clients connect by path; the log names them unix#1, unix#2."""
    import logging

    caplog.set_level(logging.INFO, logger="socketlab")
    path = os.path.join(folder, "w.sock")
    with WelcomeServer(UnixAddress(path), echo=True) as server, serving(server):
        assert server.address_text == path
        for _ in range(2):
            with connect_unix(path) as sock:
                sock.sendall(b"hi\n")
                sock.shutdown(socket.SHUT_WR)
                assert recv_until_closed(sock) == b"Welcome to Socket Server\nhi\n"
    messages = [record.getMessage() for record in caplog.records]
    assert "Client connected unix#1" in messages and "Client connected unix#2" in messages
    assert not os.path.exists(path)


def test_chat_serve_unix_replaces_the_tcp_listener_and_access_rules_do_not_apply(folder) -> None:
    """chat serve --unix PATH: line clients connect to the file; --allow (for addresses) does not shut them out."""
    path = os.path.join(folder, "chat.sock")
    proc = subprocess.Popen(
        CLI + ["chat", "serve", "--unix", path, "--allow", "192.0.2.0/24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        log = LineReader(proc.stdout)
        log.wait_for(rf"^Server is listening on {path}$")
        assert os.stat(path).st_mode & 0o777 == 0o600
        with connect_unix(path) as sock:
            sock.settimeout(TIMEOUT)
            lines = sock.makefile("rb")
            assert lines.readline().startswith(b"* welcome user1")
            log.wait_for(r"^Client connected unix#1 as user1$")
            sock.sendall(b"/quit\n")
            recv_until_closed(sock)
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
        assert log.rest()[-1] == "Server closed"
        assert not os.path.exists(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            stream.close()  # type: ignore[union-attr]


def test_program_server_on_a_unix_socket(folder) -> None:
    """ProgramServer listens on a UNIX socket too; its program reads the connection as stdin."""
    import sys

    from socketlab.programs import ProgramServer

    path = os.path.join(folder, "p.sock")
    code = "import os, sys; sys.stdout.write(os.environ['SOCKETLAB_PEER'] + ':' + sys.stdin.read())"
    with ProgramServer(UnixAddress(path), [sys.executable, "-c", code]) as server, serving(server):
        with connect_unix(path) as sock:
            sock.sendall(b"abc")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_closed(sock) == b"unix#1:abc"


def test_tls_over_a_unix_socket_checks_the_certificate_for_host(folder, tmp_path) -> None:
    """tcp-client --unix --tls verifies the server's certificate against --host: localhost passes, another name fails."""
    pytest.importorskip("trustme")
    from certs import make_certs
    from support import run_cli

    certs = make_certs(tmp_path)
    path = os.path.join(folder, "t.sock")
    with WelcomeServer(UnixAddress(path), tls=certs.server_context()) as server, serving(server):
        good = run_cli("tcp-client", "--unix", path, "--tls-ca", certs.ca, "--host", "localhost", "hi")
        assert good.returncode == 0, good.stderr
        assert good.stdout == b"Welcome to Socket Server\n"
        assert good.stderr.decode().splitlines()[0] == f"Connected to Server {path} (TLS)"
        wrong = run_cli("tcp-client", "--unix", path, "--tls-ca", certs.ca, "--host", "example.org", "hi")
        assert wrong.returncode == 1
        assert wrong.stderr.decode().startswith(f"Error: TLS handshake with {path} failed: ")
