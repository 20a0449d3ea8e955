#!/usr/bin/env python3
"""How the cost grows: broadcast time against subscribers and memory against sessions.

    python3 bench/scaling.py RESULTS.json [RESULTS.json ...] [--output PATH]

Reads the fan-out and idle runs of one or more results files of ``bench/run.py`` (a later file's
run of the same benchmark and server replaces an earlier one), prints per server and size the
server's own broadcast time per delivery and its memory per session, and draws both against the
size on log-log axes beside a line of slope one through scd's middle point: costs that grow linearly
run parallel to it. Needs matplotlib (bench/requirements.txt) for the chart only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import chart

BENCH = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH / "scaling.png"
COLOURS = {"scd": "#1f77b4", "upstream": "#d62728"}


def points(documents: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """Per figure ("broadcast_ms", "rss_growth_mib") and server: size -> value, from runs that completed."""
    runs: dict[tuple[str, str], dict] = {}
    for document in documents:
        for run in document["runs"]:
            if "error" not in run and "result" in run:
                runs[(run["benchmark"], run["server"])] = run
    found: dict[str, dict[str, dict[int, float]]] = {"broadcast_ms": {}, "rss_growth_mib": {}}
    for run in runs.values():
        if run["scenario"] == "fanout":
            mean = ((run.get("server_stats") or {}).get("broadcast") or {}).get("mean_ms")
            if mean is not None and run["result"]["deliveries"]["lost"] == 0:
                found["broadcast_ms"].setdefault(run["server"], {})[run["size"]] = mean
        elif run["scenario"] == "idle":
            rss, sessions = run["result"].get("server_rss") or {}, run["result"]["sessions"]
            # Only runs that seated every session: a partial run's growth is not that size's.
            if rss.get("established_kib") and sessions["established"] == sessions["attempted"]:
                growth = (rss["established_kib"] - rss["before_kib"]) / 1024
                found["rss_growth_mib"].setdefault(run["server"], {})[run["size"]] = growth
    return found


def print_figures(found: dict[str, dict[str, dict[int, float]]]) -> None:
    print("server    subscribers  broadcast (ms)  per delivery (µs)")
    for server, by_size in sorted(found["broadcast_ms"].items()):
        for size, ms in sorted(by_size.items()):
            print(f"{server:9} {size:>11}  {ms:>14.2f}  {1000 * ms / size:>17.1f}")
    print("\nserver    sessions  RSS growth (MiB)  per session (KiB)")
    for server, by_size in sorted(found["rss_growth_mib"].items()):
        for size, mib in sorted(by_size.items()):
            print(f"{server:9} {size:>8}  {mib:>16.1f}  {1024 * mib / size:>17.1f}")


def draw(found: dict[str, dict[str, dict[int, float]]], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [("broadcast_ms", "subscribers of the channel", "server's own broadcast time, mean (ms)",
               "One post to every subscriber"),
              ("rss_growth_mib", "idle sessions held", "server RSS growth (MiB)", "Memory of idle sessions")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, (figure, xlabel, ylabel, title) in zip(axes, panels, strict=True):
        for server, by_size in sorted(found[figure].items()):
            sizes = sorted(by_size)
            ax.plot(sizes, [by_size[size] for size in sizes], marker="o", color=COLOURS.get(server), label=server)
        ours = found[figure].get("scd")
        if ours:
            sizes = sorted(ours)
            # Slope one through scd's middle point: linear growth runs parallel to it.
            middle = sizes[len(sizes) // 2]
            per_unit = ours[middle] / middle
            ax.plot([sizes[0], sizes[-1]], [per_unit * sizes[0], per_unit * sizes[-1]], linestyle=":",
                    color="#777777", label="linear (slope 1)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.set_ylabel(f"{ylabel} (log scale)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.15)
        ax.legend(loc="upper left")
    fig.tight_layout()
    return chart.save(fig, output)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/scaling.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results files of bench/run.py")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT})")
    p.add_argument("--no-chart", action="store_true", help="only print the figures")
    opts = p.parse_args(argv)
    try:
        documents = [json.loads(path.read_text()) for path in opts.results]
    except (OSError, json.JSONDecodeError) as exc:
        p.error(f"cannot read a results file: {exc}")
    found = points(documents)
    if not any(found.values()):
        p.error("the results files hold no completed fan-out or idle runs")
    print_figures(found)
    if not opts.no_chart:
        print(f"\n{draw(found, opts.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
