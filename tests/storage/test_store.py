"""The store as a whole: database problems, errors after close, node serials."""

from pathlib import Path

import pytest

from superchat.storage import StorageError, Store

from .helpers import sql


def test_database_problems_are_reported_and_errors_raised_after_close(db_path):
    s = Store(db_path)
    assert s.database_problem(1.0) is None
    # The newest pages may live in the WAL; drop it so the damaged main file is what a reader sees.
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    with open(db_path, "r+b") as damaged:
        damaged.write(b"this is no longer a database header")
    assert "not a database" in s.database_problem(1.0)
    db_path.unlink()
    assert "unable to open" in s.database_problem(1.0)
    s.close()
    with pytest.raises(StorageError):
        s.list_channels()


def test_node_serials_grow_and_are_never_handed_out_again(db_path):
    store = Store(db_path)
    first, second = store.claim_node_serial("node-a"), store.claim_node_serial("node-a")
    store.close()
    assert 0 < first < second
    assert sql(db_path, "SELECT id, node_id FROM node_runs ORDER BY id") == [(first, "node-a"), (second, "node-a")]
    # Even when the newest runs are forgotten, their numbers stay used.
    sql(db_path, "DELETE FROM node_runs")
    reopened = Store(db_path)
    try:
        assert reopened.claim_node_serial("node-b") > second
    finally:
        reopened.close()
