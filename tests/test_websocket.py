"""The protocol over WebSocket at /ws on http_port: the same sessions as TCP, one frame per message."""

from __future__ import annotations

import http.server
import json
import queue
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from wsproto.events import CloseConnection, Message

from superchat.protocol import ErrorCode, FrameDecoder, encode_message
from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed
from tests.server_process import free_port
from tests.tools import require
from tests.websocket_client import HandshakeRefused, WebSocketStream

pytestmark = pytest.mark.timeout(90)

PAGE = Path(__file__).parent / "web" / "websocket_client.html"


@pytest.fixture
def web_server(start_server):
    """A server with its WebSocket port open (directory mode off unless asked)."""

    def start(settings: dict | None = None, args: tuple[str, ...] = ("--disable-directory",)):
        document = {"server": {"http_port": free_port()}}
        for section, values in (settings or {}).items():
            document.setdefault(section, {}).update(values)
        return start_server(document, args)

    return start


def web_client(server, nickname: str | None = None) -> tuple[Client, WebSocketStream]:
    stream = WebSocketStream(server.http_port)
    client = Client(0, sock=stream)
    client.handshake(nickname)
    return client, stream



def test_a_websocket_session_posts_and_receives_live_like_tcp(web_server):
    server = web_server()
    web, stream = web_client(server, "webby")
    tcp = Client(server.port)
    tcp.handshake("tcpuser")
    general = tcp.channel_id("general")
    for client in (web, tcp):
        client.subscribe_channel(general)

    web.send(m.PostMessage(channel_id=general, content="from the web"))
    posted = web.expect(m.MessagePosted)
    assert posted.success
    seen = tcp.expect(m.NewMessage)
    assert (seen.id, seen.author_nickname, seen.content) == (posted.message_id, "~webby", "from the web")
    assert web.expect(m.NewMessage).id == posted.message_id

    tcp.send(m.PostMessage(channel_id=general, content="from tcp"))
    tcp.expect(m.MessagePosted)
    assert web.expect(m.NewMessage).content == "from tcp"

    # Every binary message the server sent holds exactly one whole frame.
    assert len(stream.messages) >= 6
    for message in stream.messages:
        frames = FrameDecoder().feed(message)
        assert len(frames) == 1 and len(message) == 4 + (3 + len(frames[0].payload))


def test_frames_split_across_messages_or_sharing_one_decode(web_server):
    server = web_server()
    client, stream = web_client(server, "splitter")
    pings = b"".join(encode_message(m.Ping(timestamp=i)) for i in range(3))
    stream.sendall(pings[:5])
    stream.sendall(pings[5:])
    assert [client.expect(m.Pong).client_timestamp for _ in range(3)] == [0, 1, 2]


def test_websocket_ping_gets_a_pong_in_order_with_frames(web_server):
    client, stream = web_client(web_server(), "pinger")
    stream.ping(b"are you there")
    client.send(m.Ping(timestamp=9))
    assert client.expect(m.Pong).client_timestamp == 9
    assert stream.pongs == [b"are you there"]


def test_websocket_pings_do_not_keep_an_unfinished_frame_waiting(web_server):
    server = web_server({"limits": {"session_timeout_seconds": 2}})
    client, stream = web_client(server, "trickler")
    stream.sendall(encode_message(m.Ping(timestamp=1))[:6])  # half a frame, then only WebSocket pings
    started = time.monotonic()
    done = threading.Event()

    def keep_pinging() -> None:
        while not done.wait(0.2):
            try:
                stream.ping(b"still here")
            except OSError:
                return

    threading.Thread(target=keep_pinging, daemon=True).start()
    try:
        assert "not complete" in client.expect_error(ErrorCode.INVALID_FRAME, timeout=10).message
        client.wait_closed(5)
    finally:
        done.set()
    assert time.monotonic() - started < 8


def test_a_text_message_ends_the_session_with_close_code_1003(web_server):
    server = web_server()
    client, stream = web_client(server, "texter")
    stream.send_text("hello")
    with pytest.raises(ConnectionClosed):
        client.recv(timeout=5)
    assert stream.close_code == 1003
    survivor = Client(server.port)
    survivor.handshake("survivor")


def test_http_requests_that_are_not_websocket(web_server):
    server = web_server()
    base = f"http://127.0.0.1:{server.http_port}"
    for path, status in (("/ws", 426), ("/", 404), ("/servers.json", 404), ("/metrics", 404)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=5)
        assert refused.value.code == status, path
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketStream(server.http_port, path="/elsewhere")
    assert refused.value.status == 404
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    Client(server.port).handshake("still-serving")


def test_connection_cap_and_address_bans_hold_for_websocket(web_server):
    server = web_server({"limits": {"max_connections_per_ip": 1}})
    first, _ = web_client(server, "first")
    refused = Client(0, sock=WebSocketStream(server.http_port))
    assert isinstance(refused.recv(), m.ServerConfig)
    assert refused.expect(m.Error).error_code == ErrorCode.TOO_MANY_CONNECTIONS
    first.send(m.Ping(timestamp=1))
    assert first.expect(m.Pong).client_timestamp == 1


def test_sessions_are_counted_and_logged_by_transport(web_server):
    server = web_server()
    web, _ = web_client(server, "counted")
    tcp = Client(server.port)
    tcp.handshake("tcpcounted")
    _, _, body = server.http_get("/metrics")
    text = body.decode()
    assert 'superchat_transport_sessions{transport="websocket"} 1.0' in text
    assert 'superchat_transport_sessions{transport="tcp"} 1.0' in text
    assert 'superchat_transport_sessions{transport="ssh"} 0.0' in text
    assert 'superchat_transport_connections_total{transport="websocket"} 1.0' in text
    assert "superchat_active_sessions 2.0" in text
    # Each connection's line reaches the log file in its own time.
    server.wait_for_log("transport=websocket")
    server.wait_for_log("transport=tcp")
    web.close()
    server.wait_for_log("Session 1 (counted) closed")
    _, _, body = server.http_get("/metrics")
    assert 'superchat_transport_sessions{transport="websocket"} 0.0' in body.decode()


class _PageHost(http.server.BaseHTTPRequestHandler):
    """Serves the test page and collects what it reports."""

    results: queue.Queue

    def do_GET(self):
        body = PAGE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.results.put(json.loads(data))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _next_result(results: queue.Queue, stage: str, timeout: float = 30.0) -> dict:
    while True:
        try:
            result = results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the page reported no {stage!r} in {timeout} s") from None
        assert result["stage"] != "error", result
        if result["stage"] == stage:
            return result


def test_a_real_browser_chats_over_websocket(web_server, tmp_path):
    require("chromium")
    server = web_server()
    tcp = Client(server.port)
    tcp.handshake("tcpuser")
    general = tcp.channel_id("general")
    tcp.subscribe_channel(general)

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Host", (_PageHost,), {"results": queue.Queue()}))
    threading.Thread(target=host.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{host.server_port}/page.html?ws={server.http_port}&channel={general}"
    browser = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        results = host.RequestHandlerClass.results
        posted = _next_result(results, "posted", timeout=60)
        assert posted["success"]
        # The browser's post reached the TCP subscriber live...
        seen = tcp.expect(m.NewMessage, timeout=10)
        assert (str(seen.id), seen.author_nickname, seen.content) == (posted["id"], "~browser", "hello from a browser")
        # ...and the TCP client's post reaches the browser live.
        tcp.send(m.PostMessage(channel_id=general, content="hello, browser"))
        mine = tcp.expect(m.MessagePosted)
        while True:
            delivered = _next_result(results, "new_message")
            if delivered["author"] == "~tcpuser":
                break
        assert (delivered["id"], delivered["content"]) == (str(mine.message_id), "hello, browser")
    finally:
        browser.kill()
        browser.wait(timeout=10)
        host.shutdown()
    server.wait_for_log("set nickname: browser")


def test_a_client_closing_mid_request_disturbs_no_one(web_server):
    server = web_server()
    web, stream = web_client(server, "webby")
    general = web.channel_id("general")
    web.subscribe_channel(general)  # the closing session is in the audience of what follows
    poster = Client(server.port)
    poster.handshake("poster")
    poster.subscribe_channel(general)
    watcher = Client(server.port)
    watcher.handshake("watcher")
    watcher.subscribe_channel(general)
    # A request whose handler yields (bcrypt on a thread), then Close, in one TCP write.
    stream.sock.sendall(stream.ws.send(Message(data=encode_message(m.RegisterUser(password="h" * 44))))
                        + stream.ws.send(CloseConnection(code=1000)))
    poster.post(general, "hello")
    assert watcher.expect(m.NewMessage).content == "hello"
    server.wait_for_log("Session 1 (webby) closed")
    assert "handler failed" not in server.log_text()
