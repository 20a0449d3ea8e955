"""psycopg2 waiting for PostgreSQL through gevent, so a query blocks only its own greenlet.

psycopg2 hands every wait for its socket to a callback (its "green" support, which the
psycogreen package fills with a wait that never ends). Ours bounds each wait: libpq ignores
``connect_timeout`` in this mode, and a database host that drops packets would otherwise hold
a connection attempt, and every post waiting behind it, until TCP gives up minutes later.
"""

from __future__ import annotations

import psycopg2
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

# A server that does not answer a connection attempt in this time is taken as unreachable.
CONNECT_SECONDS = 5.0
# The longest one statement may wait for a reply (a lock held elsewhere, a slow disk).
REPLY_SECONDS = 30.0


def install() -> None:
    extensions.set_wait_callback(_wait)


def _wait(conn, timeout: float | None = None) -> None:
    connecting = conn.status == extensions.STATUS_SETUP
    bound = CONNECT_SECONDS if connecting else REPLY_SECONDS
    while True:
        state = conn.poll()
        try:
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(conn.fileno(), timeout=bound)
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno(), timeout=bound)
            else:
                raise psycopg2.OperationalError(f"unexpected state from the PostgreSQL driver: {state}")
        except TimeoutError:
            # psycopg2 then closes the connection, whose state is unknown, so the pool drops it.
            what = "connecting" if connecting else "waiting for a reply"
            raise psycopg2.OperationalError(f"PostgreSQL did not answer within {bound:g} s ({what})") from None
