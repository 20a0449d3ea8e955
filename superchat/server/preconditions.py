"""What must hold of a session before a handler runs, declared once on the handler.

``@admin_only``, ``@registered_only`` and ``@nickname_required`` declare a ``Precondition`` for a
handler; the dispatcher checks it before the handler runs and sends its refusal instead when it
does not hold. A refusal is an ERROR frame with the precondition's code, or, for requests whose
reply carries success and a message of its own, that reply built by ``reply``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..protocol import ErrorCode
from ..protocol.registry import Message
from . import permissions
from .outbound import Refused
from .session import Session

Handler = TypeVar("Handler", bound=Callable[..., None])
# Builds the request's own failure reply from the refusal's text.
Reply = Callable[[str], Message]

ADMIN_REQUIRED = "Permission denied: admin access required"


@dataclass(frozen=True)
class Precondition:
    holds: Callable[[Session], bool]
    code: ErrorCode
    text: str
    reply: Reply | None = None

    def refusal(self) -> Refused:
        return Refused(self.reply(self.text)) if self.reply else Refused.error(self.code, self.text)


_DECLARED: dict[Callable[..., Any], Precondition] = {}


def precondition_of(handler: Callable[..., Any]) -> Precondition | None:
    return _DECLARED.get(handler)


def _declare(precondition: Precondition) -> Callable[[Handler], Handler]:
    def attach(handler: Handler) -> Handler:
        if handler in _DECLARED:
            raise TypeError(f"{handler.__name__} declares two preconditions")
        _DECLARED[handler] = precondition
        return handler

    return attach


def admin_only(*, reply: Reply | None = None, text: str = ADMIN_REQUIRED) -> Callable[[Handler], Handler]:
    return _declare(Precondition(permissions.is_admin, ErrorCode.PERMISSION_DENIED, text, reply))


def registered_only(text: str, *, reply: Reply | None = None) -> Callable[[Handler], Handler]:
    return _declare(Precondition(permissions.is_registered, ErrorCode.AUTH_REQUIRED, text, reply))


def nickname_required(text: str = "Nickname required. Use SET_NICKNAME first.", *,
                      code: ErrorCode = ErrorCode.NICKNAME_REQUIRED,
                      reply: Reply | None = None) -> Callable[[Handler], Handler]:
    return _declare(Precondition(permissions.has_nickname, code, text, reply))
