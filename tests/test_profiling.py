"""The /debug/pprof/ endpoints, read back with a small protobuf decoder and with the real `go tool pprof`."""

from __future__ import annotations

import gzip
import http.client
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from superchat.observability.pprof import Frame, Profile
from tests.tools import require

pytestmark = pytest.mark.timeout(90)

TARGET = Path(__file__).resolve().parent / "profiling_target.py"
PARKED_GREENLETS = 8


# --- A minimal reader for perftools.profiles.Profile ---------------------------------------------------------


@dataclass
class Decoded:
    strings: list[str] = field(default_factory=list)
    sample_types: list[tuple[str, str]] = field(default_factory=list)
    samples: list[tuple[list[int], list[int]]] = field(default_factory=list)
    locations: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    functions: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    mapping_files: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    period_type: tuple[str, str] = ("", "")
    period: int = 0
    time_nanos: int = 0
    duration_nanos: int = 0
    default_sample_type: str = ""

    def stacks(self) -> list[tuple[list[str], list[int]]]:
        """Each sample as its function names, leaf first, and its values."""
        return [([self.functions[function_id][0] for location_id in location_ids
                  for function_id, _ in self.locations[location_id]], values)
                for location_ids, values in self.samples]

    def flat(self, sample_type: str) -> dict[str, int]:
        """Values summed by leaf function, as pprof's "flat" column."""
        index = [kind for kind, _ in self.sample_types].index(sample_type)
        totals: dict[str, int] = {}
        for names, values in self.stacks():
            totals[names[0]] = totals.get(names[0], 0) + values[index]
        return totals

    def top(self, sample_type: str) -> str:
        totals = self.flat(sample_type)
        return max(totals, key=totals.__getitem__)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise AssertionError(f"unexpected wire type {wire} for field {number}")
        yield number, wire, value


def _ints(wire: int, value) -> list[int]:
    if wire == 0:
        values = [value]
    else:
        values, pos = [], 0
        while pos < len(value):
            item, pos = _varint(value, pos)
            values.append(item)
    return [item - (1 << 64) if item >= 1 << 63 else item for item in values]


def _scalars(message: bytes) -> dict[int, int]:
    return {number: _ints(wire, value)[0] for number, wire, value in _fields(message)}


def decode(body: bytes) -> Decoded:
    raw = gzip.decompress(body)
    refs: dict[str, list] = {"sample_type": [], "comment": [], "mapping": []}
    profile = Decoded()
    for number, wire, value in _fields(raw):
        if number == 1:
            refs["sample_type"].append(_scalars(value))
        elif number == 2:
            ids: list[int] = []
            values: list[int] = []
            for inner, inner_wire, inner_value in _fields(value):
                (ids if inner == 1 else values).extend(_ints(inner_wire, inner_value))
            profile.samples.append((ids, values))
        elif number == 3:
            refs["mapping"].append(_scalars(value))
        elif number == 4:
            location = {1: 0}
            lines = []
            for inner, inner_wire, inner_value in _fields(value):
                if inner == 4:
                    line = _scalars(inner_value)
                    lines.append((line.get(1, 0), line.get(2, 0)))
                else:
                    location[inner] = _ints(inner_wire, inner_value)[0]
            assert location[1] not in profile.locations, "location ids must be unique"
            profile.locations[location[1]] = lines
        elif number == 5:
            function = _scalars(value)
            profile.functions[function[1]] = (function.get(2, 0), function.get(4, 0), function.get(5, 0))
        elif number == 6:
            profile.strings.append(value.decode())
        elif number == 13:
            refs["comment"].extend(_ints(wire, value))
        else:
            refs.setdefault(number, []).append(value)
    strings = profile.strings
    assert strings and strings[0] == "", "string_table[0] must be empty"
    profile.sample_types = [(strings[item.get(1, 0)], strings[item.get(2, 0)]) for item in refs["sample_type"]]
    profile.comments = [strings[index] for index in refs["comment"]]
    profile.mapping_files = [strings[item.get(5, 0)] for item in refs["mapping"]]
    profile.functions = {key: (strings[name], strings[filename], start)
                         for key, (name, filename, start) in profile.functions.items()}
    period_type = _scalars(refs[11][0]) if 11 in refs else {}
    profile.period_type = (strings[period_type.get(1, 0)], strings[period_type.get(2, 0)])
    profile.period = _ints(0, refs[12][0])[0] if 12 in refs else 0
    profile.time_nanos = refs[9][0] if 9 in refs else 0
    profile.duration_nanos = refs[10][0] if 10 in refs else 0
    profile.default_sample_type = strings[refs[14][0]] if 14 in refs else ""
    for location_ids, values in profile.samples:
        assert len(values) == len(profile.sample_types)
        assert all(location_id in profile.locations for location_id in location_ids)
    for lines in profile.locations.values():
        assert all(function_id in profile.functions for function_id, _ in lines)
    return profile


# --- Helpers -------------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    content_type: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def get(port: int, path: str, timeout: float = 60) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Response(response.status, response.getheader("Content-Type", ""), response.headers, response.read())
    finally:
        connection.close()


@contextmanager
def running_target(directory: Path, *args: str):
    """profiling_target.py in a subprocess; yields its HTTP port."""
    directory.mkdir(parents=True, exist_ok=True)
    stderr_path = directory / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, str(TARGET), *args], stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, cwd=directory)
    try:
        line = process.stdout.readline()
        assert line.strip().isdigit(), f"target did not start: {line!r}\n{stderr_path.read_text()}"
        yield int(line)
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    with running_target(tmp_path_factory.mktemp("busy")) as target_port:
        yield target_port


@pytest.fixture
def idle_port(tmp_path):
    with running_target(tmp_path / "idle", "--idle") as target_port:
        yield target_port


def go_pprof(tmp_path: Path, *args: str) -> str:
    """Run `go tool pprof` with every file it writes kept under tmp_path; returns its standard output."""
    go = require("go")
    home = tmp_path / "go-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "GOCACHE": str(home / "cache"), "GOPATH": str(home / "gopath"),
           "PPROF_TMPDIR": str(home / "pprof"), "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    result = subprocess.run([go, "tool", "pprof", *args], env=env, cwd=home, capture_output=True, text=True,
                            timeout=80)
    assert result.returncode == 0, result.stderr
    return result.stdout


def top_functions(report: str) -> list[str]:
    """The function column of a `go tool pprof -top` or `-text` report, in order."""
    lines = report.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ["flat", "flat%"])
    return [line.split(None, 5)[5] for line in lines[header + 1:] if line.strip()]


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}/debug/pprof/{path}"


def wait_for_blocking(port: int) -> None:
    deadline = time.monotonic() + 10
    while "block_hub" not in get(port, "/debug/pprof/block?debug=1").text:
        assert time.monotonic() < deadline, "the hub-blocking greenlet was never reported"
        time.sleep(0.2)


# --- The protobuf writer on its own --------------------------------------------------------------------------


def sample_profile() -> Profile:
    profile = Profile([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000,
                      default_sample_type="cpu", binary="scd")
    leaf, root = Frame("app.leaf", "/src/app.py", 12, 10), Frame("app.main", "/src/app.py", 3, 1)
    profile.add([leaf, root], [1, 10_000_000])
    profile.add([leaf, root], [2, 2 ** 40])
    profile.add([root], [0, -5])
    profile.comments.append("made by a test")
    profile.time_nanos, profile.duration_nanos = 1_700_000_000_000_000_000, 2_000_000_000
    return profile


def test_profile_encoding_round_trips():
    decoded = decode(sample_profile().encode())
    assert decoded.sample_types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert {tuple(names): values for names, values in decoded.stacks()} == {
        ("app.leaf", "app.main"): [3, 2 ** 40 + 10_000_000],
        ("app.main",): [0, -5],
    }
    assert sorted(decoded.functions.values()) == [("app.leaf", "/src/app.py", 10), ("app.main", "/src/app.py", 1)]
    assert sorted(line for lines in decoded.locations.values() for _, line in lines) == [3, 12]
    assert decoded.period_type == ("cpu", "nanoseconds") and decoded.period == 10_000_000
    assert decoded.default_sample_type == "cpu"
    assert decoded.comments == ["made by a test"]
    assert decoded.mapping_files == ["scd"]
    assert (decoded.time_nanos, decoded.duration_nanos) == (1_700_000_000_000_000_000, 2_000_000_000)


def test_profile_text_lists_stacks_largest_first():
    text = sample_profile().text("cpu profile")
    assert text.startswith("cpu profile\n# made by a test\n# values: samples/count cpu/nanoseconds\n")
    assert text.index("app.leaf\t/src/app.py:12") < text.index(" -5 @")


def test_profile_rejects_values_that_do_not_match_the_sample_types():
    with pytest.raises(ValueError):
        Profile([("samples", "count")], ("samples", "count")).add([], [1, 2])


@pytest.mark.timeout(60)
def test_go_pprof_reads_the_encoding(tmp_path):
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(sample_profile().encode())
    raw = go_pprof(tmp_path, "-raw", str(path))
    assert "app.leaf /src/app.py:12 s=10" in raw
    assert "made by a test" in raw
    assert top_functions(go_pprof(tmp_path, "-top", str(path)))[0] == "app.leaf"


# --- The HTTP endpoints --------------------------------------------------------------------------------------


def test_index_links_every_profile(port):
    response = get(port, "/debug/pprof/")
    assert response.status == 200 and response.content_type.startswith("text/html")
    for name in ("allocs?debug=1", "block?debug=1", "cmdline", "goroutine?debug=1", "goroutine?debug=2",
                 "heap?debug=1", "profile"):
        assert f"href='{name}'" in response.text
    redirect = get(port, "/debug/pprof")
    assert redirect.status == 301 and redirect.headers["Location"] == "/debug/pprof/"


@pytest.mark.parametrize("path", ["/debug/pprof/nonsense", "/debug/pprof/heap/extra", "/", "/metrics"])
def test_unknown_paths_are_not_found(port, path):
    response = get(port, path)
    assert response.status == 404 and response.content_type.startswith("text/plain")


@pytest.mark.parametrize("query", ["profile?seconds=0", "profile?seconds=301", "profile?seconds=abc",
                                   "profile?seconds=", "heap?seconds=-1", "allocs?seconds=1.5",
                                   "block?seconds=x", "goroutine?debug=yes"])
def test_bad_parameters_are_rejected(port, query):
    response = get(port, f"/debug/pprof/{query}")
    assert response.status == 400, response.text


def test_cmdline_is_nul_separated(port):
    response = get(port, "/debug/pprof/cmdline")
    assert response.status == 200
    assert response.text.split("\0")[-1].endswith("profiling_target.py")


def test_cpu_profile_finds_the_busy_function(port):
    response = get(port, "/debug/pprof/profile?seconds=1")
    assert response.status == 200 and response.content_type == "application/octet-stream"
    profile = decode(response.body)
    assert profile.sample_types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.period_type == ("cpu", "nanoseconds") and profile.period == 10_000_000
    assert 1e9 <= profile.duration_nanos < 2e9
    assert profile.top("cpu").endswith(".burn_cpu")
    assert profile.mapping_files == ["profiling_target.py"]
    # The hub blocked in time.sleep is on the hub thread but uses no CPU.
    assert profile.flat("cpu").get("__main__.block_hub", 0) < profile.flat("cpu")["__main__.burn_cpu"] / 4


def test_cpu_profiles_do_not_overlap(port):
    first: list[Response] = []
    thread = threading.Thread(target=lambda: first.append(get(port, "/debug/pprof/profile?seconds=2")))
    thread.start()
    time.sleep(0.5)
    second = get(port, "/debug/pprof/profile?seconds=1")
    thread.join()
    assert second.status == 409
    assert first[0].status == 200


def test_cpu_profile_text(port):
    response = get(port, "/debug/pprof/profile?seconds=1&debug=1")
    assert response.status == 200 and response.content_type.startswith("text/plain")
    assert "__main__.burn_cpu" in response.text


def test_heap_and_allocs_show_the_allocating_function(port):
    heap = decode(get(port, "/debug/pprof/heap?seconds=1").body)
    assert heap.sample_types == [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"),
                                 ("inuse_space", "bytes")]
    assert heap.default_sample_type == "inuse_space"
    assert heap.top("inuse_space") == "__main__.allocate_blocks"
    assert any("tracemalloc" in comment for comment in heap.comments)
    allocs = decode(get(port, "/debug/pprof/allocs").body)
    assert allocs.default_sample_type == "alloc_space"
    assert allocs.top("alloc_space") == "__main__.allocate_blocks"
    text = get(port, "/debug/pprof/heap?debug=1").text
    assert text.startswith("heap profile\n# source: tracemalloc")
    assert "__main__.allocate_blocks" in text


def test_heap_before_tracing_counts_live_objects_by_type(idle_port):
    first = decode(get(idle_port, "/debug/pprof/heap").body)
    assert any("gc.get_objects" in comment for comment in first.comments)
    assert first.flat("inuse_objects")["builtins.dict"] > 0
    # The first request started tracemalloc, so the next one reports allocation stacks.
    assert "# source: tracemalloc" in get(idle_port, "/debug/pprof/heap?debug=1").text


def test_goroutine_profile_counts_parked_greenlets(port):
    profile = decode(get(port, "/debug/pprof/goroutine").body)
    assert profile.sample_types == [("goroutine", "count")]
    assert profile.top("goroutine") == "__main__.park_forever"
    assert profile.flat("goroutine")["__main__.park_forever"] == PARKED_GREENLETS
    text = get(port, "/debug/pprof/goroutine?debug=1").text
    assert f"\n{PARKED_GREENLETS} @\n#\t__main__.park_forever\t" in text


def test_goroutine_dump_lists_each_greenlet(port):
    dump = get(port, "/debug/pprof/goroutine?debug=2").text
    parked = [entry for entry in dump.split("\n\n") if entry.startswith("greenlet <Greenlet")
              and "\n__main__.park_forever()\n" in entry]
    assert len(parked) == PARKED_GREENLETS
    assert len({entry.splitlines()[0] for entry in parked}) == PARKED_GREENLETS
    assert "\n__main__.main()\n" in dump
    assert "[running]:\nsuperchat.observability.profiling." in dump


def test_block_profile_shows_the_blocking_function(port):
    wait_for_blocking(port)
    profile = decode(get(port, "/debug/pprof/block").body)
    assert profile.sample_types == [("contentions", "count"), ("delay", "nanoseconds")]
    assert profile.top("delay") == "__main__.block_hub"
    assert profile.flat("delay")["__main__.block_hub"] == profile.flat("contentions")["__main__.block_hub"] * 10 ** 8
    recent = decode(get(port, "/debug/pprof/block?seconds=2").body)
    assert recent.duration_nanos == 2_000_000_000
    assert recent.flat("contentions")["__main__.block_hub"] >= 1


def test_block_profile_is_empty_when_nothing_blocked(idle_port):
    profile = decode(get(idle_port, "/debug/pprof/block").body)
    assert profile.sample_types == [("contentions", "count"), ("delay", "nanoseconds")]
    assert profile.samples == []


# --- `go tool pprof` against the live server, as the operations guide runs it --------------------------------


def test_go_pprof_cpu(port, tmp_path):
    assert top_functions(go_pprof(tmp_path, "-top", url(port, "profile?seconds=2")))[0] == "__main__.burn_cpu"


def test_go_pprof_heap_and_allocs(port, tmp_path):
    get(port, "/debug/pprof/heap?seconds=1")
    assert top_functions(go_pprof(tmp_path, "-top", url(port, "heap")))[0] == "__main__.allocate_blocks"
    report = go_pprof(tmp_path, "-text", "-sample_index=alloc_space", url(port, "allocs"))
    assert top_functions(report)[0] == "__main__.allocate_blocks"


def test_go_pprof_goroutine(port, tmp_path):
    assert top_functions(go_pprof(tmp_path, "-top", url(port, "goroutine")))[0] == "__main__.park_forever"


def test_go_pprof_block(port, tmp_path):
    wait_for_blocking(port)
    assert top_functions(go_pprof(tmp_path, "-top", url(port, "block")))[0] == "__main__.block_hub"


def test_go_pprof_reads_an_empty_block_profile(idle_port, tmp_path):
    assert top_functions(go_pprof(tmp_path, "-top", url(idle_port, "block"))) == []


# --- The real scd serves them on its profiling port --------------------------------------------------------


def test_scd_serves_the_guides_pprof_commands(start_server, tmp_path):
    from tests.client import Client

    server = start_server()
    assert any(f"Profiling server listening on 127.0.0.1:{server.pprof_port}" in line for line in server.output)
    status, _, index = server.http_get("/debug/pprof/", port=server.pprof_port)
    assert status == 200 and b"goroutine" in index
    clients = [Client(server.port) for _ in range(3)]
    try:
        for number, client in enumerate(clients):
            client.handshake(f"profiled{number}")
        # Every connected client is a greenlet parked in the transport's read loop.
        goroutines = go_pprof(tmp_path, "-top", url(server.pprof_port, "goroutine"))
        assert "_serve" in goroutines, goroutines
        heap = go_pprof(tmp_path, "-top", url(server.pprof_port, "heap?seconds=1"))
        assert "flat%" in heap
        cpu = go_pprof(tmp_path, "-top", url(server.pprof_port, "profile?seconds=1"))
        assert "Type: cpu" in cpu
        assert "Type:" in go_pprof(tmp_path, "-top", url(server.pprof_port, "block"))
        assert "Type:" in go_pprof(tmp_path, "-top", url(server.pprof_port, "allocs"))
    finally:
        for client in clients:
            client.close()
