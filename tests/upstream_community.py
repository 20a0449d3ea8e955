"""A community as an upstream server holds it after some days of use, with every kind of row,
and a record of what went in for the tests to compare with (import it from tests.upstream_db)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests import upstream_db as up

HOUR = 3_600_000
DAY = 24 * HOUR
ADMIN = "warden"


@dataclass
class Account:
    role: str
    id: int
    nickname: str  # User.nickname: the name shown for every post of the account
    client_hash: str | None  # None: SSH-only, password NULL
    password_hash: str | None
    flags: int
    created_at: int
    last_seen: int
    posted_as: list[str] = field(default_factory=list)  # Message.author_nickname of its posts


@dataclass
class Post:
    id: int
    channel_id: int
    parent_id: int | None
    thread_root_id: int
    author_user_id: int | None
    author_nickname: str
    content: str
    created_at: int
    edited_at: int | None = None
    deleted_at: int | None = None
    shadowed: bool = False


@dataclass
class Key:
    id: int
    fingerprint: str
    label: str | None
    public_key: str


@dataclass
class Community:
    now: int
    admin: str = ADMIN
    accounts: dict[str, Account] = field(default_factory=dict)
    channels: dict[str, dict] = field(default_factory=dict)  # name -> the Channel row's fields
    ssh_keys: dict[str, list[Key]] = field(default_factory=dict)  # role -> keys
    posts: dict[str, list[int]] = field(default_factory=dict)  # role, or ~nickname for anonymous posts
    messages_by_id: dict[int, Post] = field(default_factory=dict)
    deep_thread: list[int] = field(default_factory=list)  # root first, each replying to the one before
    deleted_roots: dict[int, list[int]] = field(default_factory=dict)  # root -> its live replies
    deleted_replies: dict[int, list[int]] = field(default_factory=dict)  # reply -> its live replies
    edited: list[int] = field(default_factory=list)
    message_versions: int = 0
    anonymous: list[str] = field(default_factory=list)
    renamed: str = "alice"  # the role whose account was renamed after posting
    bans: dict[str, dict] = field(default_factory=dict)  # kind -> the Ban row's fields, with its id
    lifted_ban: int = 0  # the id of a ban lifted (its row deleted, as upstream's unban does)
    shadowban_before: list[int] = field(default_factory=list)
    shadowban_after: list[int] = field(default_factory=list)
    admin_actions: list[dict] = field(default_factory=list)
    read_states: list[tuple[int, int, int, int]] = field(default_factory=list)  # user, channel, subchannel, ms
    discovered_servers: list[dict] = field(default_factory=list)
    sessions: int = 0
    ssh_only: list[str] = field(default_factory=list)

    def account(self, role: str) -> Account:
        return self.accounts[role]

    def shown_name(self, post: Post) -> str:
        """The name a server shows for a post: the account's current nickname, else the name posted as."""
        for account in self.accounts.values():
            if post.author_user_id == account.id:
                return account.nickname
        return post.author_nickname

    def children(self, message_id: int) -> list[Post]:
        return sorted((p for p in self.messages_by_id.values() if p.parent_id == message_id), key=lambda p: p.id)

    def depth(self, message_id: int) -> int:
        post, depth = self.messages_by_id[message_id], 0
        while post.parent_id is not None:
            post, depth = self.messages_by_id[post.parent_id], depth + 1
        return depth


def fill_community(db: up.UpstreamDatabase, now: int | None = None) -> Community:
    """Accounts, keys, channels, threads, bans, audit trail, read state and a directory, all times
    within the last two days of ``now`` (so that no retention removes them) but one kept by its
    channel's 30-day retention."""
    now = up.now_ms() if now is None else now
    base = now - 47 * HOUR
    c = Community(now=now)

    def account(role: str, nickname: str, *, password: bool = True, created: int, seen: int) -> Account:
        secret = up.client_hash(role) if password else None
        user_id = db.add_user(nickname, secret, created_at=created, last_seen=seen)
        (stored,) = db.db.execute("SELECT password_hash FROM User WHERE id = ?", (user_id,)).fetchone()
        c.accounts[role] = Account(role, user_id, nickname, secret, stored, 0, created, seen)
        if not password:
            c.ssh_only.append(role)
        return c.accounts[role]

    for number, role in enumerate(("warden", "alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry")):
        account(role, role, password=role not in ("frank", "henry"), created=now - (40 - number) * DAY,
                seen=now - (number + 1) * HOUR)

    def key(role: str, label: str | None, line: str, added: int, used: int | None = None) -> None:
        key_id = db.add_ssh_key(c.accounts[role].id, line, label=label, added_at=added, last_used_at=used)
        c.ssh_keys.setdefault(role, []).append(Key(key_id, up.ssh_fingerprint(line), label, line))

    # An SSH sign-up stores the key as Go marshals it: no comment, a newline at the end.
    key("frank", "Auto-registered", up.ed25519_public_key() + "\n", now - 34 * DAY, now - 7 * HOUR)
    key("grace", "laptop", up.ed25519_public_key("grace@laptop"), now - 30 * DAY, now - 8 * HOUR)
    key("grace", None, up.ed25519_public_key("grace@work"), now - 20 * DAY)

    # Two restarts: each moves the Channel id counter on by five.
    db.restart(at=now - 10 * DAY - HOUR)
    alice, grace = c.accounts["alice"].id, c.accounts["grace"].id
    db.add_channel("bakery", "#bakery", "Bread, cakes and starters", channel_type=1, retention_hours=72,
                   created_by=alice, created_at=now - 10 * DAY)
    db.restart(at=now - 10 * DAY + HOUR)
    db.add_channel("lounge", ">lounge", None, channel_type=0, retention_hours=720, created_by=grace,
                   created_at=now - 10 * DAY + 2 * HOUR)
    for row in db.db.execute("SELECT id, name, display_name, description, channel_type, message_retention_hours,"
                             " created_by FROM Channel ORDER BY id"):
        c.channels[row[1]] = dict(zip(("id", "name", "display_name", "description", "channel_type",
                                       "retention_hours", "created_by"), row, strict=True))

    def post(who: str, channel: str, content: str, at: int, parent: int | None = None) -> int:
        """``who``: a role (posting under the account's nickname of the time) or ~nickname (anonymous)."""
        if who.startswith("~"):
            user_id, name = None, who[1:]
            if name not in c.anonymous:
                c.anonymous.append(name)
        else:
            user_id, name = c.accounts[who].id, c.accounts[who].nickname
            if name not in c.accounts[who].posted_as:
                c.accounts[who].posted_as.append(name)
        message_id = db.add_message(channel, name, content, parent=parent, author_user_id=user_id, at=at)
        root = message_id if parent is None else c.messages_by_id[parent].thread_root_id
        c.messages_by_id[message_id] = Post(message_id, db.channels[channel], parent, root, user_id, name, content, at)
        c.posts.setdefault(who, []).append(message_id)
        return message_id

    def edit(message_id: int, content: str, at: int) -> None:
        message = c.messages_by_id[message_id]
        for version_type, stamp in (("created", message.created_at), ("edited", at)):
            db.add_message_version(message_id, message.content, message.author_nickname, version_type, stamp)
            c.message_versions += 1
        db.edit_message(message_id, content, at)
        message.content, message.edited_at = content, at
        c.edited.append(message_id)

    def delete(message_id: int, at: int) -> None:
        db.delete_message(message_id, at)
        c.messages_by_id[message_id].deleted_at = at

    # A deep thread: seven posts, each answering the one before (depth 6), by accounts and guests.
    parent = None
    for step, who in enumerate(("alice", "~guest42", "grace", "erin", "bob", "~frank", "carol")):
        parent = post(who, "general", f"deep thread, depth {step}", base + (step + 1) * HOUR, parent)
        c.deep_thread.append(parent)
    root = c.deep_thread[0]
    edit(root, "deep thread, depth 0 (edited: with the sources)", base + 8 * HOUR)
    edit(c.deep_thread[2], "deep thread, depth 2 (edited)", base + 9 * HOUR)
    # A reply deleted after it was answered: the answer stays.
    gone = post("grace", "general", "a hasty reply", base + 9 * HOUR + 30 * 60_000, root)
    kept = post("erin", "general", "an answer to the hasty reply", base + 9 * HOUR + 40 * 60_000, gone)
    delete(gone, base + 10 * HOUR)
    c.deleted_replies[gone] = [kept]

    # Bob posts, then is shadowbanned: what he posts from banned_at on is seen by him alone.
    c.shadowban_before.append(post("bob", "general", "bob, before the shadowban", base + 11 * HOUR))
    banned_at = base + 20 * HOUR
    c.shadowban_after.append(post("bob", "general", "bob, shadowbanned", base + 22 * HOUR))
    c.shadowban_after.append(post("bob", "general", "bob answers, shadowbanned", base + 23 * HOUR, root))
    for message_id in c.shadowban_after:
        c.messages_by_id[message_id].shadowed = True

    # A deleted root whose replies live on, in two channels.
    for channel, author, repliers, start in (("tech", "grace", ("alice", "~guest42"), 13),
                                             ("random", "~lurker", ("erin",), 16)):
        gone = post(author, channel, f"a root in {channel}, deleted later", base + start * HOUR)
        c.deleted_roots[gone] = [post(who, channel, f"a reply in {channel} by {who}",
                                      base + start * HOUR + (n + 1) * 10 * 60_000, gone)
                                 for n, who in enumerate(repliers)]
        delete(gone, base + (start + 2) * HOUR)

    post("carol", "random", "carol, before her ban", base + 5 * HOUR)
    post("alice", "bakery", "sourdough at 78% hydration", base + 18 * HOUR)
    post("grace", "bakery", "try 72% first", base + 19 * HOUR, c.posts["alice"][-1])
    post("~guest42", "chat", "anyone around?", now - 5 * HOUR)
    post("erin", "chat", "here", now - 4 * HOUR)
    post("grace", "lounge", "kept by the lounge's 30 days", now - 9 * DAY)
    post("dave", "lounge", "dave, before his ban", now - 3 * HOUR - 30 * 60_000)

    # Alice renames herself after posting: her posts keep author_nickname alice.
    db.rename_user(alice, "alicia")
    c.accounts["alice"].nickname = "alicia"

    def ban(kind: str, ban_type: str, at: int, until: int | None = None, **fields) -> None:
        ban_id = db.add_ban(ban_type, banned_at=at, banned_until=until, banned_by=ADMIN, **fields)
        c.bans[kind] = dict(id=ban_id, ban_type=ban_type, banned_at=at, banned_until=until, banned_by=ADMIN,
                            **{"user_id": None, "nickname": None, "ip_cidr": None, "reason": "",
                               "shadowban": False, **fields})
        target = fields.get("ip_cidr") or fields.get("nickname") or ""
        action = dict(admin_nickname=ADMIN, action_type=f"ban_{ban_type}", target_type=ban_type, target_id=ban_id,
                      target_identifier=target, details=fields.get("reason", ""), performed_at=at,
                      ip_address="198.51.100.7")
        db.add_admin_action(**action)
        c.admin_actions.append(action)

    def user(role: str) -> dict:
        return {"user_id": c.accounts[role].id, "nickname": c.accounts[role].nickname}

    ban("expired", "user", base, base + HOUR, reason="cool down", **user("erin"))
    ban("lifted", "user", base + 2 * HOUR, reason="troll", nickname="mallory")
    ban("shadow", "user", banned_at, reason="spam", shadowban=True, **user("bob"))
    ban("timed", "user", now - HOUR, now + 2 * DAY, reason="flame war", **user("carol"))
    ban("permanent", "user", now - 3 * HOUR, reason="abuse", **user("dave"))
    ban("nickname", "user", now - 2 * HOUR, reason="ads", nickname="spammer")
    ban("ip", "ip", now - 2 * HOUR, ip_cidr="127.0.0.2/32", reason="flooding")
    ban("cidr", "ip", now - 90 * 60_000, now + DAY, ip_cidr="127.0.1.0/24", reason="botnet")
    ban("expired_ip", "ip", base, base + 2 * HOUR, ip_cidr="127.0.0.4/32", reason="mistake")
    c.lifted_ban = c.bans.pop("lifted")["id"]
    db.lift_ban(c.lifted_ban)
    unban = dict(admin_nickname=ADMIN, action_type="unban_user", target_type="user", target_id=None,
                 target_identifier="mallory", details="", performed_at=base + 3 * HOUR, ip_address="198.51.100.7")
    db.add_admin_action(**unban)
    c.admin_actions.append(unban)

    for role, channel, last_read in (("grace", "general", c.messages_by_id[c.deep_thread[3]].created_at),
                                     ("alice", "bakery", now - HOUR), ("erin", "random", 0)):
        user_id, channel_id = c.accounts[role].id, db.channels[channel]
        db.set_read_state(user_id, channel_id, last_read, updated_at=(now - HOUR) // 1000)
        c.read_states.append((user_id, channel_id, 0, last_read))

    for fields in (dict(hostname="chat.example.org", port=6465, name="Example", description="An example server",
                        max_users=100, user_count=12, uptime_seconds=3600, last_heartbeat=now - 60_000,
                        discovered_via="registration", source_ip="203.0.113.5:40122", created_at=now - 3 * DAY,
                        channel_count=5),
                   dict(hostname="gossip.example.net", port=7000, name="Gossip", description="heard of",
                        discovered_via="gossip", created_at=now - DAY, last_heartbeat=now - DAY)):
        fields["id"] = db.add_discovered_server(**fields)
        c.discovered_servers.append(fields)

    # A connection's row, as a server that was killed leaves it.
    db.add_session("erin", user_id=c.accounts["erin"].id, connected_at=now - 30 * 60_000)
    c.sessions = 1
    return c


def big_community(db: up.UpstreamDatabase, messages: int, size: int) -> None:
    """A community, and a channel of ``messages`` posts of ``size`` characters after it."""
    community = fill_community(db)
    start = max(p.created_at for p in community.messages_by_id.values()) + 1
    db.db.execute("BEGIN")
    for n in range(messages):
        db.add_message("feedback", "guest", f"{n:06} " + "x" * size, at=start + n)
    db.db.execute("COMMIT")
