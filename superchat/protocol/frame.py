"""Frame layer: ``[length u32][version u8][type u8][flags u8][payload]``.

``length`` counts version, type, flags and payload. This module is sans-I/O:
``FrameDecoder`` is fed whatever bytes arrived and yields whole frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lz4.block

from .errors import ErrorCode

PROTOCOL_VERSION = 1
MAX_FRAME_LENGTH = 1024 * 1024  # a length field of exactly 1 MiB is still accepted
FLAG_COMPRESSED = 0x01
FLAG_ENCRYPTED = 0x02

_HEADER = struct.Struct(">IBBB")
HEADER_SIZE = _HEADER.size  # 7 bytes: the length field plus version, type, flags


class FrameError(ValueError):
    """The byte stream cannot be framed; the connection must be closed."""


class PayloadError(ValueError):
    """One frame's payload cannot be unwrapped (bad compression, encryption); the stream is intact."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    version: int
    type: int
    flags: int
    payload: bytes

    def unwrapped_payload(self) -> bytes:
        """The payload with LZ4 compression removed (``[uncompressed size u32][LZ4 block]``)."""
        if self.flags & FLAG_ENCRYPTED:
            raise PayloadError(ErrorCode.ENCRYPTION_ERROR, "Encrypted payloads are not supported")
        if not self.flags & FLAG_COMPRESSED:
            return self.payload
        if len(self.payload) < 4:
            raise PayloadError(ErrorCode.COMPRESSION_ERROR, "Compressed payload is missing its size")
        size = int.from_bytes(self.payload[:4], "big")
        if size > MAX_FRAME_LENGTH:
            raise PayloadError(ErrorCode.COMPRESSION_ERROR, "Compressed payload expands beyond the frame limit")
        try:
            data = lz4.block.decompress(self.payload[4:], uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise PayloadError(ErrorCode.COMPRESSION_ERROR, "Invalid LZ4 payload") from exc
        if len(data) != size:
            raise PayloadError(ErrorCode.COMPRESSION_ERROR, "LZ4 payload size does not match its header")
        return data


def encode_frame(msg_type: int, payload: bytes) -> bytes:
    """Encode one uncompressed frame; servers always send version 1, flags 0."""
    length = 3 + len(payload)
    if length > MAX_FRAME_LENGTH:
        raise FrameError(f"frame of {length} bytes exceeds the 1 MiB limit")
    return _HEADER.pack(length, PROTOCOL_VERSION, msg_type, 0) + payload


def compress_payload(payload: bytes) -> bytes:
    """The compressed form a peer may send with FLAG_COMPRESSED (used by tests and tools)."""
    return len(payload).to_bytes(4, "big") + lz4.block.compress(payload, store_size=False)


class FrameDecoder:
    """Accumulates received bytes and hands out complete frames.

    ``receive()`` takes bytes as they arrive and ``next_frame()`` hands out one whole frame at a
    time, so that a caller can do other work between frames of a long burst; ``feed()`` does both
    at once. Raises ``FrameError`` when a length field is out of bounds; after that the stream has
    lost its framing and nothing more can be read from it.
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0  # where the next frame starts; what lies before it is spent

    def receive(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes are received."""
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < HEADER_SIZE:
            if len(buf) - pos >= 4:
                self._check_length(int.from_bytes(buf[pos : pos + 4], "big"))
            return None
        length, version, msg_type, flags = _HEADER.unpack_from(buf, pos)
        self._check_length(length)
        end = pos + 4 + length
        if end > len(buf):
            return None
        self._pos = end
        return Frame(version, msg_type, flags, bytes(buf[pos + HEADER_SIZE : end]))

    def feed(self, data: bytes) -> list[Frame]:
        self.receive(data)
        return list(iter(self.next_frame, None))

    @staticmethod
    def _check_length(length: int) -> None:
        if length > MAX_FRAME_LENGTH:
            raise FrameError(f"frame length {length} exceeds the 1 MiB limit")
        if length < 3:
            raise FrameError(f"frame length {length} is shorter than its header")

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        return len(self._buffer) - self._pos
