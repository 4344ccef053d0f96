"""``socketlab tcp-server`` and ``tcp-client``."""

from __future__ import annotations


import click

from socketlab.cli.options import (
    access_options,
    access_rules,
    buffer_option,
    client_tls,
    host_option,
    log_to_stdout,
    per_ip_option,
    port_option,
    server_tls,
    tls_client_options,
    tls_server_options,
)


@click.command("tcp-server")
@host_option
@port_option
@click.option(
    "--welcome", default="Welcome to Socket Server", show_default=True, help="Line sent to each client ('' sends nothing)."
)
@click.option("--echo", is_flag=True, help="Send every received byte back (RFC 862 echo).")
@click.option("--hex", "hex_dump", is_flag=True, help="Log payloads as a hex dump.")
@click.option("-q", "--quiet", is_flag=True, help="Log no payloads: connections and byte counts only.")
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True, help="Clients served at once.")
@per_ip_option
@access_options
@tls_server_options
@buffer_option
def tcp_server(
    host: str,
    port: int,
    welcome: str,
    echo: bool,
    hex_dump: bool,
    quiet: bool,
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
    server = WelcomeServer(
        (host, port),
        welcome=welcome,
        echo=echo,
        payload=payload,
        max_clients=max_clients,
        tls=tls,
        access=access,
        max_per_ip=max_per_ip,
        buffer_size=buffer_size,
    )
    with server:
        run_until_signal(server)


@click.command("tcp-client")
@host_option
@port_option
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Connect (and TLS handshake) timeout in seconds.",
)
@tls_client_options
@buffer_option
@click.argument("message", nargs=-1)
def tcp_client(
    host: str,
    port: int,
    timeout: float,
    use_tls: bool,
    tls_ca: str | None,
    tls_no_verify: bool,
    buffer_size: int,
    message: tuple[str, ...],
) -> None:
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
    sock = connect(host, port, timeout, tls=tls)
    with sock:
        click.echo(f"Connected to Server {format_address((host, port))}{' (TLS)' if tls else ''}", err=True)
        relay_stdio(sock, host, port, payload, buffer_size=buffer_size)
    click.echo("Disconnected from Server", err=True)
