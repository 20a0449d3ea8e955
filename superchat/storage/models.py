"""peewee models of the tables, and the columns each row type is read from."""

import dataclasses

import peewee

from .rows import BanRow, ChannelRow, DiscoveredServerRow, MessageRow, SSHKeyRow, UserRow


class Model(peewee.Model):
    class Meta:
        # Unbound: every query names the reader or the writer explicitly.
        database = None


class Channel(Model):
    id = peewee.AutoField()
    name = peewee.TextField()
    display_name = peewee.TextField()
    description = peewee.TextField(null=True)
    channel_type = peewee.IntegerField()
    retention_hours = peewee.IntegerField()
    created_by = peewee.IntegerField(null=True)
    created_at = peewee.IntegerField()

    class Meta:
        table_name = "Channel"


class Message(Model):
    id = peewee.AutoField()
    channel_id = peewee.IntegerField()
    subchannel_id = peewee.IntegerField(null=True)
    parent_id = peewee.IntegerField(null=True)
    thread_root_id = peewee.IntegerField(null=True)
    author_user_id = peewee.IntegerField(null=True)
    author_nickname = peewee.TextField()
    content = peewee.TextField()
    created_at = peewee.IntegerField()
    edited_at = peewee.IntegerField(null=True)
    deleted_at = peewee.IntegerField(null=True)
    shadowed = peewee.BooleanField(default=False)

    class Meta:
        table_name = "Message"


class User(Model):
    id = peewee.AutoField()
    nickname = peewee.TextField()
    user_flags = peewee.IntegerField()
    password_hash = peewee.TextField()
    created_at = peewee.IntegerField()
    last_seen = peewee.IntegerField(null=True)

    class Meta:
        table_name = "User"


class SSHKey(Model):
    id = peewee.AutoField()
    user_id = peewee.IntegerField()
    fingerprint = peewee.TextField()
    public_key = peewee.TextField()
    key_type = peewee.TextField()
    label = peewee.TextField(null=True)
    added_at = peewee.IntegerField()
    last_used_at = peewee.IntegerField(null=True)

    class Meta:
        table_name = "SSHKey"


class Ban(Model):
    id = peewee.AutoField()
    ban_type = peewee.TextField()
    user_id = peewee.IntegerField(null=True)
    nickname = peewee.TextField(null=True)
    ip_cidr = peewee.TextField(null=True)
    reason = peewee.TextField()
    shadowban = peewee.BooleanField()
    banned_at = peewee.IntegerField()
    banned_until = peewee.IntegerField(null=True)
    banned_by = peewee.TextField()

    class Meta:
        table_name = "Ban"


class AdminAction(Model):
    id = peewee.AutoField()
    admin_user_id = peewee.IntegerField()
    admin_nickname = peewee.TextField()
    action = peewee.TextField()
    details = peewee.TextField()
    performed_at = peewee.IntegerField()

    class Meta:
        table_name = "AdminAction"


class ReadState(Model):
    user_id = peewee.IntegerField()
    channel_id = peewee.IntegerField()
    subchannel_key = peewee.IntegerField()
    last_read_at = peewee.IntegerField()

    class Meta:
        table_name = "ReadState"
        primary_key = peewee.CompositeKey("user_id", "channel_id", "subchannel_key")


class DiscoveredServer(Model):
    id = peewee.AutoField()
    hostname = peewee.TextField()
    port = peewee.IntegerField()
    name = peewee.TextField()
    description = peewee.TextField()
    user_count = peewee.IntegerField()
    max_users = peewee.IntegerField()
    uptime_seconds = peewee.IntegerField()
    is_public = peewee.BooleanField()
    channel_count = peewee.IntegerField()
    last_seen = peewee.IntegerField()
    source_ip = peewee.TextField()
    created_at = peewee.IntegerField()

    class Meta:
        table_name = "DiscoveredServer"


class NodeRun(Model):
    id = peewee.AutoField()
    node_id = peewee.TextField()
    started_at = peewee.IntegerField()

    class Meta:
        table_name = "node_runs"


def _row_columns(model: type[Model], row_type: type, computed: tuple[str, ...] = ()) -> tuple[peewee.Field, ...]:
    """The columns a query selects for ``row_type(*row)``, in the order of its fields. ``computed``
    fields are no columns: the query selects them itself, after these. A row type and its table
    that no longer match stop the import."""
    names = [field.name for field in dataclasses.fields(row_type) if field.name not in computed]
    if set(names) != set(model._meta.fields):
        raise TypeError(f"{row_type.__name__} does not match the columns of {model._meta.table_name}")
    return tuple(model._meta.fields[name] for name in names)


CHANNEL_COLUMNS = _row_columns(Channel, ChannelRow)
MESSAGE_COLUMNS = _row_columns(Message, MessageRow, computed=("reply_count",))
USER_COLUMNS = _row_columns(User, UserRow)
SSH_KEY_COLUMNS = _row_columns(SSHKey, SSHKeyRow)
BAN_COLUMNS = _row_columns(Ban, BanRow)
DISCOVERED_SERVER_COLUMNS = _row_columns(DiscoveredServer, DiscoveredServerRow)
