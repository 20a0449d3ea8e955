"""Who a session is allowed to be: the questions every handler and the event appliers ask of it."""

from __future__ import annotations

from ..protocol import flags
from .session import Session


def is_registered(session: Session) -> bool:
    return session.user_id is not None


def is_admin(session: Session) -> bool:
    """Admin rights come with a signed-in account flagged ADMIN; an anonymous session never has them."""
    return session.user_id is not None and bool(session.user_flags & flags.ADMIN)


def has_nickname(session: Session) -> bool:
    return bool(session.nickname)


def is_author(session: Session, author_user_id: int | None, author_nickname: str) -> bool:
    """A registered author is their account, whatever it is called now; an anonymous one is the name."""
    if author_user_id is not None:
        return session.user_id == author_user_id
    return session.nickname == author_nickname


def account_of(session: Session) -> int:
    """The signed-in account of a session that a precondition (registered_only) has let through."""
    if session.user_id is None:
        raise AssertionError("account_of() on a session with no account: declare @registered_only")
    return session.user_id
