"""Wire encodings of the protocol's field types, and the class decorator that declares records.

Every integer is big-endian; strings are a u16 byte length followed by UTF-8;
an optional value is a presence byte (0 or 1) followed by the value when present;
timestamps are signed milliseconds since the Unix epoch.

A record is a class whose annotated fields, in wire order, each take a codec as default::

    @record
    class UnreadTarget(Record):
        channel_id: int = U64
        thread_id: int | None = optional(U64)

``record`` makes it a frozen dataclass with slots whose fields default to the codec's empty
value, and compiles from the same declaration ``put(out)``, appending its bytes to a bytearray,
and ``take(buf, pos) -> (record, pos)``, reading it from bytes.

The annotation is the value the field holds. As ``dataclasses.field()`` is typed as the default
it stands for, the codec constants (``U64``, ``STRING``...) and factories (``optional``, ``when``,
``trailing``, ``array``) are typed as the value they declare, so that a type checker holds each
annotation to its codec (``name: str = U64`` is an error); at run time they are the codec objects
the layout reads, instances of the classes below (``Optional``, ``When``, ``Trailing``, ``Array``),
which is what code inspecting a layout tests with ``isinstance``.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform


class DecodeError(ValueError):
    """The payload does not match the declared layout."""


class InvalidUTF8(DecodeError):
    """A string field holds bytes that are not UTF-8."""


class Codec:
    """How one field is written and read; ``Layout`` knows every kind below."""

    name: str


class _Scalar(Codec):
    """A fixed-size value, as one ``struct`` format character (big-endian)."""

    def __init__(self, fmt: str, name: str):
        self.fmt = fmt
        self.name = name


class _String(Codec):
    name = "string"
    MAX_BYTES = 0xFFFF


class Optional(Codec):
    """A presence byte, then the inner value when present (``None`` when absent)."""

    def __init__(self, inner: Codec):
        self.inner = inner
        self.name = f"optional {inner.name}"


class When(Codec):
    """A value written only when an earlier boolean field is true (e.g. ids after ``success``).

    Absent values decode to the inner codec's empty value (0, "").
    """

    def __init__(self, flag: str, inner: Codec):
        self.flag = flag
        self.inner = inner
        self.default = _default_for(inner)
        self.name = inner.name


class Trailing(Codec):
    """A final value that older peers omit: written when not ``None``, read when bytes remain."""

    def __init__(self, inner: Codec):
        self.inner = inner
        self.name = f"trailing {inner.name}"


class Array(Codec):
    """A count (u16 or u32) followed by that many records."""

    def __init__(self, count: _Scalar, record: type[Record]):
        self.count = count
        self.record = record
        self.name = f"array of {record.__name__}"


# ---- what declarations write: the codecs, typed as the values they declare ----

V = TypeVar("V")
R = TypeVar("R", bound="Record")


def _declared(codec: Codec) -> Any:
    """``codec`` as a declaration's type checker sees it: the value of its field (see above)."""
    return codec


def _codec(value: object) -> Codec:
    """The codec behind a declared value, or TypeError for anything that is not one."""
    if not isinstance(value, Codec):
        raise TypeError(f"{value!r} is not a field codec")
    return value


U8: int = _declared(_Scalar("B", "u8"))
U16: int = _declared(_Scalar("H", "u16"))
U32: int = _declared(_Scalar("I", "u32"))
U64: int = _declared(_Scalar("Q", "u64"))
I64: int = _declared(_Scalar("q", "i64"))
# Timestamps are plain i64 milliseconds on the wire; the alias keeps declarations readable.
TIMESTAMP = I64
# One byte; any non-zero byte reads as true, as upstream's decoder reads it (struct's "?" does).
BOOL: bool = _declared(_Scalar("?", "bool"))
STRING: str = _declared(_String())


def optional(inner: V) -> V | None:
    """A presence byte, then ``inner`` when present; ``None`` when absent."""
    return _declared(Optional(_codec(inner)))


def when(flag: str, inner: V) -> V:
    """``inner`` only when the earlier boolean field ``flag`` is true; else its empty value."""
    return _declared(When(flag, _codec(inner)))


def trailing(inner: V) -> V | None:
    """A final ``inner`` that older peers omit: written when not ``None``, read when bytes remain."""
    return _declared(Trailing(_codec(inner)))


def array(count: int, record: type[R]) -> Sequence[R]:
    """A ``count`` (``U16`` or ``U32``) followed by that many ``record`` records."""
    codec = _codec(count)
    if not isinstance(codec, _Scalar) or codec.fmt not in ("H", "I"):
        raise TypeError(f"an array's count is U16 or U32, not {codec.name}")
    return _declared(Array(codec, record))


def _default_for(codec: Codec) -> Any:
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


# ---- records ----


class Record:
    """A declared record: ``record`` compiles ``put`` and ``take`` for each subclass."""

    __slots__ = ()
    LAYOUT: ClassVar[Layout]

    def put(self, out: bytearray) -> None:
        """Append the record's bytes to ``out``; ValueError for a value its field cannot hold."""
        raise TypeError(f"{type(self).__name__} is not declared with @record")

    @classmethod
    def take(cls, buf: bytes, pos: int) -> tuple[Self, int]:
        """Read one record from ``buf`` at ``pos``: the record and the position after it."""
        raise TypeError(f"{cls.__name__} is not declared with @record")


@dataclass_transform(frozen_default=True)
def record(cls: type[R]) -> type[R]:
    """Make ``cls`` a frozen dataclass whose fields and wire layout come from its declaration.

    The fields of a record it derives from come first, as dataclasses orders them.
    """
    inherited: Layout | None = getattr(cls, "LAYOUT", None)
    own = _own_entries(cls)
    for name, codec in own:
        setattr(cls, name, _field_default(codec))
    declared = dataclass(frozen=True, slots=True)(cls)
    declared.LAYOUT = Layout((inherited.entries if inherited else ()) + own)
    for name, method in declared.LAYOUT.methods(declared).items():
        setattr(declared, name, method)
    return declared


def _own_entries(cls: type) -> tuple[tuple[str, Codec], ...]:
    annotated = inspect.get_annotations(cls)
    entries = []
    for name in annotated:
        codec = cls.__dict__.get(name)
        if not isinstance(codec, Codec):
            raise TypeError(f"{cls.__name__}.{name} has no codec")
        entries.append((name, codec))
    for name, value in vars(cls).items():
        if isinstance(value, Codec) and name not in annotated:
            raise TypeError(f"{cls.__name__}.{name} has a codec but no annotation")
    return tuple(entries)


def _field_default(codec: Codec) -> Any:
    default = _default_for(codec)
    if isinstance(default, tuple):
        return field(default_factory=tuple)
    return field(default=default)


class Layout:
    """The ordered (name, codec) pairs of one record; drives both directions.

    From the declaration it writes the source of one ``put`` and one ``take`` function and
    compiles them, as dataclasses does for ``__init__``: consecutive fixed-size fields become
    one ``struct`` call and no codec is looked up per field, which made encoding and decoding
    several times faster than walking the declaration for every message.
    """

    def __init__(self, entries: tuple[tuple[str, Codec], ...]):
        self.entries = entries

    def methods(self, cls: type[Record]) -> dict[str, Any]:
        """``put(self, out)`` and ``take(buf, pos) -> (obj, pos)`` of ``cls``, compiled."""
        writer, reader = _Generator(), _Generator()
        writer.put_fields(self.entries)
        reader.take_fields(self.entries)
        put = writer.function("put", "self, out", "struct.error", "_range_error")
        constructor = f"_cls({', '.join(reader.local(name) for name, _ in self.entries)})"
        reader.line(f"return {constructor}, pos")
        reader.names["_cls"] = cls
        return {"put": put, "take": staticmethod(reader.function("take", "buf, pos"))}


def _range_error(exc: struct.error) -> ValueError:
    return ValueError(f"value out of range for its field: {exc}")


class _Generator:
    """Collects the lines of one generated function and the objects its code refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "DecodeError": DecodeError, "InvalidUTF8": InvalidUTF8, "struct": struct, "_range_error": _range_error,
        }
        self.depth = 1
        self._run: list[tuple[str, _Scalar]] = []  # fixed-size fields not yet written out
        self._locals: dict[str, str] = {}

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def name(self, obj: Any) -> str:
        key = f"_k{len(self.names)}"
        self.names[key] = obj
        return key

    def local(self, field_name: str) -> str:
        if field_name not in self._locals:
            self._locals[field_name] = f"v{len(self._locals)}"
        return self._locals[field_name]

    def function(
        self, name: str, params: str, catch: str | None = None, wrap: str | None = None
    ) -> Callable[..., Any]:
        body = self.lines or ["    pass"]
        if catch:
            body = ["    try:", *("    " + line for line in body), f"    except {catch} as exc:",
                    f"        raise {wrap}(exc) from exc"]
        source = f"def {name}({params}):\n" + "\n".join(body) + "\n"
        namespace: dict[str, Any] = {}
        exec(compile(source, f"<layout {name}>", "exec"), self.names, namespace)
        return namespace[name]

    def _struct(self, fmt: str) -> str:
        return self.name(struct.Struct(">" + fmt))

    # -- encoding --------------------------------------------------------------------------

    def put_fields(self, entries: tuple[tuple[str, Codec], ...]) -> None:
        for name, codec in entries:
            if isinstance(codec, _Scalar):
                self._run.append((f"self.{name}", codec))
                continue
            self._flush_put()
            self.put_value(codec, f"self.{name}")
        self._flush_put()

    def _flush_put(self) -> None:
        if self._run:
            fmt = "".join(codec.fmt for _, codec in self._run)
            self.line(f"out += {self._struct(fmt)}.pack({', '.join(expr for expr, _ in self._run)})")
            self._run = []

    def put_value(self, codec: Codec, expr: str) -> None:
        if isinstance(codec, _Scalar):
            self.line(f"out += {self._struct(codec.fmt)}.pack({expr})")
        elif codec is STRING:
            self.line(f"data = {expr}.encode('utf-8')")
            self.line(f"if len(data) > {_String.MAX_BYTES}:")
            self.line("    raise ValueError('string longer than 65535 bytes')")
            self.line("out += len(data).to_bytes(2, 'big')")
            self.line("out += data")
        elif isinstance(codec, Optional):
            value = self._indented(f"value{self.depth}", expr)
            self.line(f"if {value} is None:")
            self.line("    out.append(0)")
            self.line("else:")
            self.depth += 1
            self.line("out.append(1)")
            self.put_value(codec.inner, value)
            self.depth -= 1
        elif isinstance(codec, When):
            self.line(f"if self.{codec.flag}:")
            self._nested_put(codec.inner, expr)
        elif isinstance(codec, Trailing):
            self.line(f"if {expr} is not None:")
            self._nested_put(codec.inner, expr)
        elif isinstance(codec, Array):
            items = self._indented(f"items{self.depth}", expr)
            self.line(f"out += {self._struct(codec.count.fmt)}.pack(len({items}))")
            self.line(f"for item in {items}:")
            self.line("    item.put(out)")
        else:
            raise TypeError(f"no encoding for {codec!r}")

    def _nested_put(self, codec: Codec, expr: str) -> None:
        self.depth += 1
        self.put_value(codec, expr)
        self.depth -= 1

    def _indented(self, local: str, expr: str) -> str:
        self.line(f"{local} = {expr}")
        return local

    # -- decoding --------------------------------------------------------------------------

    def take_fields(self, entries: tuple[tuple[str, Codec], ...]) -> None:
        self.line("end_of_data = len(buf)")
        for name, codec in entries:
            if isinstance(codec, _Scalar):
                self._run.append((self.local(name), codec))
                continue
            self._flush_take()
            self.take_value(codec, self.local(name))
        self._flush_take()

    def _flush_take(self) -> None:
        if self._run:
            fmt = "".join(codec.fmt for _, codec in self._run)
            what = self._run[0][1].name if len(self._run) == 1 else "fields"
            self._take_fixed(", ".join(var for var, _ in self._run) + ",", fmt, what)
            self._run = []

    def _take_fixed(self, targets: str, fmt: str, what: str) -> None:
        packed = self._struct(fmt)
        self.line(f"if pos + {packed}.size > end_of_data:")
        self.line(f"    raise DecodeError('truncated {what}')")
        self.line(f"{targets} = {packed}.unpack_from(buf, pos)")
        self.line(f"pos += {packed}.size")

    def take_value(self, codec: Codec, var: str) -> None:
        if isinstance(codec, _Scalar):
            self._take_fixed(var + ",", codec.fmt, codec.name)
        elif codec is STRING:
            self._take_fixed("length,", "H", "string length")
            self.line("if pos + length > end_of_data:")
            self.line("    raise DecodeError('truncated string')")
            self.line("try:")
            self.line(f"    {var} = str(buf[pos:pos + length], 'utf-8')")
            self.line("except UnicodeDecodeError as exc:")
            self.line("    raise InvalidUTF8('string is not valid UTF-8') from exc")
            self.line("pos += length")
        elif isinstance(codec, Optional):
            self._take_fixed("present,", "?", "presence byte")
            self.line("if present:")
            self._nested_take(codec.inner, var)
            self.line("else:")
            self.line(f"    {var} = None")
        elif isinstance(codec, When):
            self.line(f"if {self.local(codec.flag)}:")
            self._nested_take(codec.inner, var)
            self.line("else:")
            self.line(f"    {var} = {self.name(codec.default)}")
        elif isinstance(codec, Trailing):
            self.line("if pos < end_of_data:")
            self._nested_take(codec.inner, var)
            self.line("else:")
            self.line(f"    {var} = None")
        elif isinstance(codec, Array):
            self._take_fixed("count,", codec.count.fmt, codec.count.name)
            self.line(f"{var} = []")
            self.line("for _ in range(count):")
            self.line(f"    item, pos = {self.name(codec.record)}.take(buf, pos)")
            self.line(f"    {var}.append(item)")
        else:
            raise TypeError(f"no decoding for {codec!r}")

    def _nested_take(self, codec: Codec, var: str) -> None:
        self.depth += 1
        self.take_value(codec, var)
        self.depth -= 1
