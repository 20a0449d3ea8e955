"""The interpreter's settings for serving many clients from one hub.

The switch interval. gevent's hub runs the callbacks queued in one loop iteration (each one
resumes a greenlet: the posters a group commit acknowledged, say) until the interpreter's switch
interval has passed, and only then polls the sockets again. At CPython's 5 ms a burst of woken
greenlets held every other client's next request that long; at 1 ms the hub polls at least five
times as often. The same interval bounds how long a thread waiting for the interpreter lock (the
writer thread back from its commit) waits for the hub to hand it over.

The garbage collector. CPython collects its youngest generation every 700 allocations of
container objects. Under load that is every few hundred microseconds, so every object that lives
a millisecond (a post waiting for its commit, its acknowledgement, its broadcast) reaches the
oldest generation, and every few seconds a full collection walks every object of the process
(each session's among them) while the hub waits: 30-60 ms each with 200 posters, with nothing
to collect. Collecting the youngest every 20,000 allocations lets those objects die young, by
their reference counts, as they do anyway; reference cycles are still collected.
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
