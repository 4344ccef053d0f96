"""Human-readable reports of benchmark results (the CLI prints these)."""

from __future__ import annotations

from typing import Any


def fanout_lines(title: str, result: Any) -> list[str]:
    """Describe a FanoutResult in a few aligned lines."""
    pace = f"{result.rate:g} msg/s per sender" if result.rate else "flat out"
    lines = [
        f"{title}: {result.clients} clients, {result.senders} senders x {result.messages} messages "
        f"of {result.size} bytes, {pace}",
        f"  delivered   {result.delivered:,} / {result.expected:,} copies ({100 * result.delivered_share:.2f} %), "
        f"{result.duplicates} duplicates, {result.garbled} garbled lines, {result.order_violations} order violations",
        f"  throughput  {result.copies_per_second:,} copies/s over {result.seconds:.3f} s",
    ]
    if result.echoes:
        lines.append(f"  echoes      {result.echoes:,} copies of senders' own lines came back to them (not counted as copies)")
    lines += [
        f"  latency     p50 {result.latency_ms['p50']:.3f} ms   p99 {result.latency_ms['p99']:.3f} ms   "
        f"max {result.latency_ms['max']:.3f} ms",
    ]
    if result.latency_by_position:
        lines.append(
            "  p99 by join position  "
            + "   ".join(f"{row['position']}: {row['p99']:.3f}" for row in result.latency_by_position)
            + " ms"
        )
    cpu = result.cpu_seconds
    if cpu:
        parts = [f"{name.replace('_', ' ')} {seconds:.2f} s" for name, seconds in cpu.items()]
        lines.append("  cpu         " + ", ".join(parts))
        if result.delivered:
            bench = sum(seconds for name, seconds in cpu.items() if name.startswith("bench"))
            per_copy = [f"bench {bench / result.delivered * 1e6:.2f} us"]
            if "server" in cpu:
                per_copy.insert(0, f"server {cpu['server'] / result.delivered * 1e6:.2f} us")
            lines.append("  cpu/copy    " + ", ".join(per_copy))
    if result.server_rss_kib:
        rss = result.server_rss_kib
        lines.append(f"  server rss  {rss['before']:,} KiB before, {rss['peak']:,} KiB peak")
    return lines


def connections_lines(result: Any) -> list[str]:
    lines = [
        f"connections: {result.requested:,} idle clients requested (open-file limit {result.open_file_limit:,})",
        f"  connected   {result.connected:,}",
        f"  served      {result.served:,} received a message sent after all had connected",
        f"  took        {result.seconds:.1f} s",
    ]
    if result.server_rss_kib:
        rss = result.server_rss_kib
        lines.append(
            f"  server rss  {rss['before']:,} KiB before, {rss['after']:,} KiB after: "
            f"{result.kib_per_connection} KiB per connection"
        )
    return lines


def abuse_lines(result: Any) -> list[str]:
    """Describe an AbuseResult."""
    trips = result.round_trip_ms
    return [
        f"abuse: {result.abusers} abusers for {result.seconds:g} s: {result.abuser_connections:,} connections, "
        f"{result.abuser_bytes / 1e6:,.0f} MB sent",
        f"  two members {result.round_trips} round trips: p50 {trips['p50']:.3f} ms   p99 {trips['p99']:.3f} ms   "
        f"max {trips['max']:.3f} ms",
        f"  newcomers   {result.newcomers - result.newcomers_refused} of {result.newcomers} welcomed, "
        f"slowest in {result.slowest_welcome_ms:.1f} ms",
    ] + (
        [f"  server rss  {result.server_rss_kib['before']:,} KiB before, {result.server_rss_kib['peak']:,} KiB peak"]
        if result.server_rss_kib
        else []
    )


def rooms_lines(title: str, result: Any) -> list[str]:
    """Describe a RoomsResult (``bench chat --scenario pairs`` or ``mixed``)."""
    layout = ", ".join(f"{count:,} of {size}" for size, count in result.rooms.items())
    lines = [
        f"{title}: {result.members:,} members in rooms ({layout}), a line of {result.size} bytes every "
        f"{result.interval:g} s each for {result.duration:g} s; {result.processes} load "
        f"{'process' if result.processes == 1 else 'processes'}",
        f"  joined      {result.joined:,} of {result.members:,} ({result.connected:,} connected, {result.welcomed:,} welcomed; "
        f"{result.refused:,} refused, {result.failed:,} failed)",
        f"  storm       {'all' if not result.connect_window else f'{result.connect_window:,} at a time'} connecting: "
        f"the last welcome {result.storm_seconds:.3f} s after the first connect "
        f"(each one's wait p50 {result.welcome_ms.get('p50', 0):.1f} ms, p99 {result.welcome_ms.get('p99', 0):.1f} ms)",
        f"  delivered   {result.delivered:,} / {result.expected:,} copies of {result.lines:,} lines "
        f"({100 * result.delivered_share:.2f} %), {result.duplicates} duplicates, {result.garbled} garbled lines, "
        f"{result.order_violations} order violations, {result.strays} from other rooms",
    ]
    if result.echoes:
        lines.append(f"  echoes      {result.echoes:,} copies of members' own lines came back to them (not counted as copies)")
    latency = result.latency_ms
    where = "to its arrival at the member's socket" if result.latency_clock == "kernel" else "to its read by the member"
    lines.append(
        f"  latency     p50 {latency['p50']:.3f} ms   p99 {latency['p99']:.3f} ms   max {latency['max']:.3f} ms "
        f"(every copy, {where})"
    )
    if result.latency_read_ms:
        read = result.latency_read_ms
        lines.append(
            f"  read        p50 {read['p50']:.3f} ms   p99 {read['p99']:.3f} ms   max {read['max']:.3f} ms "
            f"(to its read by the load process: the instrument's own delay added)"
        )
    cpu = result.cpu_seconds
    if "server" in cpu:
        rss = result.server_rss_kib
        per_line = f"{result.server_us_per_line:.1f} us" if result.server_us_per_line is not None else "-"
        if result.server_system_us_per_line is not None:
            per_line += f" ({result.server_system_us_per_line:.1f} us in the kernel)"
        per_copy = f"{result.server_us_per_copy:.1f} us" if result.server_us_per_copy is not None else "-"
        lines.append(
            f"  server      {cpu['server']:.2f} s CPU: {per_line} per line ({per_copy} per copy), "
            f"{result.server_us_per_connection_second:.2f} us per connection-second; "
            f"{cpu.get('server_storm', 0):.2f} s during the storm and joins"
        )
        lines.append(
            f"  server rss  {rss['before']:,} KiB before, {rss['joined']:,} KiB joined ({result.kib_per_member} KiB per member), "
            f"{rss['peak']:,} KiB peak"
        )
    busy = result.bench_busy
    lines.append(
        f"  bench       {cpu.get('bench', 0):.2f} s CPU: {100 * busy.get('share', 0):.0f} % of its "
        f"{busy.get('load_cpus', 0)} CPU{'s' if busy.get('load_cpus', 0) != 1 else ''}, busiest process "
        f"{100 * busy.get('busiest_process', 0):.0f} %; lines left p99 {result.send_lag_ms.get('p99', 0):.2f} ms late"
    )
    lines += [f"  warning     {warning}" for warning in result.warnings]
    return lines


def churn_lines(result: Any) -> list[str]:
    lines = [
        f"churn: {result.members:,} members, {result.rate:g} replaced a second for {result.seconds:.1f} s",
        f"  replaced    {result.replaced:,} ({result.failed:,} could not connect; {result.dropped:,} closed by the server)",
    ]
    asked = int(result.rate * result.seconds)
    if asked - result.replaced - result.failed > max(2, 0.05 * asked):  # (the first one comes after 1/rate s)
        lines.append(f"  warning     {asked:,} asked for: the benchmark could not connect new members that fast")
    if result.latency_ms:
        latency = result.latency_ms
        lines.append(
            f"  probes      {result.probe_lines:,} lines, {result.probe_lost:,} lost; latency p50 {latency['p50']:.3f} ms   "
            f"p99 {latency['p99']:.3f} ms   max {latency['max']:.3f} ms"
        )
    if result.server_rss_kib:
        rss = result.server_rss_kib
        lines.append(f"  server rss  {rss['start']:,} KiB at the start, {rss['peak']:,} KiB peak, {rss['end']:,} KiB at the end")
    if result.server_cpu_share is not None:
        per = result.server_cpu_us_per_replacement
        lines.append(
            f"  server cpu  {100 * result.server_cpu_share:.1f} % of a CPU"
            + (f", {per:,.1f} us per replacement" if per is not None else "")
            + " (everything: idle members' keepalives and the probes' lines too)"
        )
    lines.append(f"  benchmark   {100 * result.bench_busy:.0f} % busy (its probes apart)")
    return lines
