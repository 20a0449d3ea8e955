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
