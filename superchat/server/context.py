"""What every handler works with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Config
from ..storage import Store
from .bans import BanList
from .intake import PartialFrameMemory
from .passwords import LoginThrottle
from .reconcile import Reconciler
from .session import SessionRegistry
from .writer import Writer

if TYPE_CHECKING:
    from .cluster.link import ClusterLink, Limit
    from .directory import Directory


@dataclass(frozen=True)
class ServerContext:
    config: Config
    store: Store
    writer: Writer
    sessions: SessionRegistry
    bans: BanList
    logins: LoginThrottle
    # This node alone, or its link to the other nodes of the same server.
    cluster: ClusterLink
    # Accounts created per client address (REGISTER_USER and SSH keys alike), on all nodes.
    registrations: Limit
    # Channels created per user, on all nodes.
    channel_creates: Limit
    # The database work that bans and deletions call for, off the delivering greenlets.
    reconciler: Reconciler
    # What the unfinished frames of all sessions may hold together.
    partial_frames: PartialFrameMemory
    # This server's list of servers and its announcements to other directories.
    directory: Directory
