"""The ``socketlab`` command line: options in, library calls out.

Nothing here serves or parses a protocol. Library errors
(:class:`~socketlab.errors.SocketlabError`) become one ``Error: ...`` line
on stderr and exit status 1. Library modules are imported inside each
command so ``socketlab --help`` starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Any, Callable, Iterator, TypeVar

import click

from socketlab import __version__
from socketlab.addresses import DEFAULT_HOST, DEFAULT_PORT
from socketlab.errors import SocketlabError

F = TypeVar("F", bound=Callable[..., Any])

#: bench chat --placement: the names Placement.named() takes (spelled here to keep start-up light).
PLACEMENTS = ("shared", "split")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into click's one-line ``Error: ...`` and exit 1."""
    from socketlab.errors import SocketlabError

    try:
        yield
    except SocketlabError as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def bench_errors() -> Iterator[None]:
    """A benchmark that cannot run (a process that will not start, a refused
    connection) fails with one ``Error: ...`` line; output errors go on to run()."""
    try:
        yield
    except OSError as error:
        if error.errno in _OUTPUT_ERRORS:
            raise
        text = error.strerror or str(error)
        raise click.ClickException(f"{text}: {error.filename}" if error.filename else text) from None
    except SocketlabError as error:  # BenchError, or e.g. a TLS handshake with a target that failed
        raise click.ClickException(str(error)) from None


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
        number = text[: -1] if unit else text
        try:
            size = int(float(number) * self._units[unit])
        except ValueError:
            self.fail(f"{value!r} is not a size like 4096, 64K, 100M or 1G", param, ctx)
        if size <= 0:
            self.fail("the size must be positive", param, ctx)
        if self.maximum is not None and size > self.maximum:
            self.fail(f"{value!r} is more than the largest allowed, {self.maximum >> 20}M", param, ctx)
        return size


def buffer_option(func: F) -> F:
    return click.option(
        "--buffer", "buffer_size", type=ByteSize(maximum=64 << 20), default=None,
        help="Largest single read or write (K, M suffixes), like socat's -b.  [default: a quarter of the L2 cache, 64K-1M]",
    )(func)


def host_option(func: F) -> F:
    return click.option(
        "--host",
        default=DEFAULT_HOST,
        show_default=True,
        envvar="SOCKETLAB_HOST",
        help="Address (0.0.0.0 or :: to listen on every interface; env SOCKETLAB_HOST).",
    )(func)


def port_option(func: F) -> F:
    return click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        envvar="SOCKETLAB_PORT",
        help="Port (0 picks a free one when listening; env SOCKETLAB_PORT).",
    )(func)


def tls_server_options(func: F) -> F:
    """--tls-cert and --tls-key: serve TLS."""
    func = click.option("--tls-key", metavar="FILE", type=click.Path(dir_okay=False), help="Its private key, PEM, unencrypted (default: inside --tls-cert).")(func)
    return click.option("--tls-cert", metavar="FILE", type=click.Path(dir_okay=False), help="Serve TLS with this certificate (PEM, chain included).")(func)


def access_options(func: F) -> F:
    """--allow and --deny: who may connect."""
    func = click.option("--deny", multiple=True, metavar="SPEC", help="Refuse these peers: an address, a CIDR block or @FILE (repeatable; wins over --allow).")(func)
    return click.option("--allow", multiple=True, metavar="SPEC", help="Let in only these peers: an address, a CIDR block or @FILE (repeatable).")(func)


def per_ip_option(func: F) -> F:
    return click.option("--max-per-ip", type=click.IntRange(1), default=None, metavar="N", help="Connections at once from one address (default: no limit).")(func)


def access_rules(allow: tuple[str, ...], deny: tuple[str, ...]) -> Any:
    """The AccessRules of --allow/--deny, or None; a bad rule is one error line."""
    if not allow and not deny:
        return None
    from socketlab.access import AccessRules

    with user_errors():
        return AccessRules.parse(allow=allow, deny=deny)


def tls_client_options(func: F) -> F:
    """--tls, --tls-ca and --tls-no-verify: connect with TLS."""
    func = click.option("--tls-no-verify", is_flag=True, help="Do not verify the server's certificate (insecure; says so on stderr).")(func)
    func = click.option("--tls-ca", metavar="FILE", type=click.Path(dir_okay=False), help="Trust these CA certificates (PEM) instead of the system's.")(func)
    return click.option("--tls", "use_tls", is_flag=True, help="Connect with TLS, verifying the server's certificate and name.")(func)


def server_tls(cert: str | None, key: str | None) -> Any:
    """The server SSLContext for --tls-cert/--tls-key, or None; errors are one line."""
    if key and not cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    if not cert:
        return None
    from socketlab.tls import server_context

    with user_errors():
        return server_context(cert, key)


def client_tls(use_tls: bool, ca: str | None, no_verify: bool) -> Any:
    """The client SSLContext for --tls (implied by --tls-ca/--tls-no-verify), or None."""
    if not (use_tls or ca or no_verify):
        return None
    from socketlab.tls import client_context

    if no_verify:
        click.echo("Warning: --tls-no-verify: the server's certificate is not checked; anyone in between can read and change the traffic", err=True)
    with user_errors():
        return client_context(ca, verify=not no_verify)


#: errno values that mean our output cannot be written (full disk, closed pipe, ...).
_OUTPUT_ERRORS = {errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _drop_stdout() -> None:
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


def log_to_stdout(level: int = logging.INFO) -> None:
    """Send socketlab's log records to stdout, one message per line.

    No serving thread ever waits for stdout: lines go through a bounded queue
    to a writer thread, and are dropped (and counted, and said so) when
    stdout does not take them (socketlab.logqueue).
    """
    import atexit

    from socketlab.logqueue import BoundedLogHandler

    handler = BoundedLogHandler(sys.stdout)
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
        _drop_stdout()
    handler.close(timeout=0)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="socketlab")
def main() -> None:
    """Socket tools: TCP welcome/echo server and client, rooms chat, UDP.

    \b
    socketlab demo                        # the whole tutorial, narrated
    socketlab tcp-server --port 3000      # welcome server (Ctrl-C stops)
    socketlab tcp-client --port 3000 hi   # send a line, print the reply
    """


@main.command("tcp-server")
@host_option
@port_option
@click.option("--welcome", default="Welcome to Socket Server", show_default=True, help="Line sent to each client ('' sends nothing).")
@click.option("--echo", is_flag=True, help="Send every received byte back (RFC 862 echo).")
@click.option("--hex", "hex_dump", is_flag=True, help="Log payloads as a hex dump.")
@click.option("-q", "--quiet", is_flag=True, help="Log no payloads: connections and byte counts only.")
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True, help="Clients served at once.")
@per_ip_option
@access_options
@tls_server_options
@buffer_option
def tcp_server(host: str, port: int, welcome: str, echo: bool, hex_dump: bool, quiet: bool, max_clients: int, max_per_ip: int | None, allow: tuple[str, ...], deny: tuple[str, ...], tls_cert: str | None, tls_key: str | None, buffer_size: int) -> None:
    """The tutorial's TCP server: greet each client, log what it sends.

    Each client gets the welcome line; every chunk it sends is logged with
    control characters escaped. A client that ends its side is disconnected.
    Ctrl-C or SIGTERM stops the server.

    \b
    Example:
      socketlab tcp-server --port 3000 --echo
    """
    from socketlab.serving import run_until_signal
    from socketlab.tcp import WelcomeServer

    tls = server_tls(tls_cert, tls_key)
    access = access_rules(allow, deny)
    log_to_stdout()
    payload = "quiet" if quiet else "hex" if hex_dump else "text"
    with user_errors():
        server = WelcomeServer(
            (host, port), welcome=welcome, echo=echo, payload=payload, max_clients=max_clients, tls=tls,
            access=access, max_per_ip=max_per_ip, buffer_size=buffer_size,
        )
    with server:
        run_until_signal(server)


@main.command("tcp-client")
@host_option
@port_option
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True, help="Connect (and TLS handshake) timeout in seconds.")
@tls_client_options
@buffer_option
@click.argument("message", nargs=-1)
def tcp_client(host: str, port: int, timeout: float, use_tls: bool, tls_ca: str | None, tls_no_verify: bool, buffer_size: int, message: tuple[str, ...]) -> None:
    """Connect, send MESSAGE (or stdin), print what the server sends.

    With MESSAGE: sends it plus a newline, ends the sending side and prints
    the replies until the server closes. Without MESSAGE: streams stdin until
    EOF (line by line on a terminal). Received bytes go to stdout unchanged;
    status lines go to stderr.

    \b
    Examples:
      socketlab tcp-client --port 3000 Hello Socket Server
      socketlab tcp-client --port 7 < image.png > copy.png
    """
    from socketlab.addresses import format_address
    from socketlab.tcp import connect, relay_stdio

    tls = client_tls(use_tls, tls_ca, tls_no_verify)
    payload = (" ".join(message) + "\n").encode() if message else None
    with user_errors():
        sock = connect(host, port, timeout, tls=tls)
        with sock:
            click.echo(f"Connected to Server {format_address((host, port))}{' (TLS)' if tls else ''}", err=True)
            relay_stdio(sock, host, port, payload, buffer_size=buffer_size)
    click.echo("Disconnected from Server", err=True)


@main.group()
def chat() -> None:
    """Line-based chat with rooms: a server and a client.

    \b
    socketlab chat serve --port 3000 --room-size 2
    socketlab chat connect --port 3000 --name alice --room chess
    """


@chat.command("serve")
@host_option
@port_option
@click.option("--room-size", type=click.IntRange(0), default=0, show_default=True, help="Members per room, lobby excepted (0: no cap).")
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True, help="Clients connected at once.")
@click.option("--max-line", type=click.IntRange(16), default=4096, show_default=True, help="Longest line in bytes.")
@click.option("--max-backlog", type=click.IntRange(1024), default=1024 * 1024, show_default=True, help="Bytes waiting for a client before it is dropped as too slow.")
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True), default=None, help="Drop clients silent for this many seconds (default: never).")
@click.option("--max-rate", type=click.FloatRange(0), default=20.0, show_default=True, metavar="LINES", help="Lines per second per client (a burst of twice that; bytes: 8 MiB/s); over it a client is read later, never dropped (0: no limit).")
@click.option("--web", metavar="[HOST:]PORT", help="Also serve the chat page and its WebSocket (/ws) here (0: a free port).")
@click.option("--web-origin", "web_origins", metavar="ORIGIN", multiple=True, help="Another origin whose pages may open the WebSocket (repeatable).")
@per_ip_option
@access_options
@tls_server_options
@click.option("--redis", "redis_url", metavar="URL", envvar="SOCKETLAB_REDIS", help="Join a cluster through Redis: redis://HOST:PORT/DB, rediss://, a password in the URL (env SOCKETLAB_REDIS).")
@click.option("--cluster", default="socketlab", show_default=True, metavar="NAME", help="With --redis: the cluster's name; servers with the same Redis and name serve one chat.")
@click.option("-v", "--verbose", is_flag=True, help="Also log every message's text.")
@click.option("-q", "--quiet", is_flag=True, help="Log only start, stop and errors.")
def chat_serve(host: str, port: int, room_size: int, max_clients: int, max_line: int, max_backlog: int, idle_timeout: float | None, max_rate: float, web: str | None, web_origins: tuple[str, ...], max_per_ip: int | None, allow: tuple[str, ...], deny: tuple[str, ...], tls_cert: str | None, tls_key: str | None, redis_url: str | None, cluster: str, verbose: bool, quiet: bool) -> None:
    """Run the chat server; nc, telnet, 'chat connect' and browsers are clients.

    Every line a client sends reaches the other members of its room as
    '<name> text'. Commands: /nick /join /leave /who /rooms /msg /quit /help
    (docs/protocol.md). With --web, browsers join the same rooms from the
    page it serves. With --redis, every server started with the same Redis
    and --cluster serves one chat (docs/cluster.md). Ctrl-C or SIGTERM tells
    clients and stops.

    \b
    Examples:
      socketlab chat serve --port 3000 --room-size 2
      socketlab chat serve --room-size 2 --web 8080   # and open http://127.0.0.1:8080/
      socketlab chat serve --port 3001 --redis redis://127.0.0.1:6379/0
    """
    from socketlab.chat.server import ChatServer
    from socketlab.serving import run_until_signal

    tls = server_tls(tls_cert, tls_key)
    access = access_rules(allow, deny)
    if redis_url:
        check_redis_url(redis_url)
    log_to_stdout()
    logging.getLogger("socketlab.chat.messages").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if quiet:
        logging.getLogger("socketlab.chat.clients").setLevel(logging.WARNING)
        logging.getLogger("socketlab.chat.web").setLevel(logging.WARNING)
    with user_errors():
        server = ChatServer(
            (host, port),
            room_size=room_size,
            max_clients=max_clients,
            max_line=max_line,
            max_backlog=max_backlog,
            idle_timeout=idle_timeout,
            max_rate=max_rate,
            web=web_address(web, host) if web is not None else None,
            web_origins=[check_origin(origin) for origin in web_origins],
            tls=tls,
            access=access,
            max_per_ip=max_per_ip,
            redis=redis_url or None,
            cluster=cluster,
        )
    with server:
        run_until_signal(server)


def check_redis_url(url: str) -> None:
    """--redis needs the extra and a redis:// (or rediss://, unix://) URL: one error line otherwise."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise click.ClickException("--redis needs the redis package: pip install 'socketlab[redis]'") from None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise click.BadParameter(f"{url!r} is not a URL like redis://HOST:PORT/DB", param_hint="'--redis'")


def web_address(text: str, default_host: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` for --web; the host defaults to the chat's own."""
    from socketlab.addresses import parse_address

    if text.isdigit() and int(text) < 65536:
        return default_host, int(text)
    if text.rpartition(":")[2] == "0":  # HOST:0, a free port
        return parse_address(text[:-1] + "1")[0], 0
    return parse_address(text)


def check_origin(origin: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, no path."""
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise click.BadParameter(f"{origin!r} is not an origin like https://example.org or http://localhost:8000", param_hint="'--web-origin'")
    return origin


@chat.command("connect")
@host_option
@port_option
@click.option("--name", help="Nickname to take at once (/nick).")
@click.option("--room", help="Room to join at once (/join).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True, help="Connect (and TLS handshake) timeout in seconds.")
@tls_client_options
def chat_connect(host: str, port: int, name: str | None, room: str | None, timeout: float, use_tls: bool, tls_ca: str | None, tls_no_verify: bool) -> None:
    """Chat from a terminal or a pipe: stdin lines out, server lines in.

    At the end of stdin it sends /quit and waits for the server to close.

    \b
    Example:
      socketlab chat connect --port 3000 --name alice --room chess
    """
    from socketlab.addresses import format_address
    from socketlab.chat.client import ChatClient, run_session

    tls = client_tls(use_tls, tls_ca, tls_no_verify)
    with user_errors():
        client = ChatClient.connect(host, port, timeout, tls=tls)
    with client:
        click.echo(f"Connected to Server {format_address((host, port))}{' (TLS)' if tls else ''}", err=True)
        run_session(client, name=name, room=room)
    click.echo("Disconnected from Server", err=True)


@main.command("udp-recv")
@host_option
@port_option
@click.option("--echo", is_flag=True, help="Send each datagram back to its sender.")
@click.option("--hex", "hex_dump", is_flag=True, help="Print datagrams as hex dumps.")
@click.option("-q", "--quiet", is_flag=True, help="Print no datagrams, only the totals at exit.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit 0 after this many datagrams.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, help="Exit 1 after this many seconds without a datagram.")
@access_options
def udp_recv(host: str, port: int, echo: bool, hex_dump: bool, quiet: bool, count: int | None, timeout: float | None, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
    """Print each UDP datagram with its sender's address.

    Datagrams arrive whole or not at all; this counts what arrives and prints
    the totals (datagrams, bytes, senders) when it stops.

    \b
    Example:
      socketlab udp-recv --port 3000 --count 1
    """
    from socketlab.serving import run_until_signal
    from socketlab.udp import DatagramReceiver

    access = access_rules(allow, deny)
    log_to_stdout()
    payload = "quiet" if quiet else "hex" if hex_dump else "text"
    with user_errors():
        receiver = DatagramReceiver(
            (host, port), echo=echo, payload=payload, max_datagrams=count, timeout=timeout, access=access
        )
    with receiver, user_errors():
        run_until_signal(receiver, on_stop=receiver.on_close)


@main.command("udp-send")
@host_option
@port_option
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True, help="Send MESSAGE this many times, as fast as the socket allows.")
@click.option("--interval", type=click.FloatRange(0), default=0.0, help="Seconds between datagrams (pacing).")
@click.option("--wait-reply", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS", help="Wait this long for a datagram back and print it.")
@click.argument("message", nargs=-1)
def udp_send(host: str, port: int, repeat: int, interval: float, wait_reply: float | None, message: tuple[str, ...]) -> None:
    """Send MESSAGE as one datagram (or each stdin line as one).

    Reports what was sent on stderr. UDP gives no delivery receipt: only
    --wait-reply, or the OS reporting that nobody listens, tells you more.

    \b
    Examples:
      socketlab udp-send --port 3000 Hello UDP Server
      socketlab udp-send --port 7 --wait-reply 1 ping
    """
    from socketlab.addresses import format_address
    from socketlab.udp import send_datagrams

    if message:
        payloads: Any = [" ".join(message).encode()]
    else:
        if repeat > 1:
            raise click.UsageError("--repeat needs a MESSAGE (stdin lines are sent once)")
        payloads = (line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n") for line in sys.stdin.buffer)
    with user_errors():
        report = send_datagrams(host, port, payloads, repeat=repeat, interval=interval, wait_reply=wait_reply)
    click.echo(report.describe(format_address((host, port))), err=True)
    if report.reply is not None:
        write_received(report.reply)


def write_received(data: bytes) -> None:
    """Received bytes to stdout: raw into a pipe, escaped text on a terminal."""
    if sys.stdout.isatty():
        from socketlab.text import display_bytes

        click.echo(display_bytes(data))
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@main.group()
def bench() -> None:
    """Measure chat relays, bulk TCP and UDP on loopback.

    \b
    socketlab bench chat                         # start a chat server, measure it
    socketlab bench chat --target 127.0.0.1:4000 # measure any line relay
    socketlab bench tcp --size 1G
    socketlab bench udp --count 200000
    """


def progress_printer() -> Any:
    """A progress callback that rewrites one stderr line on a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(text: str) -> None:
        sys.stderr.write(f"\r\x1b[K{text}")
        sys.stderr.flush()

    return show


def clear_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@bench.command("chat")
@click.option("--target", metavar="HOST:PORT[,...]", help="Running line-relaying chat servers, clients spread over them round-robin (default: start socketlab's own).")
@click.option("--scenario", type=click.Choice(["fanout", "slow", "connections", "flood"]), default="fanout", show_default=True)
@click.option("--clients", type=click.IntRange(2), default=100, show_default=True)
@click.option("--senders", type=click.IntRange(1), default=4, show_default=True)
@click.option("--messages", type=click.IntRange(1), default=2000, show_default=True, help="Messages per sender.")
@click.option("--size", type=click.IntRange(32, 4000), default=64, show_default=True, help="Bytes per message line.")
@click.option("--rate", type=click.FloatRange(0), default=0.0, show_default=True, help="Messages per second per sender (0: flat out).")
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True, help="Bulk receiver processes (besides the probes' and the senders').")
@click.option("--window", type=click.IntRange(0), default=2000, show_default=True, help="Flat out: messages in flight beyond what readers have read (0: no limit).")
@click.option("--batch", type=click.IntRange(1, 1000), default=64, show_default=True, help="Flat out: lines per send (1: one line per send, as people type).")
@click.option("--check", type=click.Choice(["probes", "all"]), default="probes", show_default=True, help="Bulk readers only count lines (probes and senders check theirs), or every copy is checked (a costlier instrument).")
@click.option("--placement", type=click.Choice(PLACEMENTS), default="shared", show_default=True, help="split: the server on the first CPU, the benchmark on the others (needs its PIDs for a --target).")
@click.option("--transport", type=click.Choice(["tcp", "ws"]), default="tcp", show_default=True, help="Clients speak TCP lines, or WebSocket to the server's --web address (/ws).")
@click.option("--tls", "use_tls", is_flag=True, help="Clients connect over TLS (its own server gets a certificate made with openssl; a --target's is not verified).")
@click.option("--abusers", type=click.IntRange(1, 200), default=40, show_default=True, help="flood: abusing clients (from 127.0.0.2), 30 connections a second each.")
@click.option("--abuse-seconds", type=click.FloatRange(1, 600), default=20.0, show_default=True, help="flood: how long the abuse lasts.")
@click.option("--server-pid", metavar="PID[,...]", default=None, help="PIDs of the target servers, to report their CPU and memory (summed).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_chat(target: str | None, scenario: str, clients: int, senders: int, messages: int, size: int, rate: float, workers: int, window: int, batch: int, check: str, placement: str, transport: str, use_tls: bool, abusers: int, abuse_seconds: float, server_pid: str | None, as_json: bool) -> None:
    """Measure a chat relay: copies/s, latency, loss, garbling, order.

    Senders send uniquely tagged lines; every client reads every copy.
    'slow' adds a client that never reads and compares p99; 'connections'
    opens --clients idle clients and checks they are all still served.
    'flood' runs socketlab's own server with its flood control on: a paced
    fanout (--rate, 10 by default, 100 messages) without and with one client
    sending flat out, then --abusers abusing clients for --abuse-seconds while
    two members chat and newcomers arrive.
    With --transport ws every client is a WebSocket client (--target is then
    the server's web address).

    \b
    Examples:
      socketlab bench chat --rate 250
      socketlab bench chat --transport ws
      socketlab bench chat --scenario connections --clients 2000
      socketlab bench chat --target 127.0.0.1:4000 --json
    """
    import json
    import tempfile

    from socketlab.addresses import parse_address
    from socketlab.bench import chat as chat_bench
    from socketlab.bench.placement import Placement, unpin_process
    from socketlab.bench.report import connections_lines, fanout_lines

    own = None
    web = transport == "ws"
    workdir = tempfile.TemporaryDirectory(prefix="socketlab-bench-")
    tls_context = None
    with user_errors(), bench_errors():
        cpus = Placement.named(placement)
        if cpus.server and target and not server_pid:
            raise click.UsageError("--placement split with a --target needs the servers' --server-pid")
        server_options = ["--max-clients", str(max(1000, clients + 10))]
        if scenario != "flood":  # flood control off, so the comparison with peers is like for like
            server_options += ["--max-rate", "0"]
        if use_tls:
            from socketlab.bench.transfer import Certificate
            from socketlab.tls import client_context

            certificate = Certificate.make(workdir.name)
            server_options += ["--tls-cert", certificate.cert, "--tls-key", certificate.key]
            tls_context = client_context(certificate.cert if not target else None, verify=not target)
        if target:
            address: Any = chat_bench.Targets(tuple(parse_address(text.strip()) for text in target.split(",")))
            try:
                pids: Any = [int(pid) for pid in server_pid.split(",")] if server_pid else None
            except ValueError:
                raise click.BadParameter(f"{server_pid!r} is not a PID or a comma-separated list of them", param_hint="'--server-pid'") from None
        else:
            own = chat_bench.OwnServer(server_options, web=web)
            address = ("127.0.0.1", own.web_port or own.port)
            pids = own.pid
    progress = None if as_json else progress_printer()
    output: dict[str, Any] = {"scenario": scenario, "transport": transport, "tls": use_tls, "target": target or f"socketlab chat serve (pid {pids})"}
    kind = chat_bench.ClientKind(web=web, tls=tls_context)
    lines: list[str] = []
    pinned: dict[int, dict[int, set[int]]] = {}  # a --target's servers: where their threads ran before
    with bench_errors():
        try:
            server_pids = [pids] if isinstance(pids, int) else pids or []
            cpus.pin_server(server_pids, saved=pinned if target else None)
            cpus.pin_load()
            output["placement"] = cpus.observed(server_pids)
            options: dict[str, Any] = dict(clients=clients, senders=min(senders, clients - 1), messages=messages, size=size, rate=rate, server_pid=pids, progress=progress, workers=workers, window=window, batch=batch, check_all=check == "all", kind=kind)
            if scenario == "fanout":
                result = chat_bench.run_fanout(address, **options)
                output["fanout"] = chat_bench.as_dict(result)
                lines += fanout_lines("fanout", result)
            elif scenario == "flood":
                from socketlab.bench import flood
                from socketlab.bench.report import abuse_lines

                if not rate:
                    options.update(rate=10.0, messages=min(messages, 100))
                base = chat_bench.run_fanout(address, **options)
                flooded = chat_bench.run_fanout(address, flooder=True, **options)
                abuse = flood.run_abuse(chat_bench.Targets.of(address).first, abusers=abusers, seconds=abuse_seconds)
                ratio = flooded.latency_ms["p99"] / base.latency_ms["p99"] if base.latency_ms["p99"] else float("inf")
                output.update(fanout=chat_bench.as_dict(base), flooded=chat_bench.as_dict(flooded), p99_ratio=round(ratio, 3), abuse=chat_bench.as_dict(abuse))
                lines += fanout_lines("fanout", base) + fanout_lines("with a client sending flat out", flooded)
                lines.append(f"p99 with the flooding client / without: {ratio:.2f}x ({flooded.flooder_bytes:,} bytes sent by it)")
                lines += abuse_lines(abuse)
            elif scenario == "slow":
                base = chat_bench.run_fanout(address, **options)
                slowed = chat_bench.run_fanout(address, slow_client=True, **options)
                ratio = slowed.latency_ms["p99"] / base.latency_ms["p99"] if base.latency_ms["p99"] else float("inf")
                output.update(fanout=chat_bench.as_dict(base), slow=chat_bench.as_dict(slowed), p99_ratio=round(ratio, 3))
                lines += fanout_lines("fanout", base) + fanout_lines("with a never-reading client", slowed)
                lines.append(f"p99 with the slow client / without: {ratio:.2f}x")
            else:
                connections = chat_bench.run_connections(address, clients=clients, server_pid=pids, progress=progress, kind=kind)
                output["connections"] = chat_bench.as_dict(connections)
                lines += connections_lines(connections)
        finally:
            clear_progress()
            if own is not None:
                own.stop()
            for pid, before in pinned.items():
                unpin_process(pid, before)
    click.echo(json.dumps(output) if as_json else "\n".join(lines))


@bench.command("tcp")
@click.option("--size", type=ByteSize(), default="1G", show_default=True, help="Bytes to stream (K, M, G suffixes).")
@click.option("--runs", type=click.IntRange(1, 20), default=3, show_default=True, help="Runs per tool.")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Also measure socat between the same endpoints, if installed.")
@click.option("--tls", "use_tls", is_flag=True, help="Over TLS (a certificate made with openssl for the run; socat uses OPENSSL-LISTEN/OPENSSL).")
@click.option("--buffer", "buffers", metavar="SIZE[,SIZE...]", help="Largest read/write at both ends (tcp-client/tcp-server --buffer, socat -b), each size in turn: a sweep.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_tcp(size: int, runs: int, peers: bool, use_tls: bool, buffers: str | None, as_json: bool) -> None:
    """Bulk TCP: a stream through tcp-client into tcp-server -q, in MB/s.

    The data comes from this process through a pipe (no file on disk) and
    is timed from the client's first read until the server has counted
    every byte; each tool's start-up is reported apart.

    \b
    Examples:
      socketlab bench tcp --size 1G
      socketlab bench tcp --size 1G --tls
      socketlab bench tcp --buffer 16K,64K,256K,1M,4M
    """
    import json
    import tempfile
    from dataclasses import asdict

    from socketlab.bench import transfer

    sizes: list[int | None] = [None]
    if buffers:
        parse = ByteSize(maximum=64 << 20)
        try:
            sizes = [parse.convert(text.strip(), None, None) for text in buffers.split(",")]
        except click.BadParameter as error:
            error.param_hint = "'--buffer'"
            raise
    tools = ["socketlab"] + (["socat"] if peers and transfer.has("socat") else [])
    results = []
    workdir = tempfile.TemporaryDirectory(prefix="socketlab-bench-")
    certificate = None
    if use_tls:
        with bench_errors():
            certificate = transfer.Certificate.make(workdir.name)
    for buffer in sizes:
        for _ in range(runs):
            for tool in tools:
                with bench_errors():
                    result = transfer.run_tcp(size, tool, tls=certificate, buffer=buffer)
                results.append(result)
                if not as_json:
                    click.echo(result.describe())
    best = {
        (tool, buffer): max(r.mb_per_second for r in results if r.tool.split()[0] == tool and r.buffer == buffer)
        for buffer in sizes for tool in tools
    }
    if as_json:
        by_name = {f"{tool}{f' {buffer}' if buffer else ''}": round(mbps) for (tool, buffer), mbps in best.items()}
        click.echo(json.dumps({"runs": [asdict(r) | {"mb_per_second": round(r.mb_per_second)} for r in results], "best_mb_per_second": by_name}))
    else:
        for buffer in sizes:
            label = f" with {buffer:,}-byte buffers" if buffer else ""
            click.echo(f"best{label}: " + ", ".join(f"{tool} {best[tool, buffer]:,.0f} MB/s" for tool in tools))


@bench.command("udp")
@click.option("--count", type=click.IntRange(1), default=200000, show_default=True, help="Datagrams to send flat out.")
@click.option("--size", type=click.IntRange(1, 65507), default=64, show_default=True, help="Bytes per datagram.")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Also measure socat's and ncat's receivers, if installed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_udp(count: int, size: int, peers: bool, as_json: bool) -> None:
    """UDP: udp-send --repeat flat out into a receiver; datagrams/s and loss.

    \b
    Example:
      socketlab bench udp --count 200000
    """
    import json
    from dataclasses import asdict

    from socketlab.bench import transfer

    receivers = ["socketlab"] + ([tool for tool in ("socat", "ncat") if transfer.has(tool)] if peers else [])
    results = []
    for receiver in receivers:
        with bench_errors():
            result = transfer.run_udp(count, size, receiver)
        results.append(result)
        if not as_json:
            click.echo(result.describe())
    if as_json:
        click.echo(json.dumps({"runs": [asdict(r) | {"loss": round(r.loss, 6)} for r in results]}))


@main.command()
def demo() -> None:
    """Run the tutorial on loopback and narrate what each side sees.

    Starts servers on free ports in this process, connects clients to them and
    prints a transcript. Nothing leaves this machine.

    \b
    Example:
      socketlab demo
    """
    from socketlab.demo import run_demo

    with user_errors():
        run_demo(click.echo)


def run() -> None:
    """The console script: :func:`main`, with unwritable output as one line, not a traceback.

    A reader that went away (``socketlab demo | head``) ends the command
    quietly with status 1; a full disk or a failing device says so.
    """
    try:
        main()
    except OSError as error:
        if error.errno not in _OUTPUT_ERRORS:
            raise
        _drop_stdout()
        if error.errno != errno.EPIPE:
            sys.stderr.write(f"Error: cannot write output: {error.strerror}\n")
        sys.exit(1)


if __name__ == "__main__":
    run()
