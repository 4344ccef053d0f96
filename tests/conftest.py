import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import contextlib  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import pytest  # noqa: E402

from support import serving  # noqa: E402


@pytest.fixture
def web_chat() -> Iterator[Any]:
    """A running ChatServer factory with a web listener; every server is shut down and joined."""
    from socketlab.chat.server import ChatServer

    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> ChatServer:
            return stack.enter_context(serving(ChatServer(("127.0.0.1", 0), web=("127.0.0.1", 0), **options)))

        yield start


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for a module's tests (the module is skipped where there is none)."""
    from browsers import chromium

    with chromium() as launched:
        yield launched
