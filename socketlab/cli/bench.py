"""``socketlab bench chat``, ``tcp`` and ``udp``."""

from __future__ import annotations

import sys
from typing import Any

import click

from socketlab.cli.options import AddressList, ByteSize, Finite, PidList, bench_errors


#: bench chat --placement: the names Placement.named() takes (spelled here to keep start-up light).
PLACEMENTS = ("shared", "split")


@click.group()
def bench() -> None:
    """Measure chat relays, bulk TCP and UDP on loopback.

    \b
    socketlab bench chat                         # start a chat server, measure it
    socketlab bench chat --target 127.0.0.1:4000 # measure any line relay
    socketlab bench chat --transport socketio    # Socket.IO clients, chat serve --web
    socketlab bench chat --scenario pairs --clients 2000   # members in pairs, a room each
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
@click.option(
    "--target",
    type=AddressList(),
    help="Running chat servers (line relays; with --transport ws or socketio their web address), clients spread over "
    "them round-robin (default: start socketlab's own).",
)
@click.option(
    "--scenario",
    type=click.Choice(["fanout", "slow", "connections", "flood", "pairs", "mixed", "churn"]),
    default="fanout",
    show_default=True,
)
@click.option("--clients", type=click.IntRange(2), default=100, show_default=True, help="Clients (pairs, mixed: members).")
@click.option("--senders", type=click.IntRange(1), default=4, show_default=True)
@click.option("--messages", type=click.IntRange(1), default=2000, show_default=True, help="Messages per sender.")
@click.option("--size", type=click.IntRange(32, 4000), default=64, show_default=True, help="Bytes per message line.")
@click.option(
    "--rate", type=Finite(0, seconds=False), default=0.0, show_default=True, help="Messages per second per sender (0: flat out)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Bulk receiver processes (besides the probes' and the senders'); pairs, mixed: load processes "
    "(at least one per 5,000 members, and as many as the open-file limit needs).",
)
@click.option(
    "--window",
    type=click.IntRange(0),
    default=2000,
    show_default=True,
    help="Flat out: messages in flight beyond what readers have read (0: no limit).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 1000),
    default=64,
    show_default=True,
    help="Flat out: lines per send (1: one line per send, as people type).",
)
@click.option(
    "--check",
    type=click.Choice(["probes", "all"]),
    default="probes",
    show_default=True,
    help="Bulk readers only count lines (probes and senders check theirs), or every copy is checked (a costlier instrument).",
)
@click.option(
    "--placement",
    type=click.Choice(PLACEMENTS),
    default="shared",
    show_default=True,
    help="split: the server on the first CPU, the benchmark on the others (needs its PIDs for a --target).",
)
@click.option(
    "--transport",
    type=click.Choice(["tcp", "ws", "socketio"]),
    default="tcp",
    show_default=True,
    help="Clients speak TCP lines, WebSocket to the server's --web address (/ws), or Socket.IO over WebSocket "
    "(/socket.io/, the tutorial's events, every client in one room; a sender's echoed own lines are not counted as copies).",
)
@click.option(
    "--tls",
    "use_tls",
    is_flag=True,
    help="Clients connect over TLS (its own server gets a certificate made with openssl; a --target's is not verified).",
)
@click.option(
    "--abusers",
    type=click.IntRange(1, 200),
    default=40,
    show_default=True,
    help="flood: abusing clients (from 127.0.0.2), 30 connections a second each.",
)
@click.option("--abuse-seconds", type=Finite(1, 600), default=20.0, show_default=True, help="flood: how long the abuse lasts.")
@click.option(
    "--duration",
    type=Finite(0.5, 3600),
    default=10.0,
    show_default=True,
    help="pairs, mixed: seconds of chat measured, once every member joined; churn: seconds of replacements.",
)
@click.option(
    "--interval",
    type=Finite(0.05, 3600),
    default=2.0,
    show_default=True,
    help="pairs, mixed: seconds between one member's lines (start times spread evenly).",
)
@click.option(
    "--churn-rate",
    type=Finite(0.1, 5000),
    default=100.0,
    show_default=True,
    help="churn: members replaced a second (the oldest resets, a new one connects).",
)
@click.option(
    "--connect-window",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="pairs, mixed: members connecting at once at most, each one's place taken when it is welcomed "
    "(0: all at once, as after a restart).",
)
@click.option(
    "--server-pid", type=PidList(), default=None, help="PIDs of the target servers, to report their CPU and memory (summed)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_chat(
    target: tuple[tuple[str, int], ...] | None,
    scenario: str,
    clients: int,
    senders: int,
    messages: int,
    size: int,
    rate: float,
    workers: int,
    window: int,
    batch: int,
    check: str,
    placement: str,
    transport: str,
    use_tls: bool,
    abusers: int,
    abuse_seconds: float,
    duration: float,
    interval: float,
    churn_rate: float,
    connect_window: int,
    server_pid: list[int] | None,
    as_json: bool,
) -> None:
    """Measure a chat relay: copies/s, latency, loss, garbling, order.

    Senders send uniquely tagged lines; every client reads every copy.
    'slow' adds a client that never reads and compares p99; 'connections'
    opens --clients idle clients and checks they are all still served.
    'flood' runs socketlab's own server with its flood control on: a paced
    fanout (--rate, 10 by default, 100 messages) without and with one client
    sending flat out, then --abusers abusing clients for --abuse-seconds while
    two members chat and newcomers arrive.
    With --transport ws every client is a WebSocket client (--target is then
    the server's web address). With --transport socketio every client is a
    Socket.IO client over WebSocket (Engine.IO 4, no long-polling) that joins
    the room 'bench' with the event 'room' and sends each line as a 'chat
    message' event; any Socket.IO server that relays 'chat message' to the
    room (the sender included, as the tutorial's does) can be a --target.
    Copies and copies/s count the other clients' copies only: the senders'
    own lines coming back (the echo) are reported apart as echoes.

    'pairs' is the tutorial's rooms at scale: --clients members (an even
    number) connect at once, as after a restart, and join in pairs, a room
    each (its own server runs with --room-size 2; a --target must take
    rooms: /join, or Socket.IO's event 'room'); then each member says a line
    every --interval seconds for --duration seconds, and every copy is timed
    and checked. 'mixed' is the same with one room of min(500, N/4) members,
    about half of the others in rooms of 20 and the rest in pairs. Both
    report the accept storm (first connect to last welcome), the server's
    CPU per line and per connection-second and its memory per member (given
    its PIDs), and the benchmark's own busy share (a warning above 80 %).

    'churn' holds --clients idle members and replaces --churn-rate of them a
    second for --duration seconds (the oldest resets, a new one connects),
    while two probe members in a room of their own time a line every 20 ms:
    their latency, the server's CPU per replacement and its memory at the
    start, peak and end (given its PIDs).

    \b
    Examples:
      socketlab bench chat --rate 250
      socketlab bench chat --transport ws
      socketlab bench chat --transport socketio --rate 250
      socketlab bench chat --transport socketio --scenario connections --clients 2000
      socketlab bench chat --scenario connections --clients 2000
      socketlab bench chat --scenario pairs --clients 2000 --placement split
      socketlab bench chat --scenario mixed --clients 2000 --transport ws
      socketlab bench chat --scenario churn --clients 5000 --churn-rate 150 --transport ws
      socketlab bench chat --target 127.0.0.1:4000 --json
    """
    import json
    import tempfile

    from socketlab.addresses import format_address
    from socketlab.bench import chat as chat_bench
    from socketlab.bench.placement import Placement, unpin_process
    from socketlab.bench.report import connections_lines, fanout_lines

    own = None
    web = transport in ("ws", "socketio")
    if transport == "socketio" and scenario == "flood":
        raise click.UsageError("--scenario flood measures the line protocol's flood control: use --transport tcp or ws")
    if transport == "ws" and scenario == "flood" and target:
        raise click.UsageError(
            "--scenario flood over ws with a --target: its abusers speak TCP lines, and only the web address is known "
            "(run it without --target, or with --transport tcp against the line port)"
        )
    if scenario == "churn" and use_tls:
        raise click.UsageError("--scenario churn does not speak TLS: leave out --tls")
    plan = None
    if scenario in ("pairs", "mixed"):
        import secrets

        from socketlab.bench.rooms import RoomPlan

        if use_tls:
            raise click.UsageError(f"--scenario {scenario} does not speak TLS: leave out --tls")
        try:  # each run's rooms have names of their own: a server that never forgets a room finds them empty
            plan = RoomPlan.named(
                scenario, clients, interval=interval, duration=duration, size=size, prefix=f"bench-{secrets.token_hex(3)}-"
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    workdir = tempfile.TemporaryDirectory(prefix="socketlab-bench-")
    tls_context = None
    with bench_errors():
        cpus = Placement.named(placement)
        if cpus.server and target and not server_pid:
            raise click.UsageError("--placement split with a --target needs the servers' --server-pid")
        # churn: a replacement may connect before the server has seen its predecessor's reset
        headroom = 10 + (int(churn_rate) if scenario == "churn" else 0)
        server_options = ["--max-clients", str(max(1000, clients + headroom))]
        if plan is not None:
            server_options += ["--room-size", str(max(plan.sizes))]
        if scenario != "flood":  # flood control off, so the comparison with peers is like for like
            server_options += ["--max-rate", "0"]
        if use_tls:
            from socketlab.bench.transfer import Certificate
            from socketlab.tls import client_context

            certificate = Certificate.make(workdir.name)
            server_options += ["--tls-cert", certificate.cert, "--tls-key", certificate.key]
            tls_context = client_context(certificate.cert if not target else None, verify=not target)
        if target:
            address: Any = chat_bench.Targets(target)
            pids: Any = server_pid
        else:
            own = chat_bench.OwnServer(server_options, web=web)
            address = ("127.0.0.1", own.web_port or own.port)
            pids = own.pid
    progress = None if as_json else progress_printer()
    output: dict[str, Any] = {
        "scenario": scenario,
        "transport": transport,
        "tls": use_tls,
        "target": ",".join(format_address(a) for a in target) if target else f"socketlab chat serve (pid {pids})",
    }
    kind = chat_bench.ClientKind(web=web, tls=tls_context, socketio=transport == "socketio")
    lines: list[str] = []
    pinned: dict[int, dict[int, set[int]]] = {}  # a --target's servers: where their threads ran before
    with bench_errors():
        try:
            server_pids = [pids] if isinstance(pids, int) else pids or []
            cpus.pin_server(server_pids, saved=pinned if target else None)
            cpus.pin_load()
            output["placement"] = cpus.observed(server_pids)
            options: dict[str, Any] = dict(
                clients=clients,
                senders=min(senders, clients - 1),
                messages=messages,
                size=size,
                rate=rate,
                server_pid=pids,
                progress=progress,
                workers=workers,
                window=window,
                batch=batch,
                check_all=check == "all",
                kind=kind,
            )
            if plan is not None:
                from socketlab.bench.pairs import run_rooms
                from socketlab.bench.report import rooms_lines

                rooms = run_rooms(
                    address,
                    plan,
                    transport=transport,
                    server_pid=pids,
                    processes=workers,
                    connect_window=connect_window,
                    progress=progress,
                )
                output[scenario] = chat_bench.as_dict(rooms)
                lines += rooms_lines(f"{scenario} over {transport}", rooms)
            elif scenario == "fanout":
                result = chat_bench.run_fanout(address, **options)
                output["fanout"] = chat_bench.as_dict(result)
                lines += fanout_lines("fanout", result)
            elif scenario == "flood":
                from socketlab.bench import flood
                from socketlab.bench.report import abuse_lines

                if not rate:
                    options.update(rate=10.0, messages=min(messages, 100))
                # The flooder and the abusers speak TCP lines: over ws, to the same server's line port.
                line_address = ("127.0.0.1", own.port) if own is not None and web else chat_bench.Targets.of(address).first
                base = chat_bench.run_fanout(address, **options)
                flooded = chat_bench.run_fanout(address, flooder=True, flooder_at=line_address, **options)
                abuse = flood.run_abuse(line_address, abusers=abusers, seconds=abuse_seconds, server_pid=pids)
                ratio = flooded.latency_ms["p99"] / base.latency_ms["p99"] if base.latency_ms["p99"] else float("inf")
                output.update(
                    fanout=chat_bench.as_dict(base),
                    flooded=chat_bench.as_dict(flooded),
                    p99_ratio=round(ratio, 3),
                    abuse=chat_bench.as_dict(abuse),
                )
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
            elif scenario == "churn":
                from socketlab.bench.churn import run_churn
                from socketlab.bench.report import churn_lines

                churn = run_churn(
                    address, clients=clients, rate=churn_rate, duration=duration, server_pid=pids, progress=progress, kind=kind
                )
                output["churn"] = chat_bench.as_dict(churn)
                lines += churn_lines(churn)
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
@click.option(
    "--peers/--no-peers", default=True, show_default=True, help="Also measure socat between the same endpoints, if installed."
)
@click.option(
    "--tls",
    "use_tls",
    is_flag=True,
    help="Over TLS (a certificate made with openssl for the run; socat uses OPENSSL-LISTEN/OPENSSL).",
)
@click.option(
    "--buffer",
    "buffers",
    metavar="SIZE[,SIZE...]",
    help="Largest read/write at both ends (tcp-client/tcp-server --buffer, socat -b), each size in turn: a sweep.",
)
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
        for buffer in sizes
        for tool in tools
    }
    if as_json:
        by_name = {f"{tool}{f' {buffer}' if buffer else ''}": round(mbps) for (tool, buffer), mbps in best.items()}
        click.echo(
            json.dumps(
                {"runs": [asdict(r) | {"mb_per_second": round(r.mb_per_second)} for r in results], "best_mb_per_second": by_name}
            )
        )
    else:
        for buffer in sizes:
            label = f" with {buffer:,}-byte buffers" if buffer else ""
            click.echo(f"best{label}: " + ", ".join(f"{tool} {best[tool, buffer]:,.0f} MB/s" for tool in tools))


@bench.command("udp")
@click.option("--count", type=click.IntRange(1), default=200000, show_default=True, help="Datagrams to send flat out.")
@click.option("--size", type=click.IntRange(1, 65507), default=64, show_default=True, help="Bytes per datagram.")
@click.option(
    "--peers/--no-peers", default=True, show_default=True, help="Also measure socat's and ncat's receivers, if installed."
)
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
