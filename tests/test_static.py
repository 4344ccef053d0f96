"""StaticFolder: a user's page folder served read-only; nothing outside it, nothing hidden, nothing odd."""

from __future__ import annotations

import os
import pathlib

import pytest

from socketlab.static import MAX_FILE, StaticFolder


@pytest.fixture
def site(tmp_path: pathlib.Path) -> tuple[StaticFolder, pathlib.Path]:
    """A folder with a page, a script, a hidden file and the Socket.IO client bundle; a secret beside it."""
    root = tmp_path / "site"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<p>rooms</p>")
    (root / "js" / "app.js").write_bytes(b"io();")
    (root / ".env").write_bytes(b"SECRET=1")
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_bytes(b"[core]")
    dist = root / "node_modules" / "socket.io" / "client-dist"
    dist.mkdir(parents=True)
    (dist / "socket.io.js").write_bytes(b"/* client */")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    return StaticFolder(root), root


def test_pages_and_their_types(site) -> None:
    """/ is index.html; each file comes with its type from the table."""
    folder, _ = site
    assert folder.lookup("/") == (b"<p>rooms</p>", "text/html; charset=utf-8")
    assert folder.lookup("/index.html") == (b"<p>rooms</p>", "text/html; charset=utf-8")
    assert folder.lookup("/js/app.js") == (b"io();", "text/javascript; charset=utf-8")
    assert folder.lookup("/js/%61pp.js") == (b"io();", "text/javascript; charset=utf-8")


def test_the_client_bundle_comes_from_node_modules(site) -> None:
    """/socket.io/socket.io.js is node_modules/socket.io/client-dist/socket.io.js, as the JS server serves it."""
    folder, _ = site
    assert folder.lookup("/socket.io/socket.io.js") == (b"/* client */", "text/javascript; charset=utf-8")
    assert folder.lookup("/socket.io/socket.io.min.js") is None  # not installed in this folder
    assert folder.lookup("/socket.io/other.js") is None
    assert folder.lookup("/socket.io/x/socket.io.js") is None
    assert folder.has_client is False


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/js/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/js/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/.env",
        "/%2eenv",
        "/.git/config.txt",
        "/js/./app.js",
        "//etc/passwd",
        "/js//app.js",
        "/js\\app.js",
        "/index.html%00.js",
        "/%ff.html",
        "index.html",
        "/js",
        "/js/",
        "/missing.html",
    ],
)
def test_paths_that_are_refused(site, path: str) -> None:
    """Traversal (plain or encoded), dot-files, empty or dot segments, backslashes, NUL, bad UTF-8, folders."""
    folder, _ = site
    assert folder.lookup(path) is None


def test_symlinks_out_of_the_folder_are_refused_and_inside_it_followed(site, tmp_path) -> None:
    folder, root = site
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "linked").symlink_to(tmp_path)
    (root / "same.html").symlink_to(root / "index.html")
    assert folder.lookup("/out.txt") is None
    assert folder.lookup("/linked/secret.txt") is None
    assert folder.lookup("/same.html") == (b"<p>rooms</p>", "text/html; charset=utf-8")


def test_only_regular_files_of_known_types_and_bounded_size(site) -> None:
    """A FIFO is never opened for reading (no hang), unknown suffixes and oversized files are not served."""
    folder, root = site
    os.mkfifo(root / "pipe.html")
    (root / "script.sh").write_bytes(b"rm -rf /")
    (root / "big.js").write_bytes(b"x" * (MAX_FILE + 1))
    (root / "fits.js").write_bytes(b"x" * MAX_FILE)
    assert folder.lookup("/pipe.html") is None
    assert folder.lookup("/script.sh") is None
    assert folder.lookup("/big.js") is None
    assert folder.lookup("/fits.js") == (b"x" * MAX_FILE, "text/javascript; charset=utf-8")


def test_a_root_that_is_not_a_folder_is_refused(tmp_path) -> None:
    with pytest.raises(NotADirectoryError):
        StaticFolder(tmp_path / "nothing")
