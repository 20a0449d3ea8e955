"""The password hash SuperChat clients send in REGISTER_USER, AUTH_REQUEST and CHANGE_PASSWORD.

Clients never send the password itself: they send argon2id(password, salt = the nickname as
typed, 3 passes, 64 MiB, 4 lanes, 32 bytes), in unpadded URL-safe base64 (43 characters). The
server stores bcrypt of that. An account the operator makes on the host (``scd admin create``)
must hold the same value, or the client's ordinary login would not match it.

Argon2id (RFC 9106, version 0x13) is implemented here rather than taken from a library because
the libraries at hand (OpenSSL through ``cryptography``, libargon2) refuse salts shorter than 8
bytes, and nicknames are 3 to 20. The memory is filled with numpy, the four lanes of a slice side
by side; one hash takes a few seconds, which the operator's command can afford.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np

TIME_COST = 3
MEMORY_KIB = 64 * 1024
LANES = 4
HASH_BYTES = 32

_VERSION = 0x13
_ARGON2ID = 2
_SYNC_POINTS = 4
_WORDS = 128  # 64-bit words in a 1 KiB block
_LOW32 = np.uint64(0xFFFF_FFFF)
_ONE = np.uint64(1)
# A BLAKE2 round mixes the columns (0, 4, 8, 12), ... of a 16-word state, then its diagonals
# (0, 5, 10, 15), ...; this order lines the diagonals up as columns.
_DIAGONALS = np.array([0, 1, 2, 3, 5, 6, 7, 4, 10, 11, 8, 9, 15, 12, 13, 14])


def client_password_hash(password: str, nickname: str) -> str:
    """What a SuperChat client sends for ``password`` when signing in as ``nickname``."""
    digest = argon2id(password.encode(), nickname.encode(), TIME_COST, MEMORY_KIB, LANES, HASH_BYTES)
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def argon2id(password: bytes, salt: bytes, time_cost: int, memory_kib: int, lanes: int, length: int) -> bytes:
    """Argon2id without a secret key or associated data, as the clients use it."""
    segment = max(memory_kib, 2 * _SYNC_POINTS * lanes) // (_SYNC_POINTS * lanes)
    lane_length = segment * _SYNC_POINTS
    total_blocks = lane_length * lanes
    h0 = hashlib.blake2b(b"".join((
        struct.pack("<6I", lanes, length, memory_kib, time_cost, _VERSION, _ARGON2ID),
        struct.pack("<I", len(password)), password,
        struct.pack("<I", len(salt)), salt,
        struct.pack("<2I", 0, 0),  # no secret key, no associated data
    ))).digest()

    memory = np.empty((lanes, lane_length, _WORDS), dtype=np.uint64)
    for lane in range(lanes):
        for column in (0, 1):
            memory[lane, column] = _block(_long_hash(h0 + struct.pack("<2I", column, lane), 1024))
    for pass_number in range(time_cost):
        for slice_number in range(_SYNC_POINTS):
            first = 2 if pass_number == slice_number == 0 else 0
            if pass_number == 0 and slice_number < _SYNC_POINTS // 2:
                pseudo_random = _address_words(pass_number, slice_number, lanes, total_blocks, time_cost, segment)
            else:
                pseudo_random = None
            for index in range(first, segment):
                column = slice_number * segment + index
                previous = memory[:, column - 1]  # column 0 of a later pass follows the lane's last column
                words = previous[:, 0] if pseudo_random is None else pseudo_random[:, index]
                reference = [
                    _reference(int(word), lane, lanes, pass_number, slice_number, index, segment, lane_length)
                    for lane, word in enumerate(words)
                ]
                ref_lanes, ref_columns = zip(*reference, strict=True)
                block = _compress(previous, memory[list(ref_lanes), list(ref_columns)])
                if pass_number:
                    memory[:, column] ^= block
                else:
                    memory[:, column] = block
    final = np.bitwise_xor.reduce(memory[:, lane_length - 1], axis=0)
    return _long_hash(final.astype("<u8").tobytes(), length)


def _block(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def _long_hash(data: bytes, length: int) -> bytes:
    """H' of RFC 9106: BLAKE2b stretched to ``length`` bytes."""
    data = struct.pack("<I", length) + data
    if length <= 64:
        return hashlib.blake2b(data, digest_size=length).digest()
    piece = hashlib.blake2b(data).digest()
    pieces = [piece[:32]]
    remaining = length - 32
    while remaining > 64:
        piece = hashlib.blake2b(piece).digest()
        pieces.append(piece[:32])
        remaining -= 32
    pieces.append(hashlib.blake2b(piece, digest_size=remaining).digest())
    return b"".join(pieces)


def _address_words(pass_number: int, slice_number: int, lanes: int, total_blocks: int, time_cost: int,
                   segment: int) -> np.ndarray:
    """Argon2i's pseudo-random words of one segment for every lane: (lanes, segment). The address
    blocks depend on nothing computed, so all of them come out of one batch."""
    counters = -(-segment // _WORDS)
    inputs = np.zeros((lanes, counters, _WORDS), dtype=np.uint64)
    inputs[:, :, 0] = pass_number
    inputs[:, :, 1] = np.arange(lanes)[:, None]
    inputs[:, :, 2] = slice_number
    inputs[:, :, 3] = total_blocks
    inputs[:, :, 4] = time_cost
    inputs[:, :, 5] = _ARGON2ID
    inputs[:, :, 6] = np.arange(1, counters + 1)
    flat = inputs.reshape(-1, _WORDS)
    zero = np.zeros_like(flat)
    addresses = _compress(zero, _compress(zero, flat))
    return addresses.reshape(lanes, counters * _WORDS)[:, :segment]


def _reference(word: int, lane: int, lanes: int, pass_number: int, slice_number: int, index: int, segment: int,
               lane_length: int) -> tuple[int, int]:
    """The (lane, column) of the block mixed into the block at ``index`` of this segment."""
    ref_lane = lane if pass_number == slice_number == 0 else (word >> 32) % lanes
    same_lane = ref_lane == lane
    if pass_number == 0:
        # The finished slices, and in the own lane what this slice has so far, but the previous block.
        area = slice_number * segment + (index - 1 if same_lane else (-1 if index == 0 else 0))
        start = 0
    else:
        area = lane_length - segment + (index - 1 if same_lane else (-1 if index == 0 else 0))
        start = 0 if slice_number == _SYNC_POINTS - 1 else (slice_number + 1) * segment
    j1 = word & 0xFFFF_FFFF
    offset = area - 1 - ((area * ((j1 * j1) >> 32)) >> 32)
    return ref_lane, (start + offset) % lane_length


def _compress(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Argon2's G on rows of blocks: (n, 128) and (n, 128) words give (n, 128)."""
    r = x ^ y
    # Word-major, so that each of a, b, c and d below is one contiguous run: numpy's per-call
    # cost, not the arithmetic, is what a hash takes.
    state = np.ascontiguousarray(r.T)
    low, shifted = np.empty((2, 32, state.shape[1]), dtype=np.uint64)
    for order in _STEP_ORDERS:
        state = state[order]
        a, b, c, d = state.reshape(4, 32, -1)
        _quarter(a, b, d, 32, low, shifted)
        _quarter(c, d, b, 24, low, shifted)
        _quarter(a, b, d, 16, low, shifted)
        _quarter(c, d, b, 63, low, shifted)
    return state[_WORD_ORDER].T ^ r


def _quarter(a: np.ndarray, b: np.ndarray, d: np.ndarray, bits: int, low: np.ndarray, shifted: np.ndarray) -> None:
    """Half of BLAKE2's G, in place: a += b + 2 * lo(a) * lo(b), then d = (d ^ a) rotated right by ``bits``.
    uint64 arithmetic wraps as it must."""
    np.bitwise_and(a, _LOW32, out=low)
    np.bitwise_and(b, _LOW32, out=shifted)
    low *= shifted
    low <<= _ONE
    a += b
    a += low
    d ^= a
    np.right_shift(d, np.uint64(bits), out=shifted)
    d <<= np.uint64(64 - bits)
    d |= shifted


def _step_words() -> list[np.ndarray]:
    """The words of a block that G mixes as a, b, c and d in each of its four steps: the columns, then
    the diagonals, of the eight rows (words 16 * row + position), then of the eight columns (words
    16 * (position // 2) + 2 * column + position % 2). Each is (4, 32): role by (state, lane of G)."""
    columns = np.arange(16).reshape(4, 4)
    diagonals = _DIAGONALS.reshape(4, 4)
    states = np.arange(8)[:, None]
    steps = []
    for row_words in (lambda s, p: 16 * s + p, lambda s, p: 16 * (p // 2) + 2 * s + p % 2):
        for positions in (columns, diagonals):
            steps.append(np.stack([row_words(states, positions[role]).ravel() for role in range(4)]))
    return steps


def _step_orders() -> tuple[list[np.ndarray], np.ndarray]:
    """Gathers that take the state from word order to each step's order, one step to the next, and
    the order that puts the last step's state back into word order."""
    orders, where = [], np.arange(_WORDS)  # where[word]: the word's row in the current state
    for words in _step_words():
        flat = words.ravel()
        orders.append(where[flat])
        where = np.argsort(flat)
    return orders, where


_STEP_ORDERS, _WORD_ORDER = _step_orders()
