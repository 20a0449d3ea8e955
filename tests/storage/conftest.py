"""Fixtures of the storage tests: a Store on a fresh SQLite file, seeded."""

import pytest

from superchat.storage import Store

from .helpers import FORUM_SEEDS


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "superchat.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    s.seed_channels(FORUM_SEEDS, 168)
    yield s
    s.close()
