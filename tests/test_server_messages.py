"""Channels, messages, subscriptions and live delivery against the real server."""

import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m

pytestmark = pytest.mark.timeout(60)


def test_server_config_is_the_first_frame_and_reflects_the_configuration(start_server):
    server = start_server({"limits": {"message_rate_limit": 42, "max_message_length": 1000,
                                      "max_thread_subscriptions": 7, "max_channel_subscriptions": 3}})
    from tests.client import Client

    with Client(server.port) as client:
        config = client.recv()
        assert config == m.ServerConfig(
            protocol_version=1, max_message_rate=42, max_channel_creates=5, inactive_cleanup_days=90,
            max_connections_per_ip=10, max_message_length=1000, max_thread_subscriptions=7,
            max_channel_subscriptions=3, directory_enabled=True,
        )


def test_ping_is_answered_with_the_clients_timestamp(connect):
    client = connect()
    client.send(m.Ping(timestamp=-12345678901))
    assert client.expect(m.Pong).client_timestamp == -12345678901


def test_channel_list_is_sorted_by_name_and_pages_by_id(connect):
    client = connect("lister")
    client.send(m.ListChannels(from_channel_id=0, limit=0))
    channels = client.expect(m.ChannelList).channels
    names = [c.name for c in channels]
    assert names == sorted(names)
    assert set(names) == {"chat", "general", "tech", "random", "feedback"}
    chat = next(c for c in channels if c.name == "chat")
    assert (chat.type, chat.retention_hours) == (0, 24)
    general = next(c for c in channels if c.name == "general")
    assert (general.type, general.retention_hours, general.description) == (1, 168, "General discussion")

    client.send(m.ListChannels(from_channel_id=general.id, limit=0))
    later = client.expect(m.ChannelList).channels
    assert later and all(c.id > general.id for c in later)
    client.send(m.ListChannels(from_channel_id=0, limit=2))
    assert len(client.expect(m.ChannelList).channels) == 2


def test_channel_user_count_counts_channel_subscribers(connect):
    watcher, other = connect("watcher"), connect("other")
    general = watcher.channel_id("general")
    watcher.subscribe_channel(general)
    other.send(m.JoinChannel(channel_id=general))
    other.expect(m.JoinResponse)
    other.send(m.ListChannels(from_channel_id=0, limit=0))
    counts = {c.name: c.user_count for c in other.expect(m.ChannelList).channels}
    assert counts["general"] == 1 and counts["tech"] == 0


def test_join_and_leave(connect):
    client = connect("joiner")
    general = client.channel_id("general")
    client.send(m.JoinChannel(channel_id=999999))
    assert client.expect(m.JoinResponse) == m.JoinResponse(
        success=False, channel_id=999999, message="Channel not found")
    client.send(m.LeaveChannel(channel_id=general))
    assert not client.expect(m.LeaveResponse).success
    client.send(m.JoinChannel(channel_id=general))
    assert client.expect(m.JoinResponse) == m.JoinResponse(
        success=True, channel_id=general, message="Joined channel")
    client.send(m.LeaveChannel(channel_id=general + 100))
    assert client.expect(m.LeaveResponse).message == "Session is not joined to the requested channel"
    client.send_frame(m.LeaveChannel.TYPE, b"")  # an empty LEAVE means "whatever I joined"
    assert client.expect(m.LeaveResponse) == m.LeaveResponse(success=True, channel_id=general, message="Left channel")


def test_anonymous_sessions_cannot_create_channels(connect):
    client = connect("anon")
    client.send(m.CreateChannel(name="newchan", display_name="#newchan", channel_type=1, retention_hours=24))
    reply = client.expect(m.ChannelCreated)
    assert not reply.success and "registered" in reply.message
    client.send(m.ListChannels(from_channel_id=0, limit=0))
    assert "newchan" not in {c.name for c in client.expect(m.ChannelList).channels}


def test_a_taken_channel_name_is_refused_with_no_traceback_on_the_console(server, connect):
    client = connect()
    client.register("founder", "h" * 43)
    for created in (True, False):
        client.send(m.CreateChannel(name="taken", display_name="#taken", channel_type=1, retention_hours=24))
        assert client.expect(m.ChannelCreated).success is created
    # The name was found taken on SQLite's writer thread, whose failures must not reach standard
    # error (the journal) as tracebacks.
    assert server.stop() == 0
    deadline = time.monotonic() + 5
    while not any("Graceful shutdown complete" in line for line in server.output):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not any("Traceback" in line for line in server.output), server.output


def test_post_refusals(connect):
    nameless = connect()
    chat = nameless.channel_id("chat")
    nameless.send(m.PostMessage(channel_id=chat, content="hi"))
    nameless.expect_error(ErrorCode.AUTH_REQUIRED)

    client = connect("poster")
    client.send(m.PostMessage(channel_id=chat, content=""))
    client.expect_error(ErrorCode.INVALID_FORMAT)
    client.send(m.PostMessage(channel_id=chat, content="x" * 4097))
    client.expect_error(ErrorCode.MESSAGE_TOO_LONG)
    client.send(m.PostMessage(channel_id=987654, content="hello"))
    client.expect_error(ErrorCode.DATABASE_ERROR)
    root = client.post(chat, "a chat line")
    client.send(m.PostMessage(channel_id=chat, parent_id=root, content="threaded?"))
    client.expect_error(ErrorCode.INVALID_INPUT)
    general = client.channel_id("general")
    client.send(m.PostMessage(channel_id=general, parent_id=424242, content="orphan"))
    client.expect_error(ErrorCode.DATABASE_ERROR)
    client.send(m.PostMessage(channel_id=general, subchannel_id=5, content="sub"))
    client.expect_error(ErrorCode.SUBCHANNEL_NOT_FOUND)
    # None of the refused posts were stored.
    client.send(m.ListMessages(channel_id=chat, limit=50))
    assert [e.content for e in client.expect(m.MessageList).messages] == ["a chat line"]


def test_message_length_limit_counts_bytes(start_server):
    server = start_server({"limits": {"max_message_length": 10}})
    from tests.client import Client

    with Client(server.port) as client:
        client.handshake("bytes")
        chat = client.channel_id("chat")
        client.post(chat, "é" * 5)  # 10 bytes
        client.send(m.PostMessage(channel_id=chat, content="é" * 5 + "x"))
        client.expect_error(ErrorCode.MESSAGE_TOO_LONG)


def test_root_posts_reach_channel_subscribers_only(connect):
    author, subscriber, joiner, bystander = connect("author"), connect("sub"), connect("joiner"), connect("bystander")
    general = author.channel_id("general")
    subscriber.subscribe_channel(general)
    joiner.send(m.JoinChannel(channel_id=general))
    joiner.expect(m.JoinResponse)

    message_id = author.post(general, "hello world")
    delivered = subscriber.expect(m.NewMessage)
    assert delivered.id == message_id
    assert delivered.content == "hello world"
    assert delivered.author_nickname == "~author"
    assert delivered.author_user_id is None and delivered.parent_id is None
    joiner.assert_silent()
    bystander.assert_silent()
    author.assert_silent()


def test_replies_at_any_depth_reach_thread_subscribers_of_the_root(connect):
    author, follower, channel_only = connect("author"), connect("follower"), connect("chanonly")
    general = author.channel_id("general")
    channel_only.subscribe_channel(general)
    root = author.post(general, "root")
    channel_only.expect(m.NewMessage)
    follower.subscribe_thread(root)

    reply = author.post(general, "reply", parent_id=root)
    nested = author.post(general, "nested", parent_id=reply)
    first, second = follower.expect(m.NewMessage), follower.expect(m.NewMessage)
    assert (first.id, first.parent_id) == (reply, root)
    assert (second.id, second.parent_id, second.content) == (nested, reply, "nested")
    channel_only.assert_silent()

    follower.send(m.UnsubscribeThread(thread_id=root))
    assert follower.expect(m.SubscribeOk) == m.SubscribeOk(type=1, id=root)
    author.post(general, "unheard", parent_id=root)
    follower.assert_silent()


def test_unsubscribe_channel_stops_delivery(connect):
    author, subscriber = connect("author"), connect("sub")
    tech = author.channel_id("tech")
    subscriber.subscribe_channel(tech)
    subscriber.send(m.UnsubscribeChannel(channel_id=tech))
    assert subscriber.expect(m.SubscribeOk) == m.SubscribeOk(type=2, id=tech)
    author.post(tech, "nobody listens")
    subscriber.assert_silent()


def test_listing_roots_and_threads(connect):
    client = connect("lister")
    general = client.channel_id("general")
    roots = [client.post(general, f"root {i}") for i in range(5)]
    a = client.post(general, "a", parent_id=roots[0])
    a1 = client.post(general, "a1", parent_id=a)
    b = client.post(general, "b", parent_id=roots[0])
    a2 = client.post(general, "a2", parent_id=a)
    client.post(general, "other thread", parent_id=roots[1])

    client.send(m.ListMessages(channel_id=general, limit=50))
    listing = client.expect(m.MessageList)
    assert (listing.channel_id, listing.parent_id) == (general, None)
    assert [e.id for e in listing.messages] == roots
    assert [e.reply_count for e in listing.messages] == [2, 1, 0, 0, 0]

    client.send(m.ListMessages(channel_id=general, limit=2))
    assert [e.id for e in client.expect(m.MessageList).messages] == roots[3:]
    client.send(m.ListMessages(channel_id=general, limit=2, before_id=roots[3]))
    assert [e.id for e in client.expect(m.MessageList).messages] == roots[1:3]
    client.send(m.ListMessages(channel_id=general, limit=2, after_id=roots[1]))
    assert [e.id for e in client.expect(m.MessageList).messages] == roots[2:4]

    client.send(m.ListMessages(channel_id=general, limit=50, parent_id=roots[0]))
    thread = client.expect(m.MessageList)
    assert thread.parent_id == roots[0]
    assert [e.id for e in thread.messages] == [a, a1, a2, b]  # depth first, children in posting order
    assert all(e.reply_count == 0 for e in thread.messages)
    client.send(m.ListMessages(channel_id=general, limit=2, parent_id=roots[0]))
    assert [e.id for e in client.expect(m.MessageList).messages] == [a, a1]
    client.send(m.ListMessages(channel_id=general, limit=50, parent_id=roots[0], after_id=a1))
    assert [e.id for e in client.expect(m.MessageList).messages] == [a2, b]


def test_delete_rules_and_broadcast(connect):
    author, other, watcher, nameless = connect("author"), connect("other"), connect("watcher"), connect()
    general = author.channel_id("general")
    watcher.send(m.JoinChannel(channel_id=general))
    watcher.expect(m.JoinResponse)
    root = author.post(general, "to be deleted")
    keep = author.post(general, "keeper")

    nameless.send(m.DeleteMessage(message_id=root))
    nameless.expect_error(ErrorCode.NICKNAME_REQUIRED)
    other.send(m.DeleteMessage(message_id=root))
    other.expect_error(ErrorCode.PERMISSION_DENIED)
    other.send(m.DeleteMessage(message_id=999999))
    other.expect_error(ErrorCode.DATABASE_ERROR)

    author.send(m.DeleteMessage(message_id=root))
    deleted = author.expect(m.MessageDeleted)
    assert (deleted.success, deleted.message_id, deleted.message) == (True, root, "to be deleted")
    assert deleted.deleted_at > 0
    assert watcher.expect(m.MessageDeleted) == deleted  # joined sessions hear deletions
    other.assert_silent()

    author.send(m.DeleteMessage(message_id=root))
    author.expect_error(ErrorCode.DATABASE_ERROR)
    author.send(m.ListMessages(channel_id=general, limit=50))
    assert [e.id for e in author.expect(m.MessageList).messages] == [keep]


def test_deleted_replies_leave_the_reply_count(connect):
    client = connect("counter")
    general = client.channel_id("general")
    root = client.post(general, "root")
    reply = client.post(general, "reply", parent_id=root)
    client.post(general, "reply 2", parent_id=root)
    client.send(m.DeleteMessage(message_id=reply))
    client.expect(m.MessageDeleted)
    client.send(m.ListMessages(channel_id=general, limit=5))
    assert client.expect(m.MessageList).messages[0].reply_count == 1


def test_editing_requires_a_registered_session(connect):
    client = connect("editor")
    general = client.channel_id("general")
    message_id = client.post(general, "original")
    client.send(m.EditMessage(message_id=message_id, new_content="changed"))
    client.expect_error(ErrorCode.AUTH_REQUIRED)


def test_subscription_refusals_and_limits(start_server):
    server = start_server({"limits": {"max_thread_subscriptions": 2, "max_channel_subscriptions": 2}})
    from tests.client import Client

    with Client(server.port) as client:
        client.handshake("limited")
        client.send(m.SubscribeThread(thread_id=31337))
        client.expect_error(ErrorCode.THREAD_NOT_FOUND)
        client.send(m.SubscribeChannel(channel_id=31337))
        client.expect_error(ErrorCode.CHANNEL_NOT_FOUND)
        general = client.channel_id("general")
        client.send(m.SubscribeChannel(channel_id=general, subchannel_id=1))
        client.expect_error(ErrorCode.SUBCHANNEL_NOT_FOUND)

        threads = [client.post(general, f"t{i}") for i in range(3)]
        client.subscribe_thread(threads[0])
        client.subscribe_thread(threads[1])
        client.subscribe_thread(threads[1])  # again: not counted twice
        client.send(m.SubscribeThread(thread_id=threads[2]))
        client.expect_error(ErrorCode.THREAD_SUBSCRIPTION_LIMIT)

        client.subscribe_channel(client.channel_id("tech"))
        client.subscribe_channel(client.channel_id("random"))
        client.send(m.SubscribeChannel(channel_id=client.channel_id("feedback")))
        client.expect_error(ErrorCode.CHANNEL_SUBSCRIPTION_LIMIT)
        client.send(m.UnsubscribeChannel(channel_id=client.channel_id("tech")))
        client.expect(m.SubscribeOk)
        client.subscribe_channel(client.channel_id("feedback"))
