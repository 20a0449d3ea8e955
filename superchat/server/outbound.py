"""The one way frames leave the server: encode once, queue the same bytes for every recipient."""

from __future__ import annotations

import time
from collections.abc import Collection

from ..observability import metrics, trace
from ..protocol import ErrorCode, encode_message, messages
from ..protocol.registry import Message
from .fanout import send_all
from .session import Session


def send(session: Session, msg) -> None:
    send_encoded(session, msg.NAME, encode_message(msg))


def send_encoded(session: Session, type_name: str, frame: bytes) -> None:
    """Queue a frame encoded in advance (e.g. SERVER_CONFIG, built once at start)."""
    session.send(frame)
    metrics.frames_sent(type_name)


def send_error(session: Session, code: int, text: str) -> None:
    send(session, messages.Error(error_code=int(code), message=text))


def expel(session: Session, text: str) -> None:
    """Tell a session why it is being cut off, then close it once that is written."""
    send(session, messages.Error(error_code=ErrorCode.PERMISSION_DENIED, message=text))
    send(session, messages.Disconnect(reason=text))
    session.finish(text)


class Refused(Exception):
    """A handler's refusal, raised anywhere in a handler and sent by the dispatcher: the reply that
    says why, ERROR ``code`` (``Refused.error``) or the request's own reply with ``success=False``."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply)
        self.reply = reply

    @classmethod
    def error(cls, code: int, text: str) -> Refused:
        return cls(messages.Error(error_code=int(code), message=text))


def broadcast(sessions: Collection[Session], msg) -> int:
    """Deliver one message to many sessions; returns how many it was queued for."""
    started = time.perf_counter()
    frame = encode_message(msg)
    count = send_all(sessions, frame)
    metrics.frames_sent(msg.NAME, count)
    if trace.enabled:
        trace.broadcast(frame, count, time.perf_counter() - started)
    return count
