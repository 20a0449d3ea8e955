"""DEBUG lines from the server's busiest paths: every frame in and out, broadcasts, group commits,
cluster events, slow requests.

Unless the server runs with --debug they cost one test of ``enabled`` (set by logs.configure),
which every caller makes before it calls in here. No line carries a payload's fields beyond the
ids a message names (passwords, their hashes and keys travel in payloads): frames are told by type,
flags and length.
"""

from __future__ import annotations

import logging

from ..protocol import DecodeError, decode_payload, type_name
from ..protocol.frame import HEADER_SIZE

enabled = False

log = logging.getLogger("superchat.trace")

# A request whose handling takes longer is named with its time.
SLOW_REQUEST_SECONDS = 0.1


def frame_in(session_id: int, frame_type: int, flags: int, length: int) -> None:
    log.debug("Session %d <- %s flags=0x%02x length=%d", session_id, type_name(frame_type), flags, length)


def frame_out(session_id: int, frame: bytes) -> None:
    log.debug("Session %d -> %s flags=0x%02x length=%d", session_id, type_name(frame[5]), frame[6],
              len(frame) - HEADER_SIZE)


def slow_request(session_id: int, frame_type: int, seconds: float) -> None:
    log.debug("Session %d: %s took %.1f ms", session_id, type_name(frame_type), seconds * 1000)


def broadcast(frame: bytes, recipients: int, seconds: float) -> None:
    log.debug("Broadcast %s%s to %d sessions in %.3f ms", type_name(frame[5]), _message_of(frame), recipients,
              seconds * 1000)


def _message_of(frame: bytes) -> str:
    """`` message=ID`` for a frame about one message (new, edited, deleted), else empty."""
    try:
        msg = decode_payload(frame[5], frame[HEADER_SIZE:])
    except (KeyError, DecodeError):
        return ""
    message_id = getattr(msg, "id", None) if hasattr(msg, "author_nickname") else getattr(msg, "message_id", None)
    return "" if message_id is None else f" message={message_id}"


def group_commit(posts: int, stored: int, seconds: float) -> None:
    log.debug("Group commit: %d posts (%d stored) in %.1f ms", posts, stored, seconds * 1000)


def session_opened(session_id: int, peer: str, transport: str) -> None:
    log.debug("Session %d opened: %s over %s", session_id, peer, transport)


def session_closed(session_id: int, nickname: str, reason: str, seconds: float, unsent: int) -> None:
    log.debug("Session %d (%s) closed after %.1f s: %s; %d bytes unsent", session_id, nickname, seconds, reason,
              unsent)


def cluster_event(direction: str, kind: str, node: str) -> None:
    log.debug("Cluster event %s: %s (node %s)", direction, kind, node)
