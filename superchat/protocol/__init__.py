"""The SuperChat wire protocol, free of sockets and event loops."""

from . import messages
from .errors import ErrorCode
from .fields import DecodeError, InvalidUTF8
from .frame import (
    MAX_FRAME_LENGTH,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    PayloadError,
    compress_payload,
    encode_frame,
)
from .registry import Message, decode_payload, encode_payload, type_name


def encode_message(msg: Message) -> bytes:
    """A whole frame for one message object."""
    return encode_frame(msg.TYPE, encode_payload(msg))


__all__ = [
    "MAX_FRAME_LENGTH",
    "PROTOCOL_VERSION",
    "DecodeError",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "InvalidUTF8",
    "PayloadError",
    "compress_payload",
    "decode_payload",
    "encode_frame",
    "encode_message",
    "encode_payload",
    "messages",
    "type_name",
]
