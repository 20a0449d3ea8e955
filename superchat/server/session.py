"""Connected sessions, their outbound queues and the indexes broadcasts use."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import gevent

from ..observability import metrics, trace
from .limits import SlidingWindow

log = logging.getLogger("superchat.session")

# A session whose unsent bytes pass this is a reader that stopped reading; it is
# dropped so that it never holds memory or delays anyone else.
MAX_PENDING_BYTES = 4 * 1024 * 1024
# Held broadcasts past this are written at once: the outbound limit above is for bytes the
# client did not read, never for what a round held, and a round holds little memory per session.
HOLD_AT_MOST_BYTES = 64 * 1024
NO_IDS: frozenset[int] = frozenset()


class Session:
    """One client connection: identity, joined channel, subscriptions and an outbound queue.

    Sending never blocks the caller: a frame goes straight to the kernel when the
    link takes it at once (TCP and WebSocket with room: one syscall, no greenlet),
    otherwise it waits in ``_pending`` for a short-lived flusher greenlet that writes as
    the link drains (SSH always goes this way). Broadcast frames may be held in
    ``_pending`` without a flusher for one write later (``hold``, see fanout.py); a frame
    sent meanwhile goes out at once together with them.
    """

    __slots__ = (
        "id",
        "address",
        "link",
        "_wrap",
        "_pending",
        "_pending_bytes",
        "_flusher",
        "closed",
        "close_reason",
        "nickname",
        "user_id",
        "user_flags",
        "joined_channel",
        "threads",
        "channels",
        "post_window",
        "presence_window",
        "shadowbanned",
        "watches_roster",
        "_finish_reason",
    )

    def __init__(self, session_id: int, address: tuple, link):
        self.id = session_id
        self.address = address
        self.link = link
        self._wrap = link.wrap
        # A list, not a deque: an idle session's empty deque would cost 760 bytes, a list 56.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flusher = None
        self.closed = False
        self.close_reason = ""
        self._finish_reason = ""
        self.nickname = ""
        self.user_id: int | None = None
        self.user_flags = 0
        self.joined_channel: int | None = None
        # Shared and empty until the first subscription: most sessions never subscribe to a
        # thread, and an empty set costs 216 bytes.
        self.threads: AbstractSet[int] = NO_IDS
        self.channels: AbstractSet[int] = NO_IDS
        # Rate windows are created on first use: most sessions never post.
        self.post_window: SlidingWindow | None = None
        self.presence_window: SlidingWindow | None = None
        # A shadowbanned author's posts reach only the author and admins.
        self.shadowbanned = False
        # Set once the client asks for LIST_USERS: only such sessions receive SERVER_PRESENCE.
        self.watches_roster = False

    @property
    def finishing(self) -> bool:
        """Closed or told to go: no longer one of the sessions a broadcast is meant for."""
        return self.closed or bool(self._finish_reason)

    def identity(self) -> dict:
        """Who the session is, in the fields SERVER_PRESENCE and CHANNEL_PRESENCE tell it."""
        return {
            "session_id": self.id,
            "nickname": self.nickname,
            "is_registered": self.user_id is not None,
            "user_id": self.user_id,
            "user_flags": self.user_flags,
        }

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def peer(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def send(self, frame: bytes) -> None:
        """Queue one encoded frame; the same bytes object may go to many sessions."""
        if not self.closed:
            self.send_wrapped(self._enveloped(frame))

    def hold(self, frame: bytes) -> bool:
        """Keep one encoded frame for ``write_held``; True when nothing was held before, so that the
        caller sees to that write."""
        if self.closed:
            return False
        data = self._enveloped(frame)
        if self._flusher is not None:
            self._queue(data)
            return False
        first = not self._pending
        self._keep(data)
        if self._pending_bytes >= HOLD_AT_MOST_BYTES:
            self.write_held()
        return first

    def _enveloped(self, frame: bytes) -> bytes:
        if trace.enabled:
            trace.frame_out(self.id, frame)
        return frame if self._wrap is None else self._wrap(frame)

    def send_wrapped(self, data: bytes) -> None:
        """Queue bytes already in the transport's envelope (a frame, or a WebSocket control message)."""
        if self.closed:
            return
        if self._flusher is not None:
            self._queue(data)
        elif self._pending:  # held broadcasts: a reply does not wait for their write, and follows them
            self._keep(data)
            self.write_held()
        else:
            self.write(data)

    def write(self, data: bytes) -> None:
        """Write now as much as the link takes at once; the rest is queued."""
        try:
            sent = self.link.try_write(data)
        except OSError:
            self.close("write failed")
            return
        self.wrote(data, sent)

    def take_held(self) -> bytes:
        """Everything held, now taken out to be written (b"" if none is: a session with a flusher
        leaves its queue to the flusher)."""
        pending = self._pending
        if self._flusher is not None or not pending:
            return b""
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
        return data

    def write_held(self) -> None:
        data = self.take_held()
        if data:
            self.write(data)

    def wrote(self, data: bytes, sent: int | OSError) -> None:
        """How much of ``data`` the link took when written straight to it, or why it failed; the
        rest is queued."""
        if isinstance(sent, OSError):
            self.close("write failed")
        elif sent < len(data):
            self._queue(data[sent:])

    def _queue(self, data: bytes) -> None:
        self._keep(data)
        if self._flusher is None and not self.closed:
            self._flusher = gevent.spawn(self._flush)

    def _keep(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > MAX_PENDING_BYTES:
            log.warning(
                "Session %d (%s) disconnected: outbound queue overflow (%d bytes unread)",
                self.id,
                self.nickname or "-",
                self._pending_bytes,
            )
            self.close("outbound queue overflow")

    def _flush(self) -> None:
        try:
            while self._pending and not self.closed:
                chunk = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                self.link.write_all(chunk)
        except OSError:
            self.close("write failed")
        finally:
            self._flusher = None
        if self._finish_reason:
            self.close(self._finish_reason)

    def finish(self, reason: str) -> None:
        """Close once everything queued so far is written (a last ERROR, a DISCONNECT)."""
        self._finish_reason = reason
        self.write_held()
        if self._flusher is None:
            self.close(reason)

    @property
    def backlog(self) -> int:
        """Bytes queued that the link has not taken yet."""
        return self._pending_bytes

    def wait_for_reader(self, timeout: float) -> bool:
        """Wait (bounded) for the client to read what is queued; False if it did not."""
        self.drain(timeout)
        self.write_held()  # what a round held meanwhile is not the client's to have read yet
        return not self._pending

    def drain(self, timeout: float) -> None:
        """Wait (bounded) until everything queued so far has been written."""
        self.write_held()
        flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout)

    def close(self, reason: str) -> None:
        """Stop sending and shut the link; the reader loop then ends and unregisters us."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._pending.clear()
        self._pending_bytes = 0
        self.link.shutdown()


class SessionRegistry:
    """Every live session, with reverse indexes so a broadcast never walks all sessions."""

    def __init__(self, first_id: int = 1) -> None:
        # Several nodes give out ids from ranges of their own, so an id names one session in the cluster.
        self._ids = itertools.count(first_id)
        self.by_id: dict[int, Session] = {}
        self._per_address: dict[str, int] = {}
        self._thread_subscribers: dict[int, set[Session]] = {}
        self._channel_subscribers: dict[int, set[Session]] = {}
        self._channel_members: dict[int, set[Session]] = {}
        self.roster_watchers: set[Session] = set()

    def __len__(self) -> int:
        return len(self.by_id)

    def connections_from(self, host: str) -> int:
        return self._per_address.get(host, 0)

    def open(self, address: tuple, link) -> Session:
        session = Session(next(self._ids), address, link)
        self.by_id[session.id] = session
        host = address[0]
        self._per_address[host] = self._per_address.get(host, 0) + 1
        return session

    def remove(self, session: Session) -> None:
        if self.by_id.pop(session.id, None) is None:
            return
        host = session.address[0]
        remaining = self._per_address.get(host, 1) - 1
        if remaining:
            self._per_address[host] = remaining
        else:
            self._per_address.pop(host, None)
        for thread_id in session.threads:
            _discard(self._thread_subscribers, thread_id, session)
        for channel_id in session.channels:
            self._drop_channel_subscriber(channel_id, session)
        if session.joined_channel is not None:
            _discard(self._channel_members, session.joined_channel, session)
        self.roster_watchers.discard(session)
        session.threads = NO_IDS
        session.channels = NO_IDS

    # -- joined channel --

    def join(self, session: Session, channel_id: int) -> None:
        self.leave(session)
        session.joined_channel = channel_id
        self._channel_members.setdefault(channel_id, set()).add(session)

    def leave(self, session: Session) -> None:
        if session.joined_channel is not None:
            _discard(self._channel_members, session.joined_channel, session)
            session.joined_channel = None

    def channel_members(self, channel_id: int) -> set[Session]:
        """Sessions that joined the channel."""
        return self._channel_members.get(channel_id, set())

    def watch_roster(self, session: Session) -> None:
        session.watches_roster = True
        self.roster_watchers.add(session)

    def sessions_of_user(self, user_id: int) -> list[Session]:
        return [s for s in self.by_id.values() if s.user_id == user_id]

    def forget_channel(self, channel_id: int) -> None:
        """Drop every subscription to and membership of a channel that no longer exists."""
        for session in self._channel_subscribers.pop(channel_id, ()):
            _discard_id(session.channels, channel_id)
        metrics.channel_subscribers(channel_id, 0)
        for session in self._channel_members.pop(channel_id, ()):
            session.joined_channel = None

    # -- subscriptions --

    def subscribe_thread(self, session: Session, thread_id: int) -> None:
        session.threads = _added(session.threads, thread_id)
        self._thread_subscribers.setdefault(thread_id, set()).add(session)

    def unsubscribe_thread(self, session: Session, thread_id: int) -> None:
        _discard_id(session.threads, thread_id)
        _discard(self._thread_subscribers, thread_id, session)

    def subscribe_channel(self, session: Session, channel_id: int) -> None:
        session.channels = _added(session.channels, channel_id)
        subscribers = self._channel_subscribers.setdefault(channel_id, set())
        subscribers.add(session)
        metrics.channel_subscribers(channel_id, len(subscribers))

    def unsubscribe_channel(self, session: Session, channel_id: int) -> None:
        _discard_id(session.channels, channel_id)
        self._drop_channel_subscriber(channel_id, session)

    def forget_threads(self, thread_ids: Iterable[int]) -> None:
        """Drop the subscriptions of threads that no longer exist."""
        for thread_id in thread_ids:
            for session in self._thread_subscribers.pop(thread_id, ()):
                _discard_id(session.threads, thread_id)

    def _drop_channel_subscriber(self, channel_id: int, session: Session) -> None:
        metrics.channel_subscribers(channel_id, _discard(self._channel_subscribers, channel_id, session))

    # -- audiences --

    def thread_subscribers(self, thread_id: int) -> set[Session]:
        return self._thread_subscribers.get(thread_id, set())

    def thread_subscriber_counts(self) -> list[tuple[int, int]]:
        """(thread id, subscribers) of every thread that has subscribers."""
        return [(thread_id, len(subscribers)) for thread_id, subscribers in self._thread_subscribers.items()]

    def channel_subscribers(self, channel_id: int) -> set[Session]:
        return self._channel_subscribers.get(channel_id, set())

    def channel_audience(self, channel_id: int) -> set[Session]:
        """Sessions that joined or subscribed to a channel: who hears edits and deletions."""
        return self._channel_members.get(channel_id, set()) | self.channel_subscribers(channel_id)


def _added(ids: AbstractSet[int], new: int) -> set[int]:
    """A session's ids with ``new`` among them: its own set, made at its first subscription."""
    own = ids if isinstance(ids, set) else set(ids)
    own.add(new)
    return own


def _discard_id(ids: AbstractSet[int], old: int) -> None:
    if isinstance(ids, set):
        ids.discard(old)


def _discard(index: dict[int, set[Session]], key: int, session: Session) -> int:
    """Remove one member; returns how many remain."""
    members = index.get(key)
    if members is None:
        return 0
    members.discard(session)
    if not members:
        del index[key]
    return len(members)
