"""Nicknames (registration and login arrive with the accounts work)."""

from __future__ import annotations

import logging
import re

from ...protocol import ErrorCode, messages
from ..context import ServerContext
from ..outbound import Refused, send
from ..session import Session

log = logging.getLogger("superchat.accounts")

NICKNAME_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")
MIN_NICKNAME_BYTES = 3
# The wire format caps nicknames at 20 bytes whatever the configuration says.
MAX_NICKNAME_BYTES = 20


def set_nickname(ctx: ServerContext, session: Session, msg) -> None:
    nickname = msg.nickname
    longest = min(MAX_NICKNAME_BYTES, ctx.config.max_nickname_length)
    if not MIN_NICKNAME_BYTES <= len(nickname.encode()) <= longest:
        raise Refused(ErrorCode.INVALID_FORMAT, f"Nickname must be {MIN_NICKNAME_BYTES}-{longest} characters")
    if not NICKNAME_CHARACTERS.fullmatch(nickname):
        send(session, messages.NicknameResponse(
            success=False,
            message=f"Invalid nickname. Must be {MIN_NICKNAME_BYTES}-{longest} characters, "
            "alphanumeric plus - and _",
        ))
        return
    owner = ctx.store.get_user_by_nickname(nickname)
    if owner is not None and owner.id != session.user_id:
        send(session, messages.NicknameResponse(success=False, message="Nickname registered, password required"))
        return

    changed = bool(session.nickname) and session.nickname != nickname
    session.nickname = nickname
    log.info("Session %d set nickname: %s", session.id, nickname)
    verb = "changed" if changed else "set"
    send(session, messages.NicknameResponse(success=True, message=f"Nickname {verb} to {nickname}"))


HANDLERS = {
    messages.SetNickname: set_nickname,
}
