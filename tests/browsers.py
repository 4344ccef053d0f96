"""Debian's Chromium for the browser tests, driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, sync_playwright  # noqa: E402

from support import TIMEOUT  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
if CHROMIUM is None:
    pytest.skip("no chromium executable on this machine (the test never downloads a browser)", allow_module_level=True)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Playwright waits are in milliseconds.
WAIT = TIMEOUT * 1000


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium (conftest's ``browser`` fixture)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
