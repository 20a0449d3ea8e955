"""What every handler works with."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..storage import Store
from .bans import BanList
from .passwords import LoginThrottle
from .session import SessionRegistry
from .writer import Writer


@dataclass(frozen=True)
class ServerContext:
    config: Config
    store: Store
    writer: Writer
    sessions: SessionRegistry
    bans: BanList
    logins: LoginThrottle
