#!/usr/bin/env python3
"""Draw ``bench/fanout-latency.png`` from a results file of ``bench/run.py``.

    python3 bench/chart.py [bench/results/<date>.json] [--output PATH]

Last-subscriber latency (p50 and p99: from the post being written until the last subscriber
had it) against the number of subscribers, at the fan-out benchmarks' fixed post rate, for
scd and, when the file has it, the upstream server. Needs matplotlib (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH / "fanout-latency.png"
COLOURS = {"scd": "#1f77b4", "upstream": "#d62728"}


def series(document: dict) -> dict[str, dict[str, list]]:
    """Per server: subscriber counts and last-subscriber p50/p99 in ms, from runs that completed."""
    found: dict[str, dict[int, dict]] = {}
    for run in document["runs"]:
        if run["scenario"] != "fanout" or "error" in run or "result" not in run:
            continue
        last = run["result"]["last_subscriber_latency"]
        if last["count"]:
            found.setdefault(run["server"], {})[run["size"]] = last
    return {
        server: {
            "subscribers": sorted(points),
            "p50": [points[size]["p50_ms"] for size in sorted(points)],
            "p99": [points[size]["p99_ms"] for size in sorted(points)],
        }
        for server, points in found.items()
    }


def draw(document: dict, output: Path = DEFAULT_OUTPUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    data = series(document)
    if not data:
        raise ValueError("the results file has no completed fan-out runs")
    rate = document.get("settings", {}).get("fanout_rate")
    machine = document.get("machine", {})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for server in document.get("servers", sorted(data)):
        if server not in data:
            continue
        points = data[server]
        colour = COLOURS.get(server)
        ax.plot(points["subscribers"], points["p50"], marker="o", color=colour, label=f"{server} p50")
        ax.plot(points["subscribers"], points["p99"], marker="^", linestyle="--", color=colour, label=f"{server} p99")
    sizes = sorted({size for points in data.values() for size in points["subscribers"]})
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.6)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("subscribers of the channel (log scale)")
    ax.set_ylabel("last-subscriber latency (ms, log scale)")
    title = "Fan-out: time until the last subscriber has a post"
    if rate:
        title += f" ({rate:g} posts/s)"
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(loc="lower right")
    note = (f"{document.get('started_at', '')[:10]}; {machine.get('nproc')} cores, {machine.get('cpu_model')}; "
            "load tool on the same machine, loopback")
    fig.text(0.01, 0.01, note, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, output)


def save(fig, output: Path) -> Path:
    import matplotlib.pyplot as plt

    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/chart.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", type=Path, help="results file (default: the newest in bench/results)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT})")
    opts = p.parse_args(argv)
    path = opts.results
    if path is None:
        found = sorted((BENCH / "results").glob("*.json"), key=lambda candidate: candidate.stat().st_mtime)
        if not found:
            p.error("no results file in bench/results; run bench/run.py first")
        path = found[-1]
    print(draw(json.loads(path.read_text()), opts.output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
