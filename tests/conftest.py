import pytest

from tests.client import Client
from tests.server_process import ServerProcess


@pytest.fixture
def start_server(tmp_path):
    """Start scd with extra config sections, e.g. ``start_server({"limits": {...}})``."""
    started: list[ServerProcess] = []

    def start(settings: dict | None = None, args: tuple[str, ...] = (), root=None) -> ServerProcess:
        server = ServerProcess(root or tmp_path / f"scd{len(started)}", settings, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def connect(server):
    clients: list[Client] = []

    def open_client(nickname: str | None = None, target=None) -> Client:
        client = Client((target or server).port)
        clients.append(client)
        client.handshake(nickname)
        return client

    yield open_client
    for client in clients:
        client.close()
