"""Unread counts and stored read positions against the real server."""

import base64
import hashlib
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client

pytestmark = pytest.mark.timeout(60)


def pw(word: str) -> str:
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


@pytest.fixture
def server(start_server):
    return start_server({"limits": {"message_rate_limit": 1000}})


def post(client: Client, channel: int, content: str, parent: int | None = None) -> tuple[int, int]:
    """Post and return (message id, created_at); posts are spaced so that no two share a millisecond."""
    message_id = client.post(channel, content, parent)
    time.sleep(0.005)
    client.send(m.ListMessages(channel_id=channel, limit=200, parent_id=parent))
    for entry in client.expect(m.MessageList).messages:
        if entry.id == message_id:
            return message_id, entry.created_at
    raise AssertionError(f"message {message_id} not listed")


def unread(client: Client, targets, since: int | None) -> list[int]:
    client.send(m.GetUnreadCounts(since_timestamp=since, targets=[
        m.UnreadTarget(channel_id=c, thread_id=t) for c, t in targets]))
    reply = client.expect(m.UnreadCounts)
    assert [(c.channel_id, c.subchannel_id, c.thread_id) for c in reply.counts] == [
        (c, None, t) for c, t in targets]
    return [c.unread_count for c in reply.counts]


def test_counts_since_a_timestamp_per_channel_and_per_thread(connect):
    client = connect("counter")
    general, tech = client.channel_id("general"), client.channel_id("tech")
    root, root_at = post(client, general, "root")
    reply1, reply1_at = post(client, general, "reply 1", root)
    _, reply2_at = post(client, general, "reply 2", root)
    nested, _ = post(client, general, "nested", reply1)
    other, other_at = post(client, general, "another root")
    post(client, tech, "in tech")
    assert root_at < reply1_at < reply2_at < other_at

    both = [(general, None), (tech, None), (general, root), (general, other)]
    assert unread(client, both, 0) == [5, 1, 4, 1]
    assert unread(client, both, root_at) == [4, 1, 3, 1]
    assert unread(client, both, reply2_at) == [2, 1, 1, 1]
    assert unread(client, both, other_at) == [0, 1, 0, 0]
    assert unread(client, both, int(time.time() * 1000) + 60_000) == [0, 0, 0, 0]
    # Milliseconds, not seconds: a since in seconds would count everything.
    assert unread(client, [(general, None)], root_at // 1000) == [5]
    # Unknown targets count nothing; no targets, no counts.
    assert unread(client, [(987654, None), (general, 987654)], 0) == [0, 0]
    assert unread(client, [], 0) == []
    assert nested


def test_anonymous_sessions_must_say_since_when(connect):
    nameless = connect()
    client = connect("anonreader")
    general = client.channel_id("general")
    post(client, general, "something")
    for session in (nameless, client):
        session.send(m.GetUnreadCounts(targets=[m.UnreadTarget(channel_id=general)]))
        session.expect_error(ErrorCode.AUTH_REQUIRED)
        assert unread(session, [(general, None)], 0) == [1]
    # UPDATE_READ_STATE from an anonymous session is ignored, silently.
    client.send(m.UpdateReadState(channel_id=general, timestamp=int(time.time() * 1000)))
    client.assert_silent(0.3, skip=())
    client.send(m.GetUnreadCounts(targets=[m.UnreadTarget(channel_id=general)]))
    client.expect_error(ErrorCode.AUTH_REQUIRED)
    assert unread(client, [(general, None)], 0) == [1]


def test_registered_users_keep_their_read_position(server, connect):
    client = connect()
    client.register("reader", pw("reader"))
    general, tech = client.channel_id("general"), client.channel_id("tech")
    first, first_at = post(client, general, "first")
    post(client, general, "reply", first)
    _, third_at = post(client, general, "third")
    post(client, tech, "tech one")
    targets = [(general, None), (tech, None), (general, first)]
    # Nothing read yet: everything is unread.
    assert unread(client, targets, None) == [3, 1, 2]

    client.send(m.UpdateReadState(channel_id=general, timestamp=first_at))
    client.assert_silent(0.3, skip=())  # no answer
    assert unread(client, targets, None) == [2, 1, 1]
    client.send(m.UpdateReadState(channel_id=general, timestamp=third_at))
    client.send(m.UpdateReadState(channel_id=tech, timestamp=int(time.time() * 1000)))
    client.assert_silent(0.2, skip=())
    assert unread(client, targets, None) == [0, 0, 0]
    # An explicit since still wins over the stored position.
    assert unread(client, targets, 0) == [3, 1, 2]
    # Moving the position back works too: it is a position, not a high-water mark.
    client.send(m.UpdateReadState(channel_id=general, timestamp=0))
    assert unread(client, targets, None) == [3, 0, 2]
    client.send(m.UpdateReadState(channel_id=general, timestamp=first_at))

    # The position belongs to the account: another session, and the same account after a restart.
    other = connect()
    assert other.login("reader", pw("reader")).success
    assert unread(other, targets, None) == [2, 0, 1]
    stranger = connect()
    stranger.register("stranger", pw("stranger"))
    assert unread(stranger, targets, None) == [3, 1, 2]
    for session in (client, other, stranger):
        session.close()
    assert server.stop() == 0
    server.start()
    with Client(server.port) as again:
        again.handshake()
        assert again.login("reader", pw("reader")).success
        assert unread(again, targets, None) == [2, 0, 1]
        # After LOGOUT the session is anonymous: since is required again.
        again.send(m.Logout())
        again.send(m.GetUnreadCounts(targets=[m.UnreadTarget(channel_id=general)]))
        again.expect_error(ErrorCode.AUTH_REQUIRED)


def test_deleted_messages_are_not_counted(connect):
    client = connect()
    client.register("deleter", pw("deleter"))
    general = client.channel_id("general")
    root, _ = post(client, general, "root")
    reply, _ = post(client, general, "reply", root)
    post(client, general, "reply 2", root)
    lonely, _ = post(client, general, "lonely root")
    assert unread(client, [(general, None), (general, root)], 0) == [4, 3]
    client.send(m.DeleteMessage(message_id=reply))
    assert client.expect(m.MessageDeleted).success
    assert unread(client, [(general, None), (general, root)], 0) == [3, 2]
    client.send(m.DeleteMessage(message_id=lonely))
    assert client.expect(m.MessageDeleted).success
    assert unread(client, [(general, None), (general, lonely)], 0) == [2, 0]


def test_read_positions_for_unknown_places_are_dropped_silently(server, connect):
    client = connect()
    client.register("wanderer", pw("wanderer"))
    general = client.channel_id("general")
    _, first_at = post(client, general, "one")
    post(client, general, "two")
    client.send(m.UpdateReadState(channel_id=general, timestamp=first_at))
    client.send(m.UpdateReadState(channel_id=987654, timestamp=first_at))
    client.send(m.UpdateReadState(channel_id=general, subchannel_id=7, timestamp=first_at))
    client.assert_silent(0.3, skip=())
    assert unread(client, [(general, None), (987654, None)], None) == [1, 0]
    client.send(m.GetUnreadCounts(targets=[m.UnreadTarget(channel_id=general, subchannel_id=7)]))
    assert [c.unread_count for c in client.expect(m.UnreadCounts).counts] == [0]
    errors = server.data_dir / "errors.log"
    assert "read_state" not in (errors.read_text() if errors.exists() else "")


def test_many_targets_neither_stall_the_hub_nor_pass_the_limit(connect):
    client = connect("bulk")
    pinger = connect()
    general = client.channel_id("general")
    roots = [post(client, general, f"root {i}")[0] for i in range(3)]
    # The most a request may name: duplicates are counted once, unknown threads count nothing.
    targets = [m.UnreadTarget(channel_id=general, thread_id=roots[i % 3] if i % 2 else None) for i in range(500)]
    targets += [m.UnreadTarget(channel_id=general, thread_id=10_000 + i) for i in range(500)]
    client.send(m.GetUnreadCounts(since_timestamp=0, targets=targets))
    rtts = []
    for _ in range(200):
        sent = time.monotonic()
        pinger.send(m.Ping(timestamp=7))
        assert pinger.expect(m.Pong).client_timestamp == 7
        rtts.append(time.monotonic() - sent)
        try:
            reply = client.expect(m.UnreadCounts, timeout=0.001)
            break
        except TimeoutError:
            continue
    else:
        reply = client.expect(m.UnreadCounts, timeout=10)
    counts = [c.unread_count for c in reply.counts]
    assert counts == [1 if i % 2 else 3 for i in range(500)] + [0] * 500
    assert max(rtts) < 0.25, rtts
    # One more is refused, and so is the largest request the wire allows, at once.
    client.send(m.GetUnreadCounts(since_timestamp=0, targets=targets + targets[:1]))
    assert client.expect_error(ErrorCode.INVALID_INPUT).message == "Too many unread count targets (max 1000)"
    started = time.monotonic()
    client.send(m.GetUnreadCounts(since_timestamp=0, targets=[m.UnreadTarget(channel_id=general)] * 65535))
    client.expect_error(ErrorCode.INVALID_INPUT, timeout=10)
    pinger.send(m.Ping(timestamp=8))
    assert pinger.expect(m.Pong).client_timestamp == 8
    print(f"\n1000 targets: max PING {max(rtts) * 1000:.1f} ms over {len(rtts)} PINGs; "
          f"65535 targets refused after {(time.monotonic() - started) * 1000:.0f} ms")
