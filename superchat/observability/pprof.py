"""Build pprof profiles: gzip-compressed ``perftools.profiles.Profile`` protobuf messages.

The message layout follows https://github.com/google/pprof/blob/main/proto/profile.proto. Only the fields
``go tool pprof`` needs are written: sample types, samples, locations, functions, the string table, the
period, timestamps, comments and the default sample type. Locations carry no address and belong to a single
mapping flagged as symbolized, so pprof neither looks for the binary nor asks the server for symbols.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

_VARINT = 0
_LENGTH_DELIMITED = 2
_UINT64_RANGE = 1 << 64


class Frame(NamedTuple):
    """One stack frame: ``function`` is the name pprof shows, e.g. ``superchat.server.Session.run``."""

    function: str
    filename: str = ""
    line: int = 0
    start_line: int = 0


class Profile:
    """Samples aggregated by stack, encoded on demand.

    ``sample_types`` are ``(type, unit)`` pairs such as ``("cpu", "nanoseconds")``; every sample carries one
    value per sample type. Stacks are given leaf first, as pprof stores them. ``binary`` names the program.
    """

    def __init__(
        self,
        sample_types: Sequence[tuple[str, str]],
        period_type: tuple[str, str],
        period: int = 1,
        default_sample_type: str | None = None,
        binary: str = "",
    ):
        self.sample_types = list(sample_types)
        self.period_type = period_type
        self.period = period
        self.default_sample_type = default_sample_type
        self.binary = binary
        self.time_nanos = time.time_ns()
        self.duration_nanos = 0
        self.comments: list[str] = []
        self.samples: dict[tuple[Frame, ...], list[int]] = {}

    def add(self, stack: Iterable[Frame], values: Sequence[int]) -> None:
        if len(values) != len(self.sample_types):
            raise ValueError(f"expected {len(self.sample_types)} values, got {len(values)}")
        totals = self.samples.setdefault(tuple(stack), [0] * len(values))
        for index, value in enumerate(values):
            totals[index] += value

    def encode(self) -> bytes:
        """The gzip-compressed protobuf that ``go tool pprof`` reads."""
        return gzip.compress(self._message(), compresslevel=6)

    def text(self, title: str) -> str:
        """A plain-text view: the comments, then each stack with its values, largest last-type value first."""
        lines = [title, *(f"# {comment}" for comment in self.comments)]
        lines.append("# values: " + " ".join(f"{kind}/{unit}" for kind, unit in self.sample_types))
        totals = [sum(values[index] for values in self.samples.values()) for index in range(len(self.sample_types))]
        lines.append("# totals: " + " ".join(map(str, totals)))
        rendered: dict[Frame, str] = {}
        for stack, values in sorted(self.samples.items(), key=lambda item: item[1][::-1], reverse=True):
            lines.append("")
            lines.append(" ".join(map(str, values)) + " @")
            for frame in stack:
                if frame not in rendered:
                    rendered[frame] = f"#\t{frame.function}\t{frame.filename}:{frame.line}"
                lines.append(rendered[frame])
        return "\n".join(lines) + "\n"

    def _message(self) -> bytes:
        # Written into bytearrays in place: under tracemalloc every small allocation costs microseconds.
        strings: dict[str, int] = {"": 0}

        def string(text: str) -> int:
            return strings.setdefault(text, len(strings))

        out = bytearray()
        for kind, unit in self.sample_types:
            _put_message(out, 1, _fields((1, string(kind)), (2, string(unit))))
        # The mapping's file name is the "File:" line of pprof's reports.
        _put_message(out, 3, _fields((1, 1), (5, string(self.binary)), (7, 1), (8, 1), (9, 1)))
        functions: dict[tuple[str, str, int], int] = {}
        locations: dict[Frame, int] = {}
        tables = bytearray()
        for stack, values in self.samples.items():
            location_ids = bytearray()
            for frame in stack:
                location_id = locations.get(frame)
                if location_id is None:
                    location_id = locations[frame] = len(locations) + 1
                    function_key = (frame.function, frame.filename, frame.start_line)
                    function_id = functions.get(function_key)
                    if function_id is None:
                        function_id = functions[function_key] = len(functions) + 1
                        name = string(frame.function)
                        _put_message(tables, 5, _fields((1, function_id), (2, name), (3, name),
                                                        (4, string(frame.filename)), (5, frame.start_line)))
                    location = _fields((1, location_id), (2, 1))
                    _put_message(location, 4, _fields((1, function_id), (2, frame.line)))
                    _put_message(tables, 4, location)
                _put_varint(location_ids, location_id)
            sample = bytearray()
            if location_ids:
                _put_message(sample, 1, location_ids)
            _put_packed(sample, 2, values)
            _put_message(out, 2, sample)
        out += tables
        for field, value in ((9, self.time_nanos), (10, self.duration_nanos), (12, self.period),
                             (14, string(self.default_sample_type or ""))):
            _put_int(out, field, value)
        _put_message(out, 11, _fields((1, string(self.period_type[0])), (2, string(self.period_type[1]))))
        _put_packed(out, 13, [string(comment) for comment in self.comments])
        # Every string is interned by now; protobuf lets the table come last.
        for text in strings:
            _put_message(out, 6, text.encode())
        return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    # Negative int64 values take the ten-byte two's-complement form protobuf specifies.
    if value < 0:
        value += _UINT64_RANGE
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _put_int(out: bytearray, field: int, value: int) -> None:
    # proto3 omits scalar fields holding their default, zero.
    if value:
        _put_varint(out, field << 3 | _VARINT)
        _put_varint(out, value)


def _put_message(out: bytearray, field: int, payload: bytes | bytearray) -> None:
    _put_varint(out, field << 3 | _LENGTH_DELIMITED)
    _put_varint(out, len(payload))
    out += payload


def _put_packed(out: bytearray, field: int, values: Iterable[int]) -> None:
    payload = bytearray()
    for value in values:
        _put_varint(payload, value)
    if payload:
        _put_message(out, field, payload)


def _fields(*pairs: tuple[int, int]) -> bytearray:
    """A message of varint fields given as (field number, value) pairs."""
    out = bytearray()
    for field, value in pairs:
        _put_int(out, field, value)
    return out
