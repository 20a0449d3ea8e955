import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.client import Client
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess, shared_postgres

# Left out when every scd runs on PostgreSQL (SUPERCHAT_TEST_DATABASE=postgresql): they are about
# SQLite itself, or break the database through its SQLite file.
SQLITE_ONLY = {
    "tests/storage": "drives the Store directly on SQLite files",
    "tests/test_writer.py": "measures SQLite's writer thread",
    "tests/test_backup.py": "backs up SQLite files",
    "tests/test_debug_log.py::test_debug_log_tells_every_frame_broadcast_commit_and_session":
        "holds the SQLite file's write lock",
    **{
        f"tests/test_logs.py::{name}": "breaks the SQLite file for an error to log"
        for name in (
            "test_guide_recipes_return_the_right_lines",
            "test_a_failed_post_does_not_count_as_a_sender",
            "test_errors_log_appends_with_a_marker_per_start_and_server_log_starts_empty",
            "test_json_lines_carry_the_fields_elk_ingests",
            "test_journal_lines_carry_their_syslog_priority",
        )
    },
    "tests/test_metrics.py::test_health_says_so_when_the_database_is_unusable": "deletes the SQLite file",
    "tests/test_metrics.py::test_database_size_is_the_sqlite_file_with_its_wal": "measures the SQLite file",
    "tests/test_metrics.py::test_the_guides_healthcheck_script_passes_then_fails_on_a_broken_database":
        "deletes the SQLite file",
    "tests/test_server_lifecycle.py::test_retention_removes_expired_threads_at_start": "edits the SQLite file",
    **{
        f"tests/test_disk_full.py::{name}": "fills the disk under the SQLite database"
        for name in (
            "test_the_store_names_a_full_disk_and_writes_again_once_space_returns",
            "test_a_checkpoint_the_full_disk_stops_costs_no_commit",
            "test_a_full_disk_refuses_each_post_keeps_every_session_and_loses_nothing",
        )
    },
}


def pytest_collection_modifyitems(config, items):
    if shared_postgres is None:
        return
    for item in items:
        for prefix, reason in SQLITE_ONLY.items():
            if item.nodeid == prefix or item.nodeid.startswith((prefix + "::", prefix + "[", prefix + "/")):
                item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def postgres_for_every_server():
    yield
    if shared_postgres is not None:
        shared_postgres.stop()


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for the module's tests."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def fresh_postgres_databases():
    """A module's databases go once its servers, module-scoped ones too, are gone."""
    yield
    if shared_postgres is not None:
        shared_postgres.drop_databases()


@pytest.fixture
def start_server(tmp_path):
    """Start scd with extra config sections, e.g. ``start_server({"limits": {...}})``."""
    started: list[ServerProcess] = []

    def start(settings: dict | None = None, args: tuple[str, ...] = (), root=None) -> ServerProcess:
        server = ServerProcess(root or tmp_path / f"scd{len(started)}", settings, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def connect(server):
    clients: list[Client] = []

    def open_client(nickname: str | None = None, target=None) -> Client:
        client = Client((target or server).port)
        clients.append(client)
        client.handshake(nickname)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def mount_tmpfs(tmp_path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the given size (``"8m"``) under tmp_path and returns its mount point;
    mounting needs root, so a test that asks for one skips itself otherwise."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # Lazily: a file a failed test left open must not leave the mount behind.
        subprocess.run(["umount", "--lazy", str(point)], check=True)
