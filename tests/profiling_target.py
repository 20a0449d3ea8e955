"""A gevent process with recognisable work, serving profiling_app on 127.0.0.1; prints its port.

burn_cpu holds the CPU, allocate_blocks keeps allocating and holding memory, block_hub blocks the hub with the
unpatched time.sleep and park_forever parks greenlets, so each profile has a known top function. With --idle
it only serves.
"""

from gevent import monkey

monkey.patch_all()

import collections  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from superchat.observability.profiling import enable_block_profiling, profiling_app  # noqa: E402

PARKED_GREENLETS = 8
BLOCK_SECONDS = 0.25
BLOCK_THRESHOLD_SECONDS = 0.1

_blocking_sleep = monkey.get_original("time", "sleep")
_held = collections.deque(maxlen=400)


def burn_cpu():
    # Small ints only: they are never allocated, so tracemalloc, once on, does not slow this loop down.
    checksum = 0
    while True:
        for _ in range(100):
            for number in range(200):
                checksum ^= number
        gevent.sleep(0)


def allocate_blocks():
    while True:
        _held.append(bytearray(64 * 1024))
        gevent.sleep(0.01)


def block_hub():
    while True:
        _blocking_sleep(BLOCK_SECONDS)
        gevent.sleep(1.0)


def park_forever(never: Event):
    never.wait()


def main():
    enable_block_profiling(BLOCK_THRESHOLD_SECONDS)
    if "--idle" not in sys.argv[1:]:
        never = Event()
        for _ in range(PARKED_GREENLETS):
            gevent.spawn(park_forever, never)
        for _ in range(2):
            gevent.spawn(burn_cpu)
        gevent.spawn(allocate_blocks)
        gevent.spawn(block_hub)
    server = WSGIServer(("127.0.0.1", 0), profiling_app, log=None)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
