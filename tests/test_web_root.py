"""`chat serve --web-root FOLDER`: the user's own page (the tutorial's Socket.IO project) on the web port."""

from __future__ import annotations

import pathlib
import shutil
import socket

import pytest
import socketio

from support import TIMEOUT, CliServer, Peer, recv_until_closed

pytestmark = pytest.mark.timeout(30)

HERE = pathlib.Path(__file__).parent
EXAMPLE = HERE.parent / "docs" / "examples" / "socketio_rooms"
#: The client bundle that `npm i socket.io` installs (tests/js pins it; `npm ci --prefix tests/js`).
CLIENT_DIST = HERE / "js" / "node_modules" / "socket.io" / "client-dist"


def tutorial_folder(tmp_path: pathlib.Path, with_client: bool = True) -> pathlib.Path:
    """The example page in a folder of its own, with the Socket.IO client where npm would put it."""
    folder = tmp_path / "chat_example_join"
    folder.mkdir()
    shutil.copy(EXAMPLE / "index.html", folder / "index.html")
    if with_client:
        if not CLIENT_DIST.is_dir():
            pytest.skip("run `npm ci --prefix tests/js` first (the Socket.IO client bundle)")
        shutil.copytree(CLIENT_DIST, folder / "node_modules" / "socket.io" / "client-dist")
    (folder / ".env").write_text("SECRET=1\n")
    return folder


def raw_get(port: int, target: str) -> tuple[int, bytes, bytes]:
    """GET *target* exactly as written (no client normalises it): status, head, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = recv_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_the_folder_is_served_and_nothing_outside_it(web_chat, tmp_path) -> None:
    """The folder's page at /, the client bundle at /socket.io/socket.io.js, 404 for anything else."""
    folder = tutorial_folder(tmp_path)
    server = web_chat(web_root=str(folder))
    port = server.web_address[1]
    status, head, body = raw_get(port, "/")
    assert status == 200
    assert body == (folder / "index.html").read_bytes()
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert b"Content-Security-Policy" not in head  # the user's page is theirs
    status, head, body = raw_get(port, "/socket.io/socket.io.js")
    assert (status, body) == (200, (CLIENT_DIST / "socket.io.js").read_bytes())
    assert b"Content-Type: text/javascript; charset=utf-8" in head
    for target in ("/.env", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/node_modules/"):
        assert raw_get(port, target)[0] == 404, target
    # Engine.IO still answers beside the files.
    status, _, body = raw_get(port, "/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b'0{"sid":')


def test_without_a_folder_the_client_bundle_is_explained(web_chat) -> None:
    """socketlab ships no Socket.IO client: asking for it says how to serve one."""
    server = web_chat()
    status, _, body = raw_get(server.web_address[1], "/socket.io/socket.io.js")
    assert status == 404
    assert b"--web-root FOLDER" in body and b"npm i socket.io" in body


def test_the_tutorial_project_runs_on_chat_serve(tmp_path) -> None:
    """As a user runs it: the tutorial's folder on `chat serve --web-root`, a Socket.IO client and nc in one room."""
    folder = tutorial_folder(tmp_path, with_client=False)
    with CliServer(
        "chat", "serve", "--port", "0", "--room-size", "2", "--web", "0", "--web-root", str(folder),
        ready=r"listening on (?:.*):(\d+)$",
    ) as cli:  # fmt: skip
        web = int(cli.out.wait_for(r"Web chat on http://\S+:(\d+)/$").group(1))
        assert raw_get(web, "/")[2] == (folder / "index.html").read_bytes()
        client = socketio.SimpleClient(reconnection=False)
        client.connect(f"http://127.0.0.1:{web}", wait_timeout=TIMEOUT)
        try:
            client.receive(timeout=TIMEOUT)  # the welcome notice
            assert client.call("room", "r1", timeout=TIMEOUT) == "ok"
            nc = Peer(cli.port)
            nc.send(b"/join r1\n")
            nc.until("* you are in r1")
            client.emit("chat message", "hello from the page")
            assert nc.until("<user1> hello from the page")
            nc.send(b"hello from nc\n")
            while (event := client.receive(timeout=TIMEOUT))[0] != "chat message" or "nc" not in event[1]:
                pass
            assert event == ["chat message", "<user2> hello from nc"]
            nc.close()
        finally:
            client.disconnect()


def test_web_root_needs_web(tmp_path) -> None:
    """--web-root alone is a usage error, one line, exit 2."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "socketlab", "chat", "serve", "--web-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "Error: --web-root needs --web PORT: the folder is served on the web address."
