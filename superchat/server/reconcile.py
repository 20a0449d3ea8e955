"""This node's sessions brought in line with the database, away from the paths that deliver frames.

Bans, deleted accounts and deleted channels act on sessions through events (events.py), applied
at once from what the event says. The database work they call for (reading the bans again,
dropping subscriptions to threads that went with a channel) runs here, on a greenlet of its
own: a slow database delays this pass, never the next delivery. On a node of several a pass
also runs every few seconds, so an event the node missed (Redis trimmed the stream while it was
away, or it never saw it for another reason) is made good from the database: banned sessions
and sessions of deleted accounts are expelled, and deleted channels are announced.
"""

from __future__ import annotations

import logging

import gevent

from ..protocol import messages
from ..storage import StorageError, Store
from . import bans as banlist
from .bans import BanList
from .outbound import broadcast, expel
from .session import Session, SessionRegistry

log = logging.getLogger("superchat.reconcile")


class Reconciler:
    def __init__(self, store: Store, bans: BanList, sessions: SessionRegistry):
        self._store = store
        self._bans = bans
        self._sessions = sessions
        # The channels as of the last pass, by id with their names, to tell which went since.
        self._channels = {channel.id: channel.name for channel in store.list_channels()}
        # Deletions told to the clients, by their event or by a pass: neither tells them again.
        # Kept for the whole run (channel ids are never reused; deletions are rare), as an event
        # may come long after a pass found the deletion (Redis away meanwhile).
        self._announced: set[int] = set()
        self._requested = False
        self._stopped = False
        self._worker: gevent.Greenlet | None = None

    def request(self) -> None:
        """Run a pass soon; requests made while one runs are served by a single pass after it."""
        self._requested = True
        if self._worker is None and not self._stopped:
            self._worker = gevent.spawn(self._work)

    def channel_deleted(self, channel_id: int) -> bool:
        """A deletion's event, about to be told to the clients here: False when it was told
        already (by a pass that found it in the database). Subscriptions to the channel's
        threads are dropped by the next pass."""
        if channel_id in self._announced:
            return False
        self._announced.add(channel_id)
        self.request()
        return True

    def stop(self) -> None:
        """No more passes: the server is shutting down."""
        self._stopped = True
        if self._worker is not None:
            self._worker.kill()

    def _work(self) -> None:
        try:
            while self._requested:
                self._requested = False
                try:
                    self.run()
                except StorageError as exc:
                    log.error("Checking sessions against the database failed: database error: %s", exc)
                except Exception:
                    log.exception("Checking sessions against the database failed")
        finally:
            self._worker = None

    def run(self) -> None:
        """One pass: every read first (they yield), then the changes to sessions all at once."""
        sessions = self._sessions
        before = self._channels
        accounts = {s.user_id for s in sessions.by_id.values() if s.user_id is not None}
        threads = {thread_id for s in sessions.by_id.values() for thread_id in s.threads}
        self._bans.reload()
        self._store.channels_changed()
        channels = {channel.id: channel.name for channel in self._store.list_channels()}
        existing_accounts = self._store.existing_user_ids(accounts)
        existing_threads = self._store.existing_message_ids(threads)

        self._channels = channels
        for channel_id in before.keys() - channels.keys() - self._announced:
            self._announce_deletion(channel_id, before[channel_id])
        sessions.forget_threads(threads - existing_threads)
        deleted_accounts = accounts - existing_accounts
        for session in list(sessions.by_id.values()):
            if not session.finishing:
                self._enforce(session, deleted_accounts)

    def _announce_deletion(self, channel_id: int, name: str) -> None:
        log.info("Channel %s (channel_id=%d) is gone from the database", name, channel_id)
        self._announced.add(channel_id)
        self._sessions.forget_channel(channel_id)
        broadcast([s for s in self._sessions.by_id.values() if not s.finishing], messages.ChannelDeleted(
            success=True, channel_id=channel_id, message=f"Channel '{name}' deleted successfully"))

    def _enforce(self, session: Session, deleted_accounts: set[int]) -> None:
        if session.user_id in deleted_accounts:
            expel(session, "Your account has been deleted")
            return
        ip_ban = self._bans.ip_ban(session.host)
        if ip_ban is not None:
            expel(session, banlist.ip_ban_notice(ip_ban))
            return
        user_ban = self._bans.user_ban(session.user_id, session.nickname)
        if user_ban is None:
            session.shadowbanned = False
        elif user_ban.shadowban:
            session.shadowbanned = True
        else:
            expel(session, banlist.user_ban_notice(user_ban))
