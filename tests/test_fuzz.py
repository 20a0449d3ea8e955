"""Seeded, bounded fuzzing of the real server: no frame a client can send costs anyone else.

Tens of thousands of frames, valid ones with edge values and mutated ones (random types, bit
flips, truncated and extended payloads, wrong string lengths, huge array counts, compression and
encryption flags, any version byte), go to the real ``bin/scd`` over several connections, while a
bystander keeps pinging and posting. Afterwards the server is up, the bystander was served all
along, no fuzzing connection got ERROR 9000 or was closed without a frame that asks for it, and
errors.log holds no traceback.

SUPERCHAT_FUZZ_SEED and SUPERCHAT_FUZZ_FRAMES choose another seed and size; a failure names the
seed and the frames of the batch that revealed it.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from superchat.protocol import ErrorCode, FrameDecoder, compress_payload, decode_payload, encode_message, messages
from superchat.protocol.fields import BOOL, I64, STRING, U8, U16, U32, U64, Array, Optional, Trailing
from tests.client import UNSOLICITED, Client

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("SUPERCHAT_FUZZ_SEED", "13"))
FRAMES = int(os.environ.get("SUPERCHAT_FUZZ_FRAMES", "24000"))
WORKERS = 4
PASSWORD = "5e884898da28047151d0e56f8dc6292773603d0d"
ADMIN = "fuzzadmin"
BATCH = 40
# Frames that may end their connection: DISCONNECT is the client saying goodbye.
ENDS_CONNECTION = {messages.Disconnect.TYPE}

# What the fuzzers' frames may tell every session.
NOTICES = (*UNSOLICITED, messages.ChannelCreated, messages.ChannelDeleted, messages.UserDeleted)
CLIENT_TYPES = sorted(code for code in messages.BY_CODE if code < 0x80)
# No address among them covers 127.0.0.1, and no nickname is the bystander's: an admin fuzzer's
# bans must not shut out the clients whose service is checked.
STRINGS = (
    "", "a", "general", "random", "chat", "fuzz", "Fuzz-1", "x" * 20, "x" * 21, "é", "\u202e", "日本語",
    "$admin", "~anon", "0" * 40, "f" * 50, "x" * 4097, "10.9.8.7", "192.0.2.0/24", "2001:db8::/32", "::",
    "999.1.1.1", "1.2.3.4/33", "nul\0inside",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fuzz@host",
    "ssh-rsa AAAA", "garbage key",
)
LARGE = (2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)


IDS = (0, 1, 2, 3, 4, 5, 7, 50, 1000, *LARGE)


def _ids(rng: random.Random) -> int:
    return rng.choice((*IDS, rng.getrandbits(64)))


def value_for(codec, rng: random.Random):
    if codec is U8:
        return rng.choice((0, 1, 2, 3, 255, rng.getrandbits(8)))
    if codec is U16:
        return rng.choice((0, 1, 50, 1000, 0xFFFF, rng.getrandbits(16)))
    if codec is U32:
        return rng.choice((0, 1, 24, 8760, 8761, 2**32 - 1, rng.getrandbits(32)))
    if codec is U64:
        return _ids(rng)
    if codec is I64:
        return rng.choice((0, -1, 1, -(2**63), 2**63 - 1, int(time.time() * 1000), rng.getrandbits(63)))
    if codec is BOOL:
        return rng.random() < 0.5
    if codec is STRING:
        return rng.choice(STRINGS)
    if isinstance(codec, (Optional, Trailing)):
        return None if rng.random() < 0.3 else value_for(codec.inner, rng)
    if isinstance(codec, Array):
        return [random_record(codec.record, rng) for _ in range(rng.choice((0, 1, 2, 5)))]
    raise TypeError(codec)


def random_record(cls, rng: random.Random):
    return cls(**{name: value_for(codec, rng) for name, codec in cls.LAYOUT.entries})


def valid_frame(rng: random.Random) -> bytes:
    cls = messages.BY_CODE[rng.choice(CLIENT_TYPES)]
    while True:
        try:
            return encode_message(random_record(cls, rng))
        except ValueError:  # a string past the u16 length; draw again
            continue


def header(length: int, version: int, msg_type: int, flags: int) -> bytes:
    return length.to_bytes(4, "big") + bytes((version, msg_type, flags))


def mutated_frame(rng: random.Random) -> bytes:
    """A frame whose length field is right, whatever its payload is."""
    frame = valid_frame(rng)
    version, msg_type, flags, payload = frame[4], frame[5], frame[6], bytearray(frame[7:])
    kind = rng.randrange(9)
    if kind == 0:  # any type, any payload
        msg_type = rng.randrange(256)
        payload = bytearray(rng.randbytes(rng.randrange(40)))
    elif kind == 1 and payload:  # a few bits flipped
        for _ in range(rng.randrange(1, 4)):
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
    elif kind == 2:  # cut short
        payload = payload[: rng.randrange(len(payload) + 1)]
    elif kind == 3:  # trailing bytes
        payload += rng.randbytes(rng.randrange(1, 30))
    elif kind == 4 and len(payload) >= 2:  # a length or count field claiming too much
        at = rng.randrange(len(payload) - 1)
        payload[at : at + 2] = rng.choice((b"\xff\xff", b"\x7f\xff", b"\x00\x00", b"\x10\x00"))
    elif kind == 5:  # compressed properly, or claiming to be
        if rng.random() < 0.5:
            payload = bytearray(compress_payload(bytes(payload)))
        else:
            payload = bytearray(rng.randbytes(rng.randrange(12)))
        flags = 0x01
    elif kind == 6:
        flags = rng.choice((0x02, 0x03, 0xFF, rng.randrange(256)))
    elif kind == 7:
        version = rng.randrange(256)
    else:  # bytes that are not UTF-8 where a string would be
        payload += b"\xff\xfe\xc3\x28"
    return header(len(payload) + 3, version, msg_type, flags) + bytes(payload)


def fuzz_batches(rng: random.Random, count: int) -> list[list[bytes]]:
    frames = [valid_frame(rng) if rng.random() < 0.4 else mutated_frame(rng) for _ in range(count)]
    return [frames[start : start + BATCH] for start in range(0, len(frames), BATCH)]


class FuzzConnection:
    """One fuzzing client: sends a batch, then a PING as a barrier, and reads every reply."""

    def __init__(self, port: int, number: int):
        self.port = port
        self.number = number
        self.errors: dict[int, int] = {}
        self.closes = 0
        self._open()

    def _open(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.decoder = FrameDecoder()
        nickname = f"fuzzer{self.number}"
        # Fuzzer 0 is the admin, odd-numbered ones are registered users: to reach what only those may do.
        if self.number == 0:
            greeting = messages.AuthRequest(nickname=ADMIN, password=PASSWORD),
        elif self.number % 2 == 0:
            greeting = messages.SetNickname(nickname=nickname),
        elif self.closes == 0:
            greeting = messages.SetNickname(nickname=nickname), messages.RegisterUser(password=PASSWORD)
        else:
            greeting = messages.AuthRequest(nickname=nickname, password=PASSWORD),
        self.sock.sendall(b"".join(encode_message(msg) for msg in greeting))

    def run_batch(self, batch: list[bytes], barrier: int) -> None:
        ends = any(frame[5] in ENDS_CONNECTION for frame in batch)
        self.sock.sendall(b"".join(batch) + encode_message(messages.Ping(timestamp=barrier)))
        while True:
            data = self._recv()
            if not data:
                # Besides DISCONNECT, an admin fuzzer's ban or deletion may expel this fuzzer: the
                # server then says so with a DISCONNECT of its own.
                assert ends, f"seed {SEED}: the server closed a connection after {[f.hex() for f in batch]}"
                self.closes += 1
                self.sock.close()
                self._open()
                return
            for frame in self.decoder.feed(data):
                if frame.type == messages.Disconnect.TYPE:
                    ends = True
                elif frame.type == messages.Error.TYPE:
                    code = decode_payload(frame.type, frame.payload).error_code
                    self.errors[code] = self.errors.get(code, 0) + 1
                    assert code != ErrorCode.INTERNAL_ERROR, f"seed {SEED}: ERROR 9000 in {[f.hex() for f in batch]}"
                elif frame.type == messages.Pong.TYPE and decode_payload(frame.type, frame.payload).client_timestamp \
                        == barrier:
                    return

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except ConnectionResetError:
            return b""


def test_fuzzed_frames_never_reach_a_traceback_nor_another_client(start_server):
    server = start_server({"server": {"admin_users": [ADMIN]},
                           "limits": {"message_rate_limit": 65535, "max_connections_per_ip": 255}})
    server.create_admin(ADMIN, PASSWORD)
    rng = random.Random(SEED)
    batches = fuzz_batches(rng, FRAMES)
    with Client(server.port, timeout=10) as setup:
        setup.handshake()
        setup.register("fuzzsetup", PASSWORD)
        general = setup.channel_id("general")
        # The bystander's own channel, with an id none of the fuzzers' frames names.
        setup.send(messages.CreateChannel(name="bystanders", display_name="Bystanders", channel_type=1,
                                          retention_hours=24))
        quiet = setup.expect(messages.ChannelCreated).channel_id
        assert quiet not in IDS, quiet
        # Some messages for the fuzzed ids to find: roots, replies, a deleted one.
        roots = [setup.post(general, f"root {n}") for n in range(5)]
        setup.post(general, "reply", parent_id=roots[0])
        setup.send(messages.DeleteMessage(message_id=roots[4]))
        setup.expect(messages.MessageDeleted)

    bystander = Client(server.port, timeout=10)
    bystander.handshake("bystander")
    served: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_bystander_busy() -> None:
        try:
            while not done.is_set():
                started = time.monotonic()
                bystander.send(messages.Ping(timestamp=len(served)))
                bystander.expect(messages.Pong, skip=NOTICES)
                bystander.send(messages.PostMessage(channel_id=quiet, content=f"still here {len(served)}"))
                assert bystander.expect(messages.MessagePosted, skip=NOTICES).success
                served.append(time.monotonic() - started)
                time.sleep(0.02)
        except Exception as exc:  # the assertion below names it
            failures.append(f"{type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=keep_bystander_busy, daemon=True)
    watcher.start()
    connections = [FuzzConnection(server.port, n) for n in range(WORKERS)]

    def fuzz(connection: FuzzConnection, share: list[list[bytes]]) -> None:
        try:
            for number, batch in enumerate(share):
                connection.run_batch(batch, barrier=-(number + 1))
        except Exception as exc:
            failures.append(f"fuzzer {connection.number}: {type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=fuzz, args=(c, batches[c.number :: WORKERS])) for c in connections]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
    done.set()
    watcher.join(15)

    assert not failures, failures
    assert server.proc.poll() is None, "the server died"
    assert len(served) > 10, f"the bystander was served {len(served)} times"
    errors = {}
    for connection in connections:
        for code, count in connection.errors.items():
            errors[code] = errors.get(code, 0) + count
    # The mutations did reach the handlers' refusals, not only the decoder's.
    assert {ErrorCode.INVALID_FORMAT, ErrorCode.UNSUPPORTED} <= errors.keys(), errors
    assert len(errors) >= 8, errors
    log = server.log_text("errors.log")
    assert "Traceback" not in log, log[-4000:]
    assert "handler failed" not in log, log[-4000:]
