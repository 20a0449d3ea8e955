"""Writing a whole community read from an upstream database into this store, in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import peewee

from .channels import ChannelQueries
from .engine import storage_errors
from .models import AdminAction, Ban, Channel, DiscoveredServer, Message, ReadState, SSHKey, User
from .schema import unique_folded_nicknames_undone
from .upstream import Carried, UpstreamSource

ROWS_PER_INSERT = 500
# Tables whose ids are taken over as they are: every relation and the order of posting stay.
_TABLES_WITH_IDS = (Channel, User, Message, SSHKey, Ban, AdminAction, DiscoveredServer)


class TargetNotEmpty(Exception):
    """The store already holds a community; the text says what, in one line."""


class ImportQueries(ChannelQueries):
    @storage_errors()
    def import_upstream(self, source: UpstreamSource, progress: Callable[[int], None]) -> Carried:
        """Everything ``source`` holds, or nothing: one transaction. ``progress(rows)`` is told how many
        rows were read since it was last called."""
        carried = Carried()
        with self._writer.atomic():
            self._check_empty()
            # Channels only a start of scd seeded: the upstream server's own replace them.
            Channel.delete().execute(self._writer)
            alike = source.nicknames_alike()
            if alike:
                self._allow_nicknames_alike(alike, carried)
            users = self._insert(User, source.users(), carried, "accounts", progress)
            user_ids = {user["id"] for user in users}
            self._insert(SSHKey, (key for key in source.ssh_keys(carried) if key["user_id"] in user_ids),
                         carried, "SSH keys", progress)
            channels = self._insert(Channel, source.channels(carried), carried, "channels", progress)
            channel_ids = {channel["id"] for channel in channels}
            self._insert(Message, source.messages(channel_ids, carried), carried, "messages", progress, keep=False)
            self._insert(Ban, source.bans(user_ids, carried), carried, "bans", progress)
            by_name = {user["nickname"].lower(): user["id"] for user in users}
            self._insert(AdminAction, source.admin_actions(by_name), carried, "admin actions", progress)
            self._insert(ReadState, source.read_states(user_ids, channel_ids, carried), carried, "read states",
                         progress)
            self._insert(DiscoveredServer, source.discovered_servers(), carried, "discovered servers", progress)
            source.not_carried(carried)
            if self.dialect == "postgresql":
                self._continue_ids_after_imported()
        self.channels_changed()
        return carried

    def _check_empty(self) -> None:
        accounts = User.select().count(self._writer)
        messages = Message.select().count(self._writer)
        if accounts or messages:
            raise TargetNotEmpty(f"it already holds {accounts} accounts and {messages} messages: import into a "
                                 "new database (--db PATH, or an empty PostgreSQL database)")

    def _insert(self, model: type[peewee.Model], rows: Iterable[dict[str, Any]], carried: Carried, kind: str,
                progress: Callable[[int], None], keep: bool = True) -> list[dict[str, Any]]:
        """Insert in slices; returns the rows when ``keep`` (small kinds the later ones refer to)."""
        kept: list[dict[str, Any]] = []
        carried.counts[kind] += 0  # named in the summary even when there were none
        iterator: Iterator[dict[str, Any]] = iter(rows)
        while batch := list(islice(iterator, ROWS_PER_INSERT)):
            model.insert_many(batch).execute(self._writer)
            carried.counts[kind] += len(batch)
            progress(len(batch))
            if keep:
                kept.extend(batch)
        return kept

    def _allow_nicknames_alike(self, alike: list[list[str]], carried: Carried) -> None:
        """Upstream tells nicknames apart by case, this server does not: such pairs are imported under
        a plain index, which each start makes unique again once an admin has resolved them, and which
        lets no new pair be made meanwhile (see schema._fold_nicknames)."""
        for statement in unique_folded_nicknames_undone():
            self._writer.execute_sql(statement)
        for names in alike:
            carried.changed.append(f"accounts {', '.join(names)}: nicknames alike but for case, imported as they "
                                   "are; scd names them in its log at each start until all but one are renamed "
                                   "or deleted")

    def _continue_ids_after_imported(self) -> None:
        for model in _TABLES_WITH_IDS:
            table = model._meta.table_name
            self._writer.execute_sql(
                f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), MAX(id)) FROM \"{table}\" "
                "HAVING MAX(id) IS NOT NULL"
            )
