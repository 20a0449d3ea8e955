"""Fixtures of the moderation tests: clients closed after each test, a server with an admin."""

from __future__ import annotations

import pytest

from tests.client import Client

from .helpers import (
    ADMIN_SETTINGS,
)


@pytest.fixture
def open_client():
    """``open_client(server, nickname=None, source=None, host="127.0.0.1")``: a handshaken client, closed at the end."""
    clients: list[Client] = []

    def open_(server, nickname: str | None = None, source: str | None = None, host: str = "127.0.0.1") -> Client:
        client = Client(server.port, host=host, source=source)
        clients.append(client)
        client.handshake(nickname)
        return client

    yield open_
    for client in clients:
        client.close()


@pytest.fixture
def srv(start_server):
    return start_server(ADMIN_SETTINGS)
