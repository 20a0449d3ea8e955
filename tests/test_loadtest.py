"""sc-loadtest: each scenario at a tiny size against the real scd, and its helpers."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

from superchat.loadtest.cli import duration, render
from superchat.loadtest.ramp import parse_source_addresses
from superchat.loadtest.stats import Histogram
from superchat.protocol import ErrorCode
from tests.server_process import REPO, free_port

pytestmark = pytest.mark.timeout(120)

LOADTEST = REPO / "bin" / "sc-loadtest"
ROOMY = {"limits": {"message_rate_limit": 65535, "max_connections_per_ip": 255}}


def loadtest(server, *args: str) -> dict:
    """``server``: one ServerProcess, or a list of them (the nodes the sessions are spread over)."""
    addresses = ",".join(f"127.0.0.1:{each.port}" for each in (server if isinstance(server, list) else [server]))
    proc = subprocess.run(
        [sys.executable, str(LOADTEST), "--server", addresses, "--json", *args],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_bots_post_and_report_like_upstream(start_server):
    server = start_server(ROOMY)
    report = loadtest(server, "--clients", "4", "--duration", "2s", "--min-delay", "20ms", "--max-delay", "100ms")
    assert report["scenario"] == "bots"
    assert report["clients"]["attempted"] == report["clients"]["successful"] == 4
    assert report["connection_errors"] == 0
    messages = report["messages"]
    assert messages["posted"] > 10
    assert messages["failed"] == messages["fetch_failures"] == 0
    assert report["response"]["count"] == messages["posted"]
    assert 0 < report["response"]["p50_ms"] <= report["response"]["max_ms"]
    assert report["success_rate_percent"] == 100.0
    # Every bot is told of its own join (and of the others' in its channel), unasked.
    assert report["client"]["skipped_frames"]["CHANNEL_PRESENCE"] >= 4


def test_idle_holds_sessions_and_measures_server_memory_and_ping(start_server):
    server = start_server(ROOMY)
    report = loadtest(server, "--scenario", "idle", "--clients", "30", "--duration", "2s",
                      "--ping-sample", "5", "--server-pid", str(server.pid))
    sessions = report["sessions"]
    assert sessions["established"] == 30 and sessions["failed"] == 0
    assert sessions["open_at_end"] == 30 and sessions["dropped_during_hold"] == 0
    assert sessions["establish_seconds"] > 0
    rss = report["server_rss"]
    assert rss["pid"] == server.pid and rss["before_kib"] > 0 and rss["established_kib"] > 0
    assert rss["per_session_kib"] is not None
    ping = report["ping"]
    assert ping["sessions"] == 5 and ping["sent"] >= 5 and ping["lost"] == 0
    assert ping["count"] == ping["sent"] and 0 < ping["p50_ms"] <= ping["p99_ms"] <= ping["max_ms"]


def test_idle_counts_refusals_by_code_and_spreads_over_source_addresses(start_server):
    server = start_server({"limits": {"max_connections_per_ip": 4}})
    capped = loadtest(server, "--scenario", "idle", "--clients", "7", "--duration", "1s", "--ping-sample", "1")
    assert capped["sessions"]["established"] == 4
    assert capped["sessions"]["failures"] == {"error_5003": 3}

    spread = loadtest(server, "--scenario", "idle", "--clients", "8", "--duration", "1s", "--ping-sample", "1",
                      "--source-addresses", "127.0.0.2-127.0.0.3")
    assert spread["sessions"]["established"] == 8 and spread["sessions"]["failed"] == 0


def test_several_servers_get_the_sessions_round_robin(start_server):
    capped = {"limits": {"max_connections_per_ip": 4}}
    first, second = start_server(capped), start_server(capped)
    # Sessions 0, 2, 4, 6, 8 go to the first server, which refuses its fifth; 1, 3, 5, 7 fit the second.
    report = loadtest([first, second], "--scenario", "idle", "--clients", "9", "--duration", "1s",
                      "--ping-sample", "1")
    assert report["sessions"]["established"] == 8
    assert report["sessions"]["failures"] == {"error_5003": 1}


def test_fanout_delivers_every_post_to_every_subscriber_once(start_server):
    server = start_server(ROOMY)
    report = loadtest(server, "--scenario", "fanout", "--subscribers", "5", "--rate", "20", "--duration", "1s")
    assert report["subscribers"]["established"] == 5
    posts = report["posts"]
    assert posts["sent"] == posts["acknowledged"] == 20 and posts["errors"] == {}
    deliveries = report["deliveries"]
    assert deliveries["expected"] == 5 * 20
    assert deliveries["delivered"] == deliveries["expected"]
    assert deliveries["lost"] == deliveries["duplicates"] == deliveries["unexpected"] == 0
    assert report["latency"]["count"] == 100 and report["latency"]["p50_ms"] > 0
    last = report["last_subscriber_latency"]
    assert last["complete_posts"] == last["count"] == 20
    assert last["max_ms"] >= report["latency"]["p50_ms"]


def test_throughput_posts_closed_loop_beside_a_ping_prober(start_server):
    server = start_server(ROOMY)
    report = loadtest(server, "--scenario", "throughput", "--clients", "3", "--duration", "1s")
    assert report["posters"]["established"] == 3
    posts = report["posts"]
    assert posts["acknowledged"] > 0 and posts["per_second"] > 0
    assert posts["errors"] == {} and posts["timeouts"] == posts["disconnections"] == 0
    assert report["ack"]["count"] == posts["acknowledged"]
    ping = report["ping"]
    assert ping["sent"] >= 8 and ping["lost"] == 0 and ping["p99_ms"] is not None


def test_throughput_counts_rate_limit_errors_without_failing(start_server):
    server = start_server({"limits": {"message_rate_limit": 5}})
    report = loadtest(server, "--scenario", "throughput", "--clients", "2", "--duration", "1s")
    posts = report["posts"]
    assert posts["acknowledged"] == 10
    assert posts["errors"][str(ErrorCode.MESSAGE_RATE_LIMITED.value)] > 0 and posts["disconnections"] == 0


def test_throughput_spread_over_processes_posts_in_one_window(start_server):
    server = start_server(ROOMY)
    # Connecting at 2 per second in all, the first process takes a second longer than the second
    # to set up its posters: it is waited for.
    report = loadtest(server, "--scenario", "throughput", "--clients", "5", "--duration", "2s", "--processes", "2",
                      "--ramp", "2")
    assert report["windows_apart_ms"] < 300
    # Five posters in two processes (3 + 2), each under a nickname of its own.
    assert report["posters"]["attempted"] == report["posters"]["established"] == 5
    posts = report["posts"]
    assert posts["acknowledged"] > 0 and posts["errors"] == {} and posts["timeouts"] == posts["disconnections"] == 0
    assert report["ack"]["count"] == posts["acknowledged"]
    # One window for all: as long as one process's, not the sum of two.
    assert 2 <= report["window_seconds"] < 4
    assert posts["per_second"] == pytest.approx(posts["acknowledged"] / report["window_seconds"], rel=0.001)
    # The first process alone probes.
    assert report["ping"]["sessions"] == 1 and report["ping"]["sent"] >= 16 and report["ping"]["lost"] == 0
    client = report["client"]
    assert len(client["processes"]) == 2 and all(each["cpu_seconds"] > 0 for each in client["processes"])
    assert client["cpu_seconds"] == round(sum(each["cpu_seconds"] for each in client["processes"]), 3)
    assert client["window_cpu_percent"] == max(each["window_cpu_percent"] for each in client["processes"])
    assert "worker" not in report["parameters"] and report["parameters"]["processes"] == 2
    lines = render(report)
    assert any(line.startswith("Load tool: 2 processes, ") for line in lines), lines
    assert any(line.startswith("  the processes began posting within ") for line in lines), lines


def test_bots_spread_over_processes_report_as_one_run(start_server):
    server = start_server(ROOMY)
    report = loadtest(server, "--clients", "5", "--duration", "2s", "--min-delay", "20ms", "--max-delay", "100ms",
                      "--processes", "3")
    assert report["clients"]["attempted"] == report["clients"]["successful"] == 5
    messages = report["messages"]
    assert messages["posted"] > 10 and messages["failed"] == 0
    assert report["response"]["count"] == messages["posted"]
    assert len(report["client"]["processes"]) == 3


def test_processes_spread_only_the_scenarios_that_can_be_spread():
    for scenario in ("idle", "fanout"):
        proc = subprocess.run([sys.executable, str(LOADTEST), "--scenario", scenario, "--processes", "2"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[-1] == (f"sc-loadtest: error: --processes spreads only bots and throughput, "
                                                f"not {scenario}")


def test_a_spread_run_whose_server_is_gone_reports_the_failure():
    proc = subprocess.run([sys.executable, str(LOADTEST), "--server", f"127.0.0.1:{free_port()}", "--json",
                           "--scenario", "throughput", "--processes", "2", "--duration", "1s"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"].startswith("load process ")


def test_a_missing_channel_is_reported_not_crashed_on(start_server):
    server = start_server(ROOMY)
    proc = subprocess.run(
        [sys.executable, str(LOADTEST), "--server", f"127.0.0.1:{server.port}", "--json", "--scenario", "fanout",
         "--channel", "nosuchchannel", "--duration", "1s"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "no channel named 'nosuchchannel'"


def test_percentiles_are_nearest_rank_and_within_one_percent():
    small = Histogram()
    for us in (5, 1, 4, 2, 3):
        small.record_us(us)
    assert [small.percentile(q) for q in (0, 20, 40, 50, 60, 100)] == [1, 1, 2, 3, 3, 5]
    assert (small.min, small.max, small.count, small.mean()) == (1, 5, 5, 3.0)

    wide = Histogram()
    values = list(range(1, 200_001, 7))
    for us in reversed(values):
        wide.record_us(us)
    for q in (50, 90, 95, 99, 99.9):
        exact = values[math.ceil(len(values) * q / 100) - 1]
        assert abs(wide.percentile(q) - exact) <= exact * 0.008, q
    assert wide.percentile(100) == wide.max == values[-1]

    summary = wide.summary()
    assert summary["count"] == len(values)
    assert summary["max_ms"] == round(values[-1] / 1000, 3)
    assert Histogram().summary() == {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                                     "max_ms": None, "mean_ms": None}


def test_histograms_of_several_processes_merge_into_the_histogram_of_all_samples():
    everything, parts = Histogram(), [Histogram(), Histogram(), Histogram()]
    for n, us in enumerate(range(3, 90_000, 11)):
        everything.record_us(us)
        parts[n % 3].record_us(us)
    merged = Histogram()
    for part in (*parts, Histogram()):  # an empty one changes nothing
        merged.merge(json.loads(json.dumps(part.state())))  # as it comes from another process
    assert merged.summary() == everything.summary()
    assert [merged.percentile(q) for q in (1, 50, 99, 100)] == [everything.percentile(q) for q in (1, 50, 99, 100)]
    assert (merged.min, merged.max, merged.count, merged.total) == (3, everything.max, everything.count,
                                                                     everything.total)


def test_nanoseconds_are_recorded_as_microseconds():
    h = Histogram()
    h.record_ns(1_500_999)
    h.record_ns(-5)  # a clock step can never make a latency negative
    assert (h.min, h.max) == (0, 1500)


def test_durations_take_go_form_or_seconds():
    assert duration("1m30s") == 90
    assert duration("250ms") == 0.25
    assert duration("2") == 2.0
    assert duration("1.5h") == 5400
    for bad in ("", "1x", "10 s", "-1s"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_source_addresses_take_lists_and_inclusive_ranges():
    assert parse_source_addresses("127.0.0.1-127.0.0.3,10.0.0.9") == [
        "127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.9"]
    assert len(parse_source_addresses("127.0.0.1-127.0.0.40")) == 40
    with pytest.raises(ValueError):
        parse_source_addresses("127.0.0.5-127.0.0.1")
