"""A folder of a user's own web page, served read-only: ``chat serve --web-root DIR``.

Every URL path is checked before it comes near the file system: it is
percent-decoded once, then refused if any segment is empty, ``.``, ``..``,
starts with a dot (``.git``, ``.env``) or holds a backslash or NUL. What is
left is opened relative to the folder, and served only when the real path
(symlinks resolved) is still inside the folder, the opened file is a regular
file, its suffix is in :data:`TYPES` and it is at most :data:`MAX_FILE` bytes.
Anything else is "not found": the answer never says which rule refused.

The Socket.IO client bundle is served as the JavaScript server serves it:
``/socket.io/socket.io.js`` (and the other names in :data:`CLIENT_FILES`)
come from ``node_modules/socket.io/client-dist/`` in the folder, where
``npm i socket.io`` puts them. socketlab does not ship the bundle itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote

#: Suffix -> Content-Type. A file with any other suffix is not served.
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
#: Largest file served (the Socket.IO bundle's largest source map is about 310 KB).
MAX_FILE = 1024 * 1024
#: The Socket.IO client files served at ``/socket.io/NAME`` (the JavaScript server's list).
CLIENT_FILES = frozenset(
    f"socket.io{variant}{suffix}" for variant in (".", ".min.", ".esm.min.", ".msgpack.min.") for suffix in ("js", "js.map")
)
#: Where ``npm i socket.io`` puts them, relative to the folder.
CLIENT_DIST = ("node_modules", "socket.io", "client-dist")


class StaticFolder:
    """Files of one folder by URL path; see the module docstring for what is refused."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")

    def lookup(self, url_path: str) -> tuple[bytes, str] | None:
        """The body and Content-Type for *url_path* (no query), or None: not found, whatever the reason."""
        segments = self._segments(url_path)
        if segments is None:
            return None
        if segments[:1] == ["socket.io"]:  # only the client bundle lives under /socket.io/
            if len(segments) != 2 or segments[1] not in CLIENT_FILES:
                return None
            segments = [*CLIENT_DIST, segments[1]]
        return self._read(segments)

    @property
    def has_client(self) -> bool:
        """Whether the folder holds the Socket.IO client bundle."""
        return self._read([*CLIENT_DIST, "socket.io.min.js"]) is not None

    @staticmethod
    def _segments(url_path: str) -> list[str] | None:
        if not url_path.startswith("/"):
            return None
        try:
            path = unquote(url_path, errors="strict") if "%" in url_path else url_path
        except UnicodeDecodeError:
            return None
        if path.endswith("/"):
            path += "index.html"
        segments = path[1:].split("/")
        for segment in segments:
            if not segment or segment.startswith(".") or "\\" in segment or "\x00" in segment:
                return None
        return segments

    def _read(self, segments: list[str]) -> tuple[bytes, str] | None:
        kind = TYPES.get(os.path.splitext(segments[-1])[1].lower())
        if kind is None:
            return None
        candidate = os.path.realpath(os.path.join(self.root, *segments))
        if os.path.commonpath([candidate, self.root]) != str(self.root):
            return None  # a symlink out of the folder
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except (OSError, ValueError):
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE:
                return None
            with os.fdopen(os.dup(fd), "rb") as file:
                body = file.read(MAX_FILE + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        return (body, kind) if len(body) <= MAX_FILE else None
