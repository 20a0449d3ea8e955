"""The writer under steady posting: other writes still get their turn (a subprocess, since the
writer needs gevent's monkey-patching)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import random, sys, time, gevent
    sys.path.insert(0, sys.argv[1])
    from superchat.storage import NewPost, Store
    from superchat.server.writer import Writer

    store = Store(sys.argv[2])
    store.seed_channels([("general", "General")], 24)
    channel = store.list_channels()[0].id
    commit = store.commit_posts

    def slow_commit():  # a disk that takes 10 ms per fsync keeps posts queueing during every commit
        time.sleep(0.01)
        commit()

    store.commit_posts = slow_commit
    writer = Writer(store)
    stop = False

    def poster(number):
        # Each posts again after a random pause, so that posts keep arriving during every commit.
        while not stop:
            gevent.sleep(random.uniform(0, 0.05))
            writer.post(NewPost(channel, None, None, None, f"p{number}", "x"))

    posters = [gevent.spawn(poster, n) for n in range(50)]
    gevent.sleep(0.5)
    waited = []
    for attempt in range(3):
        started = time.monotonic()
        job = gevent.spawn(writer.run, store.create_user, f"user{attempt}", "", 0)
        job.join(timeout=5)
        waited.append(round(time.monotonic() - started, 3) if job.successful() else None)
    stop = True
    gevent.joinall(posters, timeout=5)
    print(waited)
""")


def test_other_writes_get_a_turn_under_steady_posting(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), str(tmp_path / "db.sqlite")],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    waited = eval(done.stdout.strip())  # noqa: S307 - our own script's list of floats
    # Starved, a write never finishes; with its turn it takes a commit or two (10 ms each).
    assert None not in waited, waited


ISOLATION_SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, gevent
    sys.path.insert(0, sys.argv[1])
    from superchat.storage import NewPost, Store
    from superchat.server.writer import Writer

    store = Store(sys.argv[2])
    store.seed_channels([("general", "General")], 24)
    channel = store.list_channels()[0].id
    writer = Writer(store)
    # A lone surrogate cannot be encoded for SQLite: this post fails inside the batch's transaction.
    contents = [f"post {n}" for n in range(20)]
    contents[7] = "\\ud800"
    jobs = [gevent.spawn(writer.post, NewPost(channel, None, None, None, "poster", text)) for text in contents]
    gevent.joinall(jobs, timeout=10)
    stored = {row.content for row in store.list_root_messages(channel, None, 100, None, None)}
    print(repr([(job.successful(), job.value.content if job.successful() else type(job.exception).__name__)
                for job in jobs]))
    print(repr(sorted(stored)))
""")


def test_a_post_that_fails_in_a_batch_fails_alone(tmp_path):
    done = subprocess.run([sys.executable, "-c", ISOLATION_SCRIPT, str(REPO), str(tmp_path / "db.sqlite")],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    outcomes_line, stored_line = done.stdout.strip().splitlines()
    outcomes = eval(outcomes_line)  # noqa: S307 - our own script's list
    assert outcomes[7] == (False, "UnicodeEncodeError")
    assert [outcome for n, outcome in enumerate(outcomes) if n != 7] == [
        (True, f"post {n}") for n in range(20) if n != 7
    ]
    assert eval(stored_line) == sorted(f"post {n}" for n in range(20) if n != 7)  # noqa: S307
