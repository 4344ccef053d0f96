"""--redis without the redis package: one line that says how to install it."""

from __future__ import annotations

import subprocess
import sys

from support import TIMEOUT

#: Runs the CLI as if the redis package were not installed (an import of it fails).
WITHOUT_REDIS = (
    "import sys; sys.modules['redis'] = None; "
    "sys.argv = ['socketlab', 'chat', 'serve', '--port', '0', '--redis', 'redis://127.0.0.1:1/0']; "
    "from socketlab.cli import run; run()"
)


def test_redis_option_without_the_extra_is_one_error_line() -> None:
    """Without the redis package, --redis exits 1 with the install command, before anything listens."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_REDIS], capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "Error: --redis needs the redis package: pip install 'socketlab[redis]', or pip install '.[redis]' from a checkout\n"
    )
    assert result.stdout == b""
