"""What the rest of the server asks of the cluster: ``Solo`` (one node) and ``Cluster`` (a node
of several, through Redis) both provide it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..event import Event
    from ..session import Session


@dataclass(frozen=True)
class RemoteSession:
    """A session of another node, as its roster entry tells."""

    session_id: int
    nickname: str
    user_id: int | None
    user_flags: int
    channel_id: int | None


class Limit(Protocol):
    """A per-key sliding window: this node's own, or one every node shares."""

    def allow(self, key: str, /) -> bool: ...

    def has_room(self, key: str, /) -> bool: ...


class ClusterLink(Protocol):
    # Whether other nodes may exist: events are then shared, and encoded even with nobody listening here.
    shared: bool
    node_id: str
    # This node's first session id: every node gives out ids from a range of its own.
    first_session_id: int

    def start(self, apply_remote: Callable[[Event], None], local_sessions: Callable[[], Iterable[Session]],
              missed: Callable[[], None]) -> None:
        """``missed`` is called when events were lost to this node (trimmed from the stream before
        it could read them): what the database knows must then be made good."""

    def stop(self) -> None: ...

    def publish(self, event: Event) -> None: ...

    def roster_changed(self, session: Session) -> None: ...

    def roster_left(self, session: Session) -> None: ...

    def connection_opened(self, host: str) -> None: ...

    def connection_closed(self, host: str) -> None: ...

    def remote_sessions(self) -> list[RemoteSession]:
        """The sessions of every other live node."""

    def connections_elsewhere(self, host: str) -> int:
        """Connections from ``host`` to the other live nodes."""

    def limit(self, name: str, limit: int, seconds: float) -> Limit: ...

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        """Whether the shared window ``key`` has room (and take it when ``record``); None when
        no shared state can tell."""

    def forget_window(self, key: str) -> None: ...

    def block(self, key: str, seconds: float) -> None:
        """Refuse ``key`` on every node for ``seconds``."""

    def seconds_blocked(self, key: str) -> float: ...

    def status(self) -> dict | None:
        """What /health tells of the cluster; None for a single node."""
