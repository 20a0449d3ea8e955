"""The interpreter's settings for serving many clients from one hub.

The switch interval. gevent's hub runs the callbacks queued in one loop iteration (each one
resumes a greenlet: the posters a group commit acknowledged, say) until the interpreter's switch
interval has passed, looking at the clock every 50 callbacks, and only then polls the sockets
again. At CPython's 5 ms a burst of woken greenlets held every other client's next request that
long; at 1 ms the hub polls after about a millisecond of them. The same interval bounds how long
a thread waiting for the interpreter lock (the writer thread back from its commit) waits for the
hub to hand it over.

The garbage collector. CPython collects its youngest generation every 700 allocations of
container objects, and each collection moves what is alive at that moment a generation older.
Under load the posts in flight (waiting for their commit, their acknowledgement, their broadcast)
are alive at every such moment, so they reach the oldest generation by the thousand, and every
few seconds a full collection walks every object of the process (each session's among them)
while the hub waits: with 200 posters, 5 to 13 of them in 25 s, 30-60 ms each, with nothing to
collect (those objects are freed by their reference counts). Collected every 20,000 allocations,
far fewer are caught alive; under the same load no full collection ran at all, nor any other
of 2 ms or more. Reference cycles are still collected.
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL_SECONDS = 0.001
YOUNG_COLLECTION_EVERY = 20_000


def settle() -> None:
    """Apply the settings; the server calls this once, before it starts."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, oldest)


def describe() -> str:
    """The settings in force, as the start-up log tells them."""
    young, middle, oldest = gc.get_threshold()
    return (f"the hub polls its sockets at least every {sys.getswitchinterval() * 1000:g} ms; "
            f"garbage collection thresholds {young}, {middle}, {oldest}")
