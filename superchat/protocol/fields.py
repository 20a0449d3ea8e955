"""Wire encodings of the protocol's field types.

Every integer is big-endian; strings are a u16 byte length followed by UTF-8;
an optional value is a presence byte (0 or 1) followed by the value when present;
timestamps are signed milliseconds since the Unix epoch.

Each codec offers ``put(out, value)`` appending to a bytearray and
``take(buf, pos) -> (value, pos)`` reading from a bytes-like object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, make_dataclass
from typing import Any


class DecodeError(ValueError):
    """The payload does not match the declared layout."""


class InvalidUTF8(DecodeError):
    """A string field holds bytes that are not UTF-8."""


class _Scalar:
    def __init__(self, fmt: str, name: str):
        self._struct = struct.Struct(fmt)
        self.size = self._struct.size
        self.name = name

    def put(self, out: bytearray, value: Any) -> None:
        try:
            out += self._struct.pack(value)
        except struct.error as exc:
            raise ValueError(f"{self.name} cannot hold {value!r}") from exc

    def take(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = pos + self.size
        if end > len(buf):
            raise DecodeError(f"truncated {self.name}")
        return self._struct.unpack_from(buf, pos)[0], end


U8 = _Scalar(">B", "u8")
U16 = _Scalar(">H", "u16")
U32 = _Scalar(">I", "u32")
U64 = _Scalar(">Q", "u64")
I64 = _Scalar(">q", "i64")
# Timestamps are plain i64 milliseconds on the wire; the alias keeps declarations readable.
TIMESTAMP = I64


class _Bool:
    name = "bool"

    def put(self, out: bytearray, value: bool) -> None:
        out.append(1 if value else 0)

    def take(self, buf: bytes, pos: int) -> tuple[bool, int]:
        if pos >= len(buf):
            raise DecodeError("truncated bool")
        # Any non-zero byte is true, as upstream's decoder reads it.
        return buf[pos] != 0, pos + 1


BOOL = _Bool()


class _String:
    name = "string"
    MAX_BYTES = 0xFFFF

    def put(self, out: bytearray, value: str) -> None:
        data = value.encode("utf-8")
        if len(data) > self.MAX_BYTES:
            raise ValueError("string longer than 65535 bytes")
        out += len(data).to_bytes(2, "big")
        out += data

    def take(self, buf: bytes, pos: int) -> tuple[str, int]:
        length, pos = U16.take(buf, pos)
        end = pos + length
        if end > len(buf):
            raise DecodeError("truncated string")
        try:
            return bytes(buf[pos:end]).decode("utf-8"), end
        except UnicodeDecodeError as exc:
            raise InvalidUTF8("string is not valid UTF-8") from exc


STRING = _String()


class Optional:
    """A presence byte, then the inner value when present (``None`` when absent)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = f"optional {inner.name}"

    def put(self, out: bytearray, value: Any) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.put(out, value)

    def take(self, buf: bytes, pos: int) -> tuple[Any, int]:
        present, pos = BOOL.take(buf, pos)
        if not present:
            return None, pos
        return self.inner.take(buf, pos)


class When:
    """A value written only when an earlier boolean field is true (e.g. ids after ``success``).

    Absent values decode to the declared default.
    """

    def __init__(self, flag: str, inner, default: Any = 0):
        self.flag = flag
        self.inner = inner
        self.default = default
        self.name = inner.name


class Trailing:
    """A final value that older peers omit: written when not ``None``, read when bytes remain."""

    def __init__(self, inner):
        self.inner = inner
        self.name = f"trailing {inner.name}"


class Array:
    """A count (u16 or u32) followed by that many records."""

    def __init__(self, count, record: type):
        self.count = count
        self.record = record
        self.name = f"array of {record.__name__}"

    def put(self, out: bytearray, items) -> None:
        self.count.put(out, len(items))
        for item in items:
            item.put(out)

    def take(self, buf: bytes, pos: int) -> tuple[list, int]:
        count, pos = self.count.take(buf, pos)
        items = []
        for _ in range(count):
            item, pos = self.record.take(buf, pos)
            items.append(item)
        return items, pos


def _default_for(codec) -> Any:
    if isinstance(codec, (Optional, Trailing)):
        return None
    if isinstance(codec, When):
        return codec.default
    if isinstance(codec, Array):
        return ()
    if codec is STRING:
        return ""
    if codec is BOOL:
        return False
    return 0


@dataclass(frozen=True)
class Layout:
    """The ordered (name, codec) pairs of one record; drives both directions."""

    entries: tuple

    def put(self, out: bytearray, obj) -> None:
        for name, codec in self.entries:
            value = getattr(obj, name)
            if isinstance(codec, When):
                if getattr(obj, codec.flag):
                    codec.inner.put(out, value)
            elif isinstance(codec, Trailing):
                if value is not None:
                    codec.inner.put(out, value)
            else:
                codec.put(out, value)

    def take(self, buf: bytes, pos: int) -> tuple[dict, int]:
        values: dict[str, Any] = {}
        for name, codec in self.entries:
            if isinstance(codec, When):
                if values[codec.flag]:
                    values[name], pos = codec.inner.take(buf, pos)
                else:
                    values[name] = codec.default
            elif isinstance(codec, Trailing):
                if pos < len(buf):
                    values[name], pos = codec.inner.take(buf, pos)
                else:
                    values[name] = None
            else:
                values[name], pos = codec.take(buf, pos)
        return values, pos


def record(class_name: str, *entries, namespace: dict | None = None) -> type:
    """Build a frozen dataclass whose fields and wire layout come from one declaration."""
    layout = Layout(tuple(entries))

    def put(self, out: bytearray) -> None:
        layout.put(out, self)

    @classmethod
    def take(cls, buf: bytes, pos: int):
        values, pos = layout.take(buf, pos)
        return cls(**values), pos

    body = {"LAYOUT": layout, "put": put, "take": take, **(namespace or {})}
    cls = make_dataclass(
        class_name,
        [(name, Any, _field_default(codec)) for name, codec in entries],
        namespace=body,
        frozen=True,
        slots=True,
    )
    cls.__module__ = "superchat.protocol.messages"
    return cls


def _field_default(codec):
    default = _default_for(codec)
    if isinstance(default, tuple):
        return field(default_factory=tuple)
    return field(default=default)
