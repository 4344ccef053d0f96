"""Draw docs/benchmarks.md's charts from the raw JSON that compare_peers.py writes.

    pip install '.[docs]'         # matplotlib, for the docs only; socketlab does not need it
    python docs/compare_peers.py --runs 7 --scenarios paced,flat,bulk --json runs.json
    python docs/charts.py runs.json [more.json ...] [--out docs/images] [--prefix bench]

Writes, for the scenarios the file holds:

- ``<prefix>-latency.png``: latency percentiles (p50, p90, p99, p99.9) of
  the paced fanout per server, medians over the runs, the runs' range as
  whiskers;
- ``<prefix>-copies.png``: copies per second of the flat fanout (64 lines
  per send, and one: the scenario ``lines``) per server, and the server's
  CPU time per copy;
- ``<prefix>-bulk.png``: bulk TCP MB/s by buffer size, socketlab and socat;
- ``<prefix>-scale.png``: the pairs workload (``--scenario pairs``) against
  the number of members, one line per server and transport: p99 latency,
  server CPU per line and memory per member, medians over the runs. Each
  file may hold another number of members (``--bench-args "--clients N"``).

Every chart names the machine the figures come from (CPUs, model, caches).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PERCENTILES = ("p50", "p90", "p99", "p99.9")
COLOURS = {"socketlab": "#2b6cb0", "node": "#68a063", "ncat": "#d69e2e", "floor": "#a0aec0", "socat": "#d69e2e"}


def machine_line(data: dict[str, Any], placed: bool = True) -> str:
    """The machine (CPUs, model, per-core caches) and, for chat runs, where the server and load ran."""
    facts = data.get("machine", {})
    model = facts.get("Model name", "")
    if facts.get("Hypervisor vendor"):
        model += f" ({facts['Hypervisor vendor']})"
    caches = [f"{name.split()[0]} {facts[name]}" for name in ("L1d per core", "L2 per core") if name in facts]
    parts = [f"{facts.get('cpus', '?')} CPUs", model, " ".join(caches) + " per core" if caches else ""]
    placement = data.get("placement")
    cpus = lambda numbers: ",".join(map(str, numbers))  # noqa: E731
    where = f"; server on CPU {cpus(placement['server'])}, load on {cpus(placement['load'])}" if placement and placed else ""
    return ", ".join(part for part in parts if part) + where


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, median - min, max - median): a bar and its whiskers."""
    middle = statistics.median(values)
    return middle, middle - min(values), max(values) - middle


def fanouts(data: dict[str, Any], scenario: str) -> dict[str, list[dict[str, Any]]]:
    rows = data["raw"].get(scenario, {})
    return {peer: [r["fanout"] for r in reports if "fanout" in r] for peer, reports in rows.items()}


def latency_chart(data: dict[str, Any], path: pathlib.Path) -> None:
    runs = fanouts(data, "paced")
    peers = [peer for peer in runs if runs[peer]]
    figure, axes = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(peers)
    for index, peer in enumerate(peers):
        bars = [spread([run["latency_ms"][p] for run in runs[peer]]) for p in PERCENTILES]
        positions = [x + (index - (len(peers) - 1) / 2) * width for x in range(len(PERCENTILES))]
        axes.bar(
            positions,
            [b[0] for b in bars],
            width,
            yerr=[[b[1] for b in bars], [b[2] for b in bars]],
            label=peer,
            color=COLOURS.get(peer),
            capsize=3,
        )
    first = runs[peers[0]][0]
    axes.set_xticks(range(len(PERCENTILES)), PERCENTILES)
    axes.set_ylabel("latency, ms (median of runs; whiskers: min-max)")
    axes.set_title(
        f"Paced fanout: {first['clients']} clients, {first['senders']} senders x {first['rate']:g} msg/s, "
        f"{len(runs[peers[0]])} runs\n{machine_line(data)}",
        fontsize=9,
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def copies_chart(data: dict[str, Any], path: pathlib.Path) -> None:
    """Copies/s flat out (64 lines per send, and one) and the server's CPU per copy, per server."""
    scenarios = [
        (name, label) for name, label in (("flat", "64 lines per send"), ("lines", "1 line per send")) if name in data["raw"]
    ]
    # Peers with runs in every scenario drawn, so that every bar has its figures.
    peers = [peer for peer in fanouts(data, scenarios[0][0]) if all(fanouts(data, name).get(peer) for name, _ in scenarios)]
    figure, (rate_axes, cost_axes) = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.8 / len(peers)
    for index, peer in enumerate(peers):
        positions = [x + (index - (len(peers) - 1) / 2) * width for x in range(len(scenarios))]
        rates = [spread([run["copies_per_second"] / 1e6 for run in fanouts(data, name)[peer]]) for name, _ in scenarios]
        costs = [
            spread([run["cpu_seconds"].get("server", 0) / max(run["delivered"], 1) * 1e9 for run in fanouts(data, name)[peer]])
            for name, _ in scenarios
        ]
        for axes, bars in ((rate_axes, rates), (cost_axes, costs)):
            axes.bar(
                positions,
                [b[0] for b in bars],
                width,
                yerr=[[b[1] for b in bars], [b[2] for b in bars]],
                label=peer,
                color=COLOURS.get(peer),
                capsize=3,
            )
    for axes, label in ((rate_axes, "million copies/s"), (cost_axes, "server CPU ns per copy (lower is better)")):
        axes.set_xticks(range(len(scenarios)), [text for _, text in scenarios])
        axes.set_ylabel(f"{label}\n(median; whiskers: min-max)")
    rate_axes.legend(fontsize=8)
    first = fanouts(data, scenarios[0][0])[peers[0]][0]
    figure.suptitle(
        f"Flat-out fanout: {first['clients']} clients, {first['senders']} senders x {first['messages']:,} messages "
        f"of {first['size']} bytes, {len(fanouts(data, scenarios[0][0])[peers[0]])} runs\n{machine_line(data)}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def bulk_chart(data: dict[str, Any], path: pathlib.Path) -> None:
    series: dict[str, dict[int, list[float]]] = {}
    for report in data["raw"]["bulk"]["bulk"]:
        for run in report.get("runs", []):
            tool = run["tool"].split()[0]
            series.setdefault(tool, {}).setdefault(run["buffer"], []).append(run["mb_per_second"])
    figure, axes = plt.subplots(figsize=(8, 3.8))
    for tool, by_size in series.items():
        sizes = sorted(by_size)
        middles = [spread(by_size[size]) for size in sizes]
        axes.errorbar(
            sizes,
            [m[0] for m in middles],
            yerr=[[m[1] for m in middles], [m[2] for m in middles]],
            marker="o",
            capsize=3,
            label=tool,
            color=COLOURS.get(tool),
        )
    axes.set_xscale("log", base=2)
    sizes = sorted({size for by_size in series.values() for size in by_size})
    axes.set_xticks(sizes, [f"{size >> 10}K" if size < 1 << 20 else f"{size >> 20}M" for size in sizes])
    axes.set_xlabel("largest read/write at both ends (socketlab --buffer, socat -b)")
    axes.set_ylabel("MB/s (median; whiskers: min-max)")
    axes.set_ylim(bottom=0)
    axes.set_title(f"Bulk TCP through a pipe, client to server\n{machine_line(data, placed=False)}", fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


#: The servers of the pairs workload as the scale chart names them.
SCALE_NAMES = {
    "socketlab": "socketlab, TCP",
    "ws": "socketlab, WebSocket",
    "socketlab-socketio": "socketlab, Socket.IO",
    "node-socketio": "Node (socket.io)",
}
SCALE_PANELS = (
    (lambda run: run["latency_ms"]["p99"], "p99 latency (ms)", "log"),
    (lambda run: run["server_us_per_line"], "server CPU per line (us)", "linear"),
    (lambda run: run["kib_per_member"], "server memory per member (KiB)", "linear"),
)


def scale_points(files: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every pairs run of *files*, by server and number of members."""
    points: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for data in files:
        for peer, reports in data["raw"].get("pairs", {}).items():
            for report in reports:
                run = report.get("pairs")
                if run and run.get("server_us_per_line") is not None:
                    points.setdefault(peer, {}).setdefault(run["members"], []).append(run)
    return points


def scale_chart(files: list[dict[str, Any]], path: pathlib.Path) -> None:
    points = scale_points(files)
    figure, panels = plt.subplots(1, 3, figsize=(12, 4.2))
    styles = {"socketlab": "o-", "ws": "s-", "socketlab-socketio": "^-", "node-socketio": "D--"}
    for axes, (value, label, scale) in zip(panels, SCALE_PANELS, strict=True):
        for peer, by_members in points.items():
            members = sorted(by_members)
            middles = [statistics.median(value(run) for run in by_members[count]) for count in members]
            axes.plot(members, middles, styles.get(peer, "o-"), label=SCALE_NAMES.get(peer, peer))
        axes.set_xlabel("members (pairs, a line every 2 s each)")
        axes.set_ylabel(label)
        axes.set_yscale(scale)
        axes.grid(True, alpha=0.3)
    panels[0].legend(fontsize=8)
    figure.suptitle(f"The tutorial's rooms at scale -- {machine_line(files[-1])}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        type=pathlib.Path,
        nargs="+",
        help="--json files of compare_peers.py (a later file's scenarios replace an earlier's)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent / "images")
    parser.add_argument("--prefix", default="bench")
    args = parser.parse_args()
    data: dict[str, Any] = {"raw": {}}
    files: list[dict[str, Any]] = []
    for runs in args.runs:
        try:
            more = json.loads(runs.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"cannot read {runs}: {error}")
        files.append(more)
        if "machine" in data and more.get("machine") != data["machine"]:
            parser.error(f"{runs} comes from another machine than the files before it: one chart, one machine")
        if data.get("placement") and more.get("placement") and more["placement"] != data["placement"]:
            parser.error(f"{runs} used another CPU placement than the files before it")
        data = {
            **data,
            **more,
            "raw": {**data["raw"], **more["raw"]},
            "placement": data.get("placement") or more.get("placement"),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for scenario, draw, name in (
        ("paced", latency_chart, "latency"),
        ("flat", copies_chart, "copies"),
        ("bulk", bulk_chart, "bulk"),
    ):
        if scenario in data["raw"]:
            path = args.out / f"{args.prefix}-{name}.png"
            draw(data, path)
            drawn.append(str(path))
    if scale_points(files):
        path = args.out / f"{args.prefix}-scale.png"
        scale_chart(files, path)
        drawn.append(str(path))
    print("\n".join(drawn) if drawn else "no paced, flat, bulk or pairs runs in those files")


if __name__ == "__main__":
    main()
