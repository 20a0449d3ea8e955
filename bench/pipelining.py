#!/usr/bin/env python3
"""How long one pipelining client delays another client's PING, on any SuperChat server.

    python3 bench/pipelining.py --server 127.0.0.1:6465

A bystander sends a PING every 5 ms and times each PONG while an attacker, on a connection of
its own, does one of:

- ``subscribe``: 3,000 SUBSCRIBE_THREAD frames in one send (45 KB), then reads the replies;
- ``pings``: 300,000 PINGs written without reading a single PONG;
- ``userinfo``: three bursts of 4,000 GET_USER_INFO, reading the replies after each.

Prints, per attack, the bystander's PING round trips (median, p99, worst) and how long the
attack took. Every attack is bounded in frames and in time (``--seconds``). Give scd limits
that admit the attacker, e.g. SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT=65535.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superchat.protocol import FrameDecoder, decode_payload, encode_message, messages  # noqa: E402

PING_INTERVAL = 0.005


def connect(host: str, port: int, nickname: str) -> tuple[socket.socket, FrameDecoder]:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = FrameDecoder()
    sock.sendall(encode_message(messages.SetNickname(nickname=nickname)))
    wait_for(sock, decoder, messages.NicknameResponse.TYPE)
    return sock, decoder


def wait_for(sock: socket.socket, decoder: FrameDecoder, msg_type: int, count: int = 1, deadline: float = 0):
    """Read until ``count`` frames of ``msg_type`` arrived; returns the last one decoded."""
    deadline = deadline or time.monotonic() + 30
    seen, last = 0, None
    while seen < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        for frame in decoder.feed(data):
            if frame.type == msg_type:
                seen += 1
                last = frame
        if time.monotonic() > deadline:
            raise TimeoutError(f"{seen}/{count} replies of type 0x{msg_type:02X}")
    return decode_payload(last.type, last.payload)


class Bystander:
    """PINGs from a process of its own, so that the attacker's work never delays its reads."""

    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
        self._stop = multiprocessing.Event()
        self._ready = multiprocessing.Event()
        self._results = multiprocessing.Queue()
        self._process = multiprocessing.Process(target=self._run, daemon=True)

    def start(self) -> None:
        self._process.start()
        if not self._ready.wait(10):
            raise TimeoutError("the bystander could not connect")

    def round_trips(self) -> list[float]:
        """Stops the bystander; its PING round trips in seconds."""
        self._stop.set()
        result = self._results.get(timeout=35)
        self._process.join(5)
        return result

    def _run(self) -> None:
        sock, decoder = connect(self._host, self._port, "bystander")
        self._ready.set()
        round_trips = []
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                sock.sendall(encode_message(messages.Ping(timestamp=time.time_ns() // 1_000_000)))
                wait_for(sock, decoder, messages.Pong.TYPE)
                round_trips.append(time.perf_counter() - started)
                time.sleep(PING_INTERVAL)
        finally:
            self._results.put(round_trips)
            sock.close()


def attack_subscribe(sock, decoder, deadline: float) -> None:
    sock.sendall(encode_message(messages.SubscribeThread(thread_id=1)) * 3000)
    replies = 0
    while replies < 3000:  # SUBSCRIBE_OK or ERROR, one per frame
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        replies += sum(frame.type in (messages.SubscribeOk.TYPE, messages.Error.TYPE) for frame in decoder.feed(data))


def attack_pings(sock, decoder, deadline: float) -> None:
    """Writes 300,000 PINGs without reading; then reads the PONGs, so that the attack lasts as
    long as the server spends on it."""
    batch = encode_message(messages.Ping(timestamp=0)) * 1000
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        for _ in range(300):
            sock.sendall(batch)
    except TimeoutError:
        pass  # the server stopped reading from a client that does not read: it may
    pongs = 0
    while pongs < 300_000:
        sock.settimeout(1.0)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break  # all it answered has arrived
        if not data:
            break
        pongs += sum(frame.type == messages.Pong.TYPE for frame in decoder.feed(data))


def attack_userinfo(sock, decoder, deadline: float) -> None:
    frame = encode_message(messages.GetUserInfo(nickname="bystander"))
    for _ in range(3):
        sock.sendall(frame * 4000)
        wait_for(sock, decoder, messages.UserInfo.TYPE, 4000, deadline)


ATTACKS = {"subscribe": attack_subscribe, "pings": attack_pings, "userinfo": attack_userinfo}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(host: str, port: int, name: str, seconds: float) -> dict:
    attacker, decoder = connect(host, port, f"attacker{name[:4]}")
    bystander = Bystander(host, port)
    bystander.start()
    started = time.monotonic()
    outcome = "done"
    try:
        ATTACKS[name](attacker, decoder, started + seconds)
    except (TimeoutError, ConnectionError) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    attack_seconds = time.monotonic() - started
    during = [rtt * 1000 for rtt in bystander.round_trips()] or [float("nan")]
    attacker.close()
    return {
        "attack": name,
        "attack_seconds": round(attack_seconds, 3),
        "attack_outcome": outcome,
        "pings": len(during),
        "ping_median_ms": round(percentile(during, 0.5), 2),
        "ping_p99_ms": round(percentile(during, 0.99), 2),
        "ping_max_ms": round(max(during), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:6465", help="host:port of the server to measure")
    parser.add_argument("--attack", choices=sorted(ATTACKS), action="append", help="default: all three")
    parser.add_argument("--seconds", type=float, default=30.0, help="bound of each attack")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    results = [measure(host, int(port), name, args.seconds) for name in args.attack or sorted(ATTACKS)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'attack':<10} {'took s':>7} {'pings':>6} {'median ms':>10} {'p99 ms':>8} {'worst ms':>9}  outcome")
    for r in results:
        print(f"{r['attack']:<10} {r['attack_seconds']:>7} {r['pings']:>6} {r['ping_median_ms']:>10} "
              f"{r['ping_p99_ms']:>8} {r['ping_max_ms']:>9}  {r['attack_outcome']}")


if __name__ == "__main__":
    main()
