"""``socketlab tcp-server`` and ``tcp-client``."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from socketlab.cli.options import (
    Finite,
    open_output,
    SourceAddress,
    access_options,
    access_rules,
    buffer_option,
    client_host_option,
    client_port_option,
    client_tls,
    host_option,
    log_to_stdout,
    per_ip_option,
    port_option,
    server_tls,
    stopped_by_ctrl_c,
    tls_client_options,
    tls_server_options,
    unix_address,
    unix_client_option,
    unix_server_options,
)

DEFAULT_WELCOME = "Welcome to Socket Server"


@click.command("tcp-server")
@host_option
@port_option
@unix_server_options
@click.option(
    "--welcome",
    default=DEFAULT_WELCOME,
    show_default=True,
    help="Line sent to each client ('' sends nothing; none by default with --output or --exec).",
)
@click.option("--echo", is_flag=True, help="Send every received byte back (RFC 862 echo).")
@click.option("--hex", "hex_dump", is_flag=True, help="Log payloads as a hex dump.")
@click.option("-q", "--quiet", is_flag=True, help="Log no payloads: connections and byte counts only.")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help=(
        "Write what clients send to FILE (created or emptied at start) or to stdout (-), byte for byte, like "
        "'nc -l > FILE'. One client at a time: another is refused as full while one sends; clients one after "
        "another are appended in turn. The log goes to stderr with -, and logs no payloads unless --hex."
    ),
)
@click.option(
    "--once", is_flag=True, help="Serve one connection, then exit 0 once it ends (default: keep serving, like ncat -k)."
)
@click.option(
    "-e",
    "--exec",
    "program",
    metavar="'PROGRAM [ARG...]'",
    help=(
        "Run PROGRAM for each client with the connection as its stdin and stdout (inetd, ncat -e). The words are "
        "split as a shell would, but no shell runs: no pipes, redirections or variables. Its stderr is the server's; "
        "SOCKETLAB_PEER names the client; at most --max-clients run at once."
    ),
)
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True, help="Clients served at once.")
@per_ip_option
@access_options
@tls_server_options
@buffer_option
@click.pass_context
def tcp_server(
    ctx: click.Context,
    host: str,
    port: int,
    unix_path: str | None,
    unix_mode: int,
    welcome: str,
    echo: bool,
    hex_dump: bool,
    quiet: bool,
    output: str | None,
    once: bool,
    program: str | None,
    max_clients: int,
    max_per_ip: int | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    buffer_size: int,
) -> None:
    """The tutorial's TCP server: greet each client, log what it sends.

    Each client gets the welcome line; every chunk it sends is logged with
    control characters escaped. A client that ends its side is disconnected.
    It serves many clients at once and keeps serving (ncat's -k) until
    Ctrl-C or SIGTERM; --once serves one connection and exits.

    \b
    Examples:
      socketlab tcp-server --port 3000 --echo
      socketlab tcp-server --port 3000 --echo --welcome ''          # an exact echo, for files
      socketlab tcp-server --port 3000 --once --output received.bin  # nc -l > received.bin
      socketlab tcp-server --port 3000 --exec 'cat -n'               # each client talks to its own cat
      socketlab tcp-server --unix /tmp/socketlab.sock
    """
    from socketlab.serving import run_until_signal

    address = unix_address(ctx, unix_path, unix_mode) or (host, port)
    given = {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if program is not None:
        options = {"welcome": "--welcome", "echo": "--echo", "output": "--output", "hex_dump": "--hex", "tls_cert": "--tls-cert"}
        clashes = [option for name, option in options.items() if name in given]
        if clashes:
            raise click.UsageError(f"--exec hands the connection to the program: drop {', '.join(clashes)}")
        argv = _split_program(program)
        from socketlab.programs import ProgramServer

        access = access_rules(allow, deny)
        log_to_stdout()
        with ProgramServer(address, argv, max_clients=max_clients, access=access, max_per_ip=max_per_ip, once=once) as server:
            run_until_signal(server)
        return
    if output is not None and "max_clients" in given:
        raise click.UsageError("--output takes one client at a time: drop --max-clients")
    if hex_dump and quiet:
        raise click.UsageError("--hex logs payloads and -q logs none: choose one")
    if "welcome" not in given and output is not None:
        welcome = ""
    from socketlab.tcp import WelcomeServer

    tls = server_tls(tls_cert, tls_key)
    access = access_rules(allow, deny)
    payload = "hex" if hex_dump else "quiet" if quiet or output is not None else "text"
    sink = open_output(output) if output is not None else None
    try:
        log_to_stdout(stream=sys.stderr if output == "-" else None)
        server = WelcomeServer(
            address,
            welcome=welcome,
            echo=echo,
            payload=payload,
            max_clients=max_clients,
            tls=tls,
            access=access,
            max_per_ip=max_per_ip,
            buffer_size=buffer_size,
            output=sink,
            once=once,
        )
        with server:
            run_until_signal(server)
    finally:
        if sink is not None:
            sink.close()


def _split_program(program: str) -> list[str]:
    """--exec's words, split as a shell splits them (quotes kept together), for a program run without one."""
    import shlex

    try:
        argv = shlex.split(program)
    except ValueError as error:
        raise click.BadParameter(f"{program!r}: {error}", param_hint="'--exec'") from None
    if not argv:
        raise click.BadParameter("names no program", param_hint="'--exec'")
    return argv


@click.command("tcp-client")
@client_host_option
@client_port_option
@unix_client_option
@click.option(
    "--timeout",
    type=Finite(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Connect (and TLS handshake) timeout in seconds.",
)
@click.option(
    "-w",
    "--idle-timeout",
    type=Finite(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Disconnect (status 0) once nothing was sent or received for this long, like nc -w (default: never).",
)
@click.option(
    "-s",
    "--source",
    type=SourceAddress(),
    default=None,
    help="Local address (and port) to connect from: 127.0.0.2, 127.0.0.2:4000, [::1]:4000, :4000.",
)
@click.option("--hex", "hex_dump", is_flag=True, help="Print what arrives as a hex dump (offsets run on), not as bytes.")
@click.option("-C", "--crlf", is_flag=True, help="End the lines sent in CRLF (for servers that want it: SMTP, HTTP).")
@click.option(
    "-z",
    "--check",
    is_flag=True,
    help="Only see whether the port takes a connection (and a TLS handshake with --tls): status 0 or 1, like nc -z.",
)
@tls_client_options
@buffer_option
@click.argument("message", nargs=-1)
@click.pass_context
def tcp_client(
    ctx: click.Context,
    host: str,
    port: int,
    unix_path: str | None,
    timeout: float,
    idle_timeout: float | None,
    source: tuple[str, int] | None,
    hex_dump: bool,
    crlf: bool,
    check: bool,
    use_tls: bool,
    tls_ca: str | None,
    tls_no_verify: bool,
    buffer_size: int,
    message: tuple[str, ...],
) -> None:
    """Connect, send MESSAGE (or stdin), print what the server sends.

    With MESSAGE: sends it plus a newline, ends the sending side and prints
    the replies until the server closes. Without MESSAGE: streams stdin until
    EOF (line by line on a terminal). Received bytes go to stdout unchanged
    (control characters escaped on a terminal); status lines go to stderr.
    Exits 1 when the server refuses the connection (server full, too many
    connections from this address), 130 on Ctrl-C.

    \b
    Examples:
      socketlab tcp-client --port 3000 Hello Socket Server
      socketlab tcp-server --port 3000 --echo --welcome '' &           # an exact echo server
      socketlab tcp-client --port 3000 < photo.jpg > copy.jpg          # ... gives the file back
      socketlab tcp-client --port 3000 --hex -w 1 hi                   # a hex dump; 1 s of silence ends it
      socketlab tcp-client --unix /tmp/socketlab.sock hi
      socketlab tcp-client -z --port 3000 && echo open                # is anything listening?
    """
    from socketlab.addresses import format_address
    from socketlab.tcp import connect, relay_stdio, start_tls

    if check and message:
        raise click.UsageError("-z only connects: drop the MESSAGE")
    tls = client_tls(use_tls, tls_ca, tls_no_verify)
    payload = (" ".join(message) + "\n").encode() if message else None
    with stopped_by_ctrl_c():
        if unix_path is not None:
            given = [name for name in ("host", "port", "source") if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
            clashes = [f"--{name}" for name in given if name != "host" or tls is None]  # --host: the name TLS checks
            if clashes:
                raise click.UsageError(f"--unix names its own address: drop {' and '.join(clashes)}")
            from socketlab.unix import connect_unix

            address = unix_path
            sock: Any = connect_unix(unix_path, timeout)
            if tls is not None:  # the certificate is checked against --host
                sock = start_tls(sock, tls, host, address, timeout)
        else:
            address = format_address((host, port))
            sock = connect(host, port, timeout, tls=tls, source=source)
        with sock:
            click.echo(f"Connected to Server {address}{' (TLS)' if tls else ''}", err=True)
            if check:
                return
            end = relay_stdio(
                sock, address, payload, buffer_size=buffer_size, hex_dump=hex_dump, crlf=crlf, idle_timeout=idle_timeout
            )
        if end == "idle":
            click.echo(f"Nothing sent or received for {idle_timeout:g} s: disconnecting", err=True)
        click.echo("Disconnected from Server", err=True)
