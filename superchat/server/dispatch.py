"""Route each incoming frame to its handler, turning bad input into ERROR frames."""

from __future__ import annotations

import logging

from ..observability import metrics
from ..protocol import DecodeError, ErrorCode, Frame, InvalidUTF8, PayloadError, messages, type_name
from ..protocol.fields import STRING, Array, Optional, Trailing
from ..storage import DiskFull, StorageError
from .context import ServerContext
from .handlers import accounts, channels, connection, discovery, keys, moderation, people, posts, readstate
from .outbound import Refused, send, send_error
from .preconditions import precondition_of
from .session import Session

log = logging.getLogger("superchat.dispatch")

ROUTES = {
    cls.TYPE: (cls, handler, precondition_of(handler))
    for module in (connection, accounts, keys, people, readstate, channels, posts, moderation, discovery)
    for cls, handler in module.HANDLERS.items()
}

def _text_fields(cls) -> tuple[tuple[str, type | None], ...]:
    """The string fields of a record, with the record type of each array that holds more."""
    fields: list[tuple[str, type | None]] = []
    for name, codec in cls.LAYOUT.entries:
        inner = codec.inner if isinstance(codec, (Optional, Trailing)) else codec
        if inner is STRING:
            fields.append((name, None))
        elif isinstance(inner, Array) and _text_fields(inner.record):
            fields.append((name, inner.record))
    return tuple(fields)


# PostgreSQL cannot store a NUL character, and no text of a chat needs one: strings holding one are
# refused on every database alike, before any handler sees them.
TEXT_FIELDS = {code: _text_fields(cls) for code, (cls, _, _) in ROUTES.items()}
RECORD_TEXT_FIELDS = {
    record: _text_fields(record)
    for fields in TEXT_FIELDS.values() for _, record in fields if record is not None
}


def _holds_nul(msg, fields: tuple[tuple[str, type | None], ...]) -> bool:
    for name, record in fields:
        value = getattr(msg, name)
        if record is None:
            if value is not None and "\0" in value:
                return True
        elif any(_holds_nul(item, RECORD_TEXT_FIELDS[record]) for item in value):
            return True
    return False


# The reference server reads these without decoding an empty payload, so an empty
# payload stands for the all-defaults message rather than a format error.
EMPTY_MEANS_DEFAULTS = {messages.LeaveChannel.TYPE, messages.Disconnect.TYPE}


def dispatch(ctx: ServerContext, session: Session, frame: Frame) -> None:
    """Handle one frame. Raises ``connection.ClientDisconnect`` when the client says goodbye."""
    metrics.frame_received(type_name(frame.type))
    route = ROUTES.get(frame.type)
    if route is None:
        send_error(session, ErrorCode.UNSUPPORTED, "Unsupported message type")
        return
    cls, handler, precondition = route
    try:
        payload = frame.unwrapped_payload()
        if not payload and frame.type in EMPTY_MEANS_DEFAULTS:
            msg = cls()
        else:
            msg, _ = cls.take(payload, 0)
    except PayloadError as exc:
        send_error(session, exc.code, str(exc))
        return
    except InvalidUTF8:
        send_error(session, ErrorCode.INVALID_FORMAT, "Invalid message format: strings must be UTF-8")
        return
    except DecodeError:
        send_error(session, ErrorCode.INVALID_FORMAT, "Invalid message format")
        return
    if _holds_nul(msg, TEXT_FIELDS[frame.type]):
        send_error(session, ErrorCode.INVALID_FORMAT, "Invalid message format: strings must not contain NUL")
        return
    try:
        if precondition is not None and not precondition.holds(session):
            raise precondition.refusal()
        handler(ctx, session, msg)
    except Refused as refusal:
        send(session, refusal.reply)
    except connection.ClientDisconnect:
        raise
    # The request is named in lower case: the guide's top-senders recipe greps "POST_MESSAGE"
    # and reads the sender from the fourth field, so only the post log line may carry that word.
    except StorageError as exc:
        if not ctx.writer.disk_space.tells(exc):
            log.error("Session %d: %s failed: database error: %s", session.id, cls.NAME.lower(), exc)
        text = "Database error: the server's disk is full" if isinstance(exc, DiskFull) else "Database error"
        send_error(session, ErrorCode.DATABASE_ERROR, text)
    except Exception:
        log.exception("Session %d: %s handler failed", session.id, cls.NAME.lower())
        send_error(session, ErrorCode.INTERNAL_ERROR, "Internal server error")
