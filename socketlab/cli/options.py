"""What the commands share: option declarations, parameter types, TLS and access setup, the log, errors."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import sys
from typing import Any, Callable, Iterator, TypeVar

import click

from socketlab.addresses import DEFAULT_HOST, DEFAULT_PORT
from socketlab.errors import SocketlabError

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def bench_errors() -> Iterator[None]:
    """A benchmark that cannot run (a process that will not start, a refused
    connection) fails with one ``Error: ...`` line; output errors go on to run()."""
    try:
        yield
    except OSError as error:
        if error.errno in OUTPUT_ERRORS:
            raise
        text = error.strerror or str(error)
        raise click.ClickException(f"{text}: {error.filename}" if error.filename else text) from None
    except SocketlabError as error:  # BenchError, or e.g. a TLS handshake with a target that failed
        raise click.ClickException(str(error)) from None


#: The longest time an option may name (about 31 years): the system's timers overflow far beyond it.
MAX_SECONDS = 1e9


class Finite(click.FloatRange):
    """A FloatRange that refuses ``nan`` and ``inf`` (and, for *seconds*, more than MAX_SECONDS): a timer or a
    rate made of them fails deep inside the program, where it would be a traceback."""

    def __init__(self, minimum: float = 0, maximum: float | None = None, *, min_open: bool = False, seconds: bool = True) -> None:
        super().__init__(minimum, maximum, min_open=min_open)
        self.seconds = seconds

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.seconds and number > MAX_SECONDS:
            self.fail(f"{value!r} is more than {MAX_SECONDS:.0f} seconds", param, ctx)
        return number


class ByteSize(click.ParamType):
    """A size such as 1048576, 64K, 100M or 1G (powers of 1024)."""

    name = "size"
    _units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def __init__(self, maximum: int | None = None) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in "KMG" else ""
        number = text[:-1] if unit else text
        try:
            size = int(float(number) * self._units[unit])
        except (ValueError, OverflowError):  # OverflowError: inf
            self.fail(f"{value!r} is not a size like 4096, 64K, 100M or 1G", param, ctx)
        if size <= 0:
            self.fail("the size must be positive", param, ctx)
        if self.maximum is not None and size > self.maximum:
            self.fail(f"{value!r} is more than the largest allowed, {self.maximum >> 20}M", param, ctx)
        return size


def buffer_option(func: F) -> F:
    return click.option(
        "--buffer",
        "buffer_size",
        type=ByteSize(maximum=64 << 20),
        default=None,
        help="Largest single read or write (K, M suffixes), like socat's -b.  [default: a quarter of the L2 cache, 64K-1M]",
    )(func)


class Host(click.ParamType):
    """A host name or address for --host: ``[::1]`` is taken as ``::1``; an empty one is refused (a server
    given ``''`` would listen on every interface), as is a port written into it."""

    name = "host"

    def __init__(self, server: bool) -> None:
        self.server = server

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        text = str(value).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if not text:
            if self.server:
                self.fail("an empty host would listen on every interface: name it (0.0.0.0 or :: for every one)", param, ctx)
            self.fail("an empty host: name the server", param, ctx)
        if ":" in text:
            try:
                ipaddress.ip_address(text.partition("%")[0])
            except ValueError:
                self.fail(f"{value!r} is not a host name or address (the port goes in --port)", param, ctx)
        return text


def open_output(output: str) -> Any:
    """--output's file, unbuffered (every chunk is out when it is written): stdout for - (escaped on a terminal).

    A file that cannot be opened is one ``Error:`` line."""
    if output == "-":
        if os.isatty(sys.stdout.fileno()):
            from socketlab.relay import TerminalWriter

            return TerminalWriter(sys.stdout.fileno())
        return open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
    try:
        return open(output, "wb", buffering=0)
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {error.strerror}") from None


def host_option(func: F) -> F:
    """--host for a server: where it listens."""
    return click.option(
        "--host",
        type=Host(server=True),
        default=DEFAULT_HOST,
        show_default=True,
        envvar="SOCKETLAB_HOST",
        help="Address to listen on (0.0.0.0 or :: for every interface; env SOCKETLAB_HOST).",
    )(func)


def port_option(func: F) -> F:
    """--port for a server: 0 picks a free one."""
    return click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        envvar="SOCKETLAB_PORT",
        help="Port to listen on (0 picks a free one; env SOCKETLAB_PORT).",
    )(func)


def client_host_option(func: F) -> F:
    """--host for a client: the server's name or address."""
    return click.option(
        "--host",
        type=Host(server=False),
        default=DEFAULT_HOST,
        show_default=True,
        envvar="SOCKETLAB_HOST",
        help="Server's host name or address (env SOCKETLAB_HOST).",
    )(func)


def client_port_option(func: F) -> F:
    """--port for a client: the server's port."""
    return click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        envvar="SOCKETLAB_PORT",
        help="Server's port (env SOCKETLAB_PORT).",
    )(func)


def unix_server_options(func: F) -> F:
    """--unix PATH and --unix-mode: listen on a UNIX domain socket instead of --host/--port."""
    func = click.option(
        "--unix-mode",
        type=UnixMode(),
        default="600",
        show_default=True,
        metavar="MODE",
        help="With --unix: the socket file's permissions, octal (660: the group may connect too).",
    )(func)
    return click.option(
        "--unix",
        "unix_path",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        help=(
            "Listen on this UNIX domain socket instead of --host/--port (a stale socket file is replaced, "
            "the file removed at exit). Its permissions decide who connects: --allow, --deny and "
            "--max-per-ip do not apply to its clients."
        ),
    )(func)


def unix_client_option(func: F) -> F:
    """--unix PATH: connect to a UNIX domain socket instead of --host/--port."""
    return click.option(
        "--unix",
        "unix_path",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        help="Connect to this UNIX domain socket instead of --host/--port (with --tls, the certificate is checked for --host).",
    )(func)


class UnixMode(click.ParamType):
    """A socket file's permissions in octal, such as 600 or 0660."""

    name = "mode"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().removeprefix("0o")
        if not text or any(digit not in "01234567" for digit in text) or int(text, 8) > 0o777:
            self.fail(f"{value!r} is not a file mode in octal, like 600 or 660", param, ctx)
        return int(text, 8)


def unix_address(ctx: click.Context, unix_path: str | None, unix_mode: int) -> Any:
    """The UnixAddress of --unix/--unix-mode, or None; --unix with --host or --port given is a usage error."""
    from click.core import ParameterSource

    if unix_path is None:
        if ctx.get_parameter_source("unix_mode") == ParameterSource.COMMANDLINE:
            raise click.UsageError("--unix-mode needs --unix PATH")
        return None
    given = [f"--{name}" for name in ("host", "port") if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--unix replaces --host and --port: drop {' and '.join(given)}")
    from socketlab.unix import UnixAddress

    return UnixAddress(unix_path, unix_mode)


class SourceAddress(click.ParamType):
    """``ADDR``, ``ADDR:PORT``, ``[IPv6]:PORT``, ``IPv6`` or ``:PORT``: the local side of a connection."""

    name = "ADDR[:PORT]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        from socketlab.addresses import parse_source
        from socketlab.errors import AddressError

        try:
            return parse_source(str(value))
        except AddressError as error:
            self.fail(str(error), param, ctx)


@contextlib.contextmanager
def stopped_by_ctrl_c() -> Iterator[None]:
    """Ctrl-C ends a client as a stopped program: status 130 (128 + SIGINT), no ``Aborted!``, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def tls_server_options(func: F) -> F:
    """--tls-cert and --tls-key: serve TLS."""
    func = click.option(
        "--tls-key",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Its private key, PEM, unencrypted (default: inside --tls-cert).",
    )(func)
    return click.option(
        "--tls-cert",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Serve TLS with this certificate (PEM, chain included).",
    )(func)


def access_options(func: F) -> F:
    """--allow and --deny: who may connect."""
    func = click.option(
        "--deny",
        multiple=True,
        metavar="SPEC",
        help="Refuse these peers: an address, a CIDR block or @FILE (repeatable; wins over --allow).",
    )(func)
    return click.option(
        "--allow", multiple=True, metavar="SPEC", help="Let in only these peers: an address, a CIDR block or @FILE (repeatable)."
    )(func)


def per_ip_option(func: F) -> F:
    return click.option(
        "--max-per-ip",
        type=click.IntRange(1),
        default=None,
        metavar="N",
        help="Connections at once from one address (default: no limit).",
    )(func)


def access_rules(allow: tuple[str, ...], deny: tuple[str, ...]) -> Any:
    """The AccessRules of --allow/--deny, or None; a bad rule is one error line."""
    if not allow and not deny:
        return None
    from socketlab.access import AccessRules

    return AccessRules.parse(allow=allow, deny=deny)


def tls_client_options(func: F) -> F:
    """--tls, --tls-ca and --tls-no-verify: connect with TLS."""
    func = click.option(
        "--tls-no-verify", is_flag=True, help="Do not verify the server's certificate (insecure; says so on stderr)."
    )(func)
    func = click.option(
        "--tls-ca",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Trust these CA certificates (PEM) instead of the system's.",
    )(func)
    return click.option("--tls", "use_tls", is_flag=True, help="Connect with TLS, verifying the server's certificate and name.")(
        func
    )


def server_tls(cert: str | None, key: str | None) -> Any:
    """The server SSLContext for --tls-cert/--tls-key, or None; errors are one line."""
    if key and not cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    if not cert:
        return None
    from socketlab.tls import server_context

    return server_context(cert, key)


def client_tls(use_tls: bool, ca: str | None, no_verify: bool) -> Any:
    """The client SSLContext for --tls (implied by --tls-ca/--tls-no-verify), or None."""
    if not (use_tls or ca or no_verify):
        return None
    from socketlab.tls import client_context

    if no_verify:
        click.echo(
            "Warning: --tls-no-verify: the server's certificate is not checked; "
            "anyone in between can read and change the traffic",
            err=True,
        )
    return client_context(ca, verify=not no_verify)


#: errno values that mean our output cannot be written (full disk, closed pipe, ...).
OUTPUT_ERRORS = {errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def log_to_stdout(level: int = logging.INFO, stream: Any = None) -> None:
    """Send socketlab's log records to stdout (or *stream*, e.g. stderr when stdout carries data), one message per line.

    No serving thread ever waits for stdout: lines go through a bounded queue
    to a writer thread, and are dropped (and counted, and said so) when
    stdout does not take them (socketlab.logqueue).
    """
    import atexit

    from socketlab.logqueue import BoundedLogHandler

    handler = BoundedLogHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("socketlab")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    atexit.register(_close_log, handler)


def _close_log(handler: Any) -> None:
    """At exit: give the log half a second to reach stdout; if stdout takes no
    more, point it at /dev/null so the interpreter's final flush cannot block."""
    if not handler.drain(handler.close_timeout):
        drop_stdout()
    handler.close(timeout=0)


class WebAddress(click.ParamType):
    """``PORT`` or ``HOST:PORT`` (port 0: a free one); the host is None when only a port is given."""

    name = "[HOST:]PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str | None, int]:
        if isinstance(value, tuple):
            return value
        from socketlab.addresses import parse_address
        from socketlab.errors import AddressError

        from socketlab.addresses import parse_port

        text = str(value)
        try:
            if text.isdigit():
                return None, parse_port(text, allow_zero=True)
            return parse_address(text, allow_zero=True)
        except AddressError as error:
            self.fail(str(error), param, ctx)


class AddressList(click.ParamType):
    """``HOST:PORT[,HOST:PORT...]``: one address or several."""

    name = "HOST:PORT[,...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[tuple[str, int], ...]:
        if isinstance(value, tuple):
            return value
        from socketlab.addresses import parse_address
        from socketlab.errors import AddressError

        try:
            return tuple(parse_address(text.strip()) for text in str(value).split(","))
        except AddressError as error:
            self.fail(str(error), param, ctx)


class PidList(click.ParamType):
    """``PID[,PID...]``: process ids."""

    name = "PID[,...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [int(pid) for pid in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a PID or a comma-separated list of them", param, ctx)


class Origin(click.ParamType):
    """An origin as browsers send it: ``scheme://host[:port]``, no path."""

    name = "ORIGIN"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
            self.fail(f"{value!r} is not an origin like https://example.org or http://localhost:8000", param, ctx)
        return str(value)


class RedisUrl(click.ParamType):
    """A Redis URL (``redis://``, ``rediss://``, ``unix://``); it needs the redis extra installed."""

    name = "URL"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--redis needs the redis package: pip install 'socketlab[redis]', or pip install '.[redis]' from a checkout"
            ) from None
        if not str(value).startswith(("redis://", "rediss://", "unix://")):
            self.fail(f"{value!r} is not a URL like redis://HOST:PORT/DB", param, ctx)
        return str(value)
