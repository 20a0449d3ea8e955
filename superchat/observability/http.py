"""The internal HTTP endpoints: Prometheus metrics at /metrics and the health JSON at /health."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import gevent
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

# A health probe must answer quickly even when the database is stuck behind a lock.
DATABASE_CHECK_SECONDS = 2.0


class Health:
    """The guide's health document: status, uptime, sessions, database, directory_enabled; on a
    node of several, also node, peers and redis (then status "degraded" while Redis is away: the
    node still serves its own sessions, so it answers 200 and stays in the load balancer)."""

    def __init__(
        self,
        count_sessions: Callable[[], int],
        database_problem: Callable[[float], str | None],
        directory_enabled: bool,
        cluster_status: Callable[[], dict | None] = lambda: None,
    ):
        self._count_sessions = count_sessions
        self._database_problem = database_problem
        self._directory_enabled = directory_enabled
        self._cluster_status = cluster_status
        self._started = time.monotonic()

    def report(self) -> tuple[int, dict]:
        problem = self._check_database()
        cluster = self._cluster_status()
        status = "ok" if problem is None else "error"
        if status == "ok" and cluster is not None and cluster["redis"] != "ok":
            status = "degraded"
        body = {
            "status": status,
            "uptime": int(time.monotonic() - self._started),
            "sessions": self._count_sessions(),
            "database": "ok" if problem is None else f"error: {problem}",
            "directory_enabled": self._directory_enabled,
            **(cluster or {}),
        }
        return (200 if problem is None else 503), body

    def _check_database(self) -> str | None:
        # The probe opens a fresh SQLite connection, which may wait on locks: keep it off the hub.
        pending = gevent.get_hub().threadpool.spawn(self._database_problem, DATABASE_CHECK_SECONDS)
        try:
            return pending.get(timeout=DATABASE_CHECK_SECONDS + 1)
        except gevent.Timeout:
            return "database check timed out"


def metrics_app(health: Health):
    """WSGI application for /metrics and /health."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _respond(start_response, 405, "text/plain; charset=utf-8", b"method not allowed\n",
                            [("Allow", "GET, HEAD")])
        if path == "/metrics":
            return _respond(start_response, 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        if path == "/health":
            status, body = health.report()
            return _respond(start_response, status, "application/json", json.dumps(body).encode() + b"\n")
        return _respond(start_response, 404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

    return app


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _respond(start_response, status: int, content_type: str, body: bytes, headers=()):
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]
