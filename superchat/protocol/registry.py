"""What makes a record a message: its type code and name, and the table decoding looks them up in."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar, dataclass_transform

from .fields import Record, record


class Message(Record):
    """A message of the protocol: a record declared with ``message(code, name)``."""

    __slots__ = ()
    TYPE: ClassVar[int]
    NAME: ClassVar[str]


BY_CODE: dict[int, type[Message]] = {}

# Types the protocol document lists but no SuperChat server implements; they are
# named so that logs and metrics can say what arrived.
UNIMPLEMENTED_NAMES = {
    0x08: "CREATE_SUBCHANNEL",
    0x15: "GET_SUBCHANNELS",
    0x19: "START_DM",
    0x1A: "PROVIDE_PUBLIC_KEY",
    0x1B: "ALLOW_UNENCRYPTED",
    0x88: "SUBCHANNEL_CREATED",
    0x96: "SUBCHANNEL_LIST",
    0xA0: "SERVER_STATS",
    0xA1: "KEY_REQUIRED",
    0xA2: "DM_READY",
    0xA3: "DM_PENDING",
    0xA4: "DM_REQUEST",
}

M = TypeVar("M", bound=Message)


@dataclass_transform(frozen_default=True)
def message(code: int, name: str) -> Callable[[type[M]], type[M]]:
    """Declare the message type ``code`` named ``name``: a record (see ``fields``) in ``BY_CODE``.

    The class is named after the type (``SSH_KEY_LIST``: ``SSHKeyList``).
    """

    def declare(cls: type[M]) -> type[M]:
        if code in BY_CODE:
            raise ValueError(f"type 0x{code:02X} declared twice")
        if cls.__name__.lower() != name.replace("_", "").lower():
            raise ValueError(f"class {cls.__name__} declares {name}")
        cls.TYPE = code
        cls.NAME = name
        declared = record(cls)
        BY_CODE[code] = declared
        return declared

    return declare


def encode_payload(msg: Record) -> bytes:
    out = bytearray()
    msg.put(out)
    return bytes(out)


def decode_payload(code: int, payload: bytes) -> Message:
    """Decode a payload of a declared type; trailing bytes are ignored, as upstream does."""
    cls = BY_CODE.get(code)
    if cls is None:
        raise KeyError(code)
    msg, _ = cls.take(payload, 0)
    return msg


def type_name(code: int) -> str:
    cls = BY_CODE.get(code)
    if cls is not None:
        return cls.NAME
    return UNIMPLEMENTED_NAMES.get(code, "UNKNOWN")
