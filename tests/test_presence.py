"""Who is online and who is where: user info, rosters, SERVER_PRESENCE and CHANNEL_PRESENCE."""

import base64
import hashlib
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed

pytestmark = pytest.mark.timeout(60)


def pw(word: str) -> str:
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


def watch(client: Client) -> list:
    """Ask for the roster (which also subscribes to SERVER_PRESENCE); returns it."""
    client.send(m.ListUsers(limit=100))
    return list(client.expect(m.UserList).users)


def next_presence(client: Client, cls):
    """The next frame, which must be a ``cls`` presence notification."""
    msg = client.recv()
    assert isinstance(msg, cls), f"expected {cls.NAME}, got {msg!r}"
    return msg


def assert_nothing(client: Client, seconds: float = 0.3) -> None:
    """Not a single frame, presence included."""
    client.assert_silent(seconds, skip=())


def join(client: Client, channel_id: int) -> int:
    """Join and return this session's id, read from the CHANNEL_PRESENCE every member receives."""
    client.send(m.JoinChannel(channel_id=channel_id))
    assert client.expect(m.JoinResponse).success
    own = next_presence(client, m.ChannelPresence)
    assert (own.channel_id, own.joined) == (channel_id, True)
    return own.session_id


def user_info(client: Client, nickname: str) -> m.UserInfo:
    client.send(m.GetUserInfo(nickname=nickname))
    return client.expect(m.UserInfo)


# -- GET_USER_INFO, LIST_USERS, LIST_CHANNEL_USERS --


def test_user_info(connect):
    owner = connect()
    uid = owner.register("known", pw("known"))
    asker = connect("asker")
    assert user_info(asker, "known") == m.UserInfo(nickname="known", is_registered=True, user_id=uid, online=True)
    assert user_info(asker, "asker") == m.UserInfo(nickname="asker", is_registered=False, online=True)
    assert user_info(asker, "ghost") == m.UserInfo(nickname="ghost", is_registered=False, online=False)
    owner.close()
    # The server notices the close asynchronously; poll (bounded) until it has.
    for _ in range(50):
        info = user_info(asker, "known")
        if not info.online:
            break
        time.sleep(0.05)
    assert info == m.UserInfo(nickname="known", is_registered=True, user_id=uid, online=False)


def test_online_list_is_deduplicated_newest_first_and_limited(connect):
    registered = connect()
    uid = registered.register("member", pw("member"))
    connect("twin")
    connect("twin")
    connect()  # no nickname: not listed
    newest = connect("newest")
    users = watch(newest)
    assert users == [
        m.UserEntry(nickname="newest", is_registered=False, online=True),
        m.UserEntry(nickname="twin", is_registered=False, online=True),
        m.UserEntry(nickname="member", is_registered=True, user_id=uid, online=True),
    ]
    newest.send(m.ListUsers(limit=2))
    assert [u.nickname for u in newest.expect(m.UserList).users] == ["newest", "twin"]
    # The two-byte payload of older clients (no include_offline byte) is a plain online listing.
    newest.send_frame(m.ListUsers.TYPE, (1).to_bytes(2, "big"))
    assert [u.nickname for u in newest.expect(m.UserList).users] == ["newest"]
    # limit 0 means the default, not nothing.
    newest.send(m.ListUsers(limit=0))
    assert len(newest.expect(m.UserList).users) == 3


def test_offline_users_are_listed_for_admins_only(start_server):
    server = start_server({"server": {"admin_users": ["root"]}})
    with Client(server.port) as admin, Client(server.port) as plain, Client(server.port) as anon:
        for client in (admin, plain, anon):
            client.handshake()
        with Client(server.port) as gone:
            gone.handshake()
            gone_id = gone.register("departed", pw("departed"))
        plain_id = plain.register("plain", pw("plain"))
        admin_id = server.create_admin("root", pw("root"))
        assert admin.login("root", pw("root")).success
        anon.send(m.SetNickname(nickname="anon"))
        anon.expect(m.NicknameResponse)
        for client in (plain, anon):
            client.send(m.ListUsers(limit=10, include_offline=True))
            client.expect_error(ErrorCode.PERMISSION_DENIED)
        admin.send(m.ListUsers(limit=10, include_offline=True))
        users = admin.expect(m.UserList).users
        assert sorted(users, key=lambda u: u.nickname) == [
            m.UserEntry(nickname="departed", is_registered=True, user_id=gone_id, online=False),
            m.UserEntry(nickname="plain", is_registered=True, user_id=plain_id, online=True),
            m.UserEntry(nickname="root", is_registered=True, user_id=admin_id, online=True),
        ]
        admin.send(m.ListUsers(limit=1, include_offline=True))
        assert len(admin.expect(m.UserList).users) == 1
        # After LOGOUT the admin is an ordinary anonymous session.
        admin.send(m.Logout())
        admin.send(m.ListUsers(limit=10, include_offline=True))
        admin.expect_error(ErrorCode.PERMISSION_DENIED)


def test_channel_roster(connect):
    first = connect("first")
    general, tech = first.channel_id("general"), first.channel_id("tech")
    for channel in (0, 987654):
        first.send(m.ListChannelUsers(channel_id=channel))
        first.expect_error(ErrorCode.CHANNEL_NOT_FOUND)
    first.send(m.ListChannelUsers(channel_id=general, subchannel_id=1))
    first.expect_error(ErrorCode.SUBCHANNEL_NOT_FOUND)
    first.send(m.ListChannelUsers(channel_id=general))
    assert first.expect(m.ChannelUserList) == m.ChannelUserList(channel_id=general, users=[])

    first_id = join(first, general)
    second = connect()
    uid = second.register("second", pw("second"))
    second_id = join(second, general)
    assert next_presence(first, m.ChannelPresence).session_id == second_id
    elsewhere = connect("elsewhere")
    join(elsewhere, tech)
    connect("subscriber").subscribe_channel(general)  # subscribing is not joining

    elsewhere.send(m.ListChannelUsers(channel_id=general))
    roster = elsewhere.expect(m.ChannelUserList)
    assert roster == m.ChannelUserList(channel_id=general, users=[
        m.ChannelUserEntry(session_id=first_id, nickname="first", is_registered=False, user_flags=0),
        m.ChannelUserEntry(session_id=second_id, nickname="second", is_registered=True, user_id=uid, user_flags=0),
    ])
    assert first_id != second_id
    first.send(m.LeaveChannel(channel_id=general))
    first.expect(m.LeaveResponse)
    elsewhere.send(m.ListChannelUsers(channel_id=general))
    assert [u.nickname for u in elsewhere.expect(m.ChannelUserList).users] == ["second"]


# -- SERVER_PRESENCE --


def test_server_presence_goes_only_to_roster_watchers(connect):
    connect().register("member", pw("member"))  # an account to log in to later (its session stays)
    quiet = connect("quiet")  # never asks for the roster
    watcher = connect("watcher")
    assert [u.nickname for u in watch(watcher)] == ["watcher", "quiet", "member"]

    newcomer = connect("newcomer")
    arrived = next_presence(watcher, m.ServerPresence)
    assert (arrived.nickname, arrived.is_registered, arrived.user_id, arrived.user_flags, arrived.online) == (
        "newcomer", False, None, 0, True)
    session_id = arrived.session_id

    newcomer.send(m.SetNickname(nickname="renamed"))
    newcomer.expect(m.NicknameResponse)
    renamed = next_presence(watcher, m.ServerPresence)
    assert (renamed.session_id, renamed.nickname, renamed.online) == (session_id, "renamed", True)

    reply = newcomer.login("member", pw("member"))
    assert reply.success
    login = next_presence(watcher, m.ServerPresence)
    assert (login.session_id, login.nickname, login.is_registered, login.user_id, login.online) == (
        session_id, "member", True, reply.user_id, True)

    newcomer.send(m.Logout())
    logout = next_presence(watcher, m.ServerPresence)
    assert (logout.session_id, logout.nickname, logout.is_registered, logout.user_id, logout.online) == (
        session_id, "member", False, None, True)

    newcomer.close()
    left = next_presence(watcher, m.ServerPresence)
    assert (left.session_id, left.nickname, left.online) == (session_id, "member", False)

    # A session without a nickname comes and goes unannounced.
    connect().close()
    assert_nothing(watcher)
    assert_nothing(quiet)


def test_registration_is_announced_and_a_watcher_stops_with_its_session(connect):
    watcher = connect("watcher")
    watch(watcher)
    registrant = connect("registrant")
    session_id = next_presence(watcher, m.ServerPresence).session_id
    registrant.send(m.RegisterUser(password=pw("registrant")))
    uid = registrant.expect(m.RegisterResponse).user_id
    registered = next_presence(watcher, m.ServerPresence)
    assert (registered.session_id, registered.is_registered, registered.user_id, registered.online) == (
        session_id, True, uid, True)
    # The watcher's own departure is not sent to anyone else who never asked.
    quiet = connect("quiet2")
    next_presence(watcher, m.ServerPresence)
    watcher.close()
    assert_nothing(quiet)
    assert_nothing(registrant)


# -- CHANNEL_PRESENCE --


def test_channel_presence_on_join_leave_switch_and_disconnect(connect):
    member = connect("member")
    general, tech = member.channel_id("general"), member.channel_id("tech")
    member_id = join(member, general)
    subscriber = connect("subscriber")
    subscriber.subscribe_channel(general)
    tech_subscriber = connect("techie")
    tech_subscriber.subscribe_channel(tech)
    outsider = connect("outsider")

    mover = connect("mover")
    mover_id = join(mover, general)
    for audience in (member, subscriber):
        seen = next_presence(audience, m.ChannelPresence)
        assert seen == m.ChannelPresence(channel_id=general, session_id=mover_id, nickname="mover",
                                         is_registered=False, user_flags=0, joined=True)
    assert mover_id != member_id

    # Switching channel: a leave for the old one, a join for the new one.
    mover.send(m.JoinChannel(channel_id=tech))
    # The mover hears itself leave, then the answer, then itself join.
    frames = [mover.recv() for _ in range(3)]
    assert [type(f) for f in frames] == [m.ChannelPresence, m.JoinResponse, m.ChannelPresence], frames
    assert [(f.channel_id, f.joined) for f in (frames[0], frames[2])] == [(general, False), (tech, True)]
    assert frames[1].success and frames[1].channel_id == tech
    for audience in (member, subscriber):
        seen = next_presence(audience, m.ChannelPresence)
        assert (seen.channel_id, seen.session_id, seen.joined) == (general, mover_id, False)
    seen = next_presence(tech_subscriber, m.ChannelPresence)
    assert (seen.channel_id, seen.session_id, seen.joined) == (tech, mover_id, True)

    # A nickname change while joined re-announces the member.
    mover.send(m.SetNickname(nickname="moved"))
    mover.expect(m.NicknameResponse)
    seen = next_presence(tech_subscriber, m.ChannelPresence)
    assert (seen.channel_id, seen.nickname, seen.joined) == (tech, "moved", True)
    next_presence(mover, m.ChannelPresence)

    # LEAVE: the channel's audience and the leaver hear joined=false.
    mover.send(m.LeaveChannel(channel_id=tech))
    mover.expect(m.LeaveResponse)
    for audience in (tech_subscriber, mover):
        seen = next_presence(audience, m.ChannelPresence)
        assert (seen.channel_id, seen.session_id, seen.nickname, seen.joined) == (tech, mover_id, "moved", False)

    # Disconnecting while joined.
    mover_id = join(mover, general)
    for audience in (member, subscriber):
        assert next_presence(audience, m.ChannelPresence).joined is True
    mover.close()
    for audience in (member, subscriber):
        seen = next_presence(audience, m.ChannelPresence)
        assert (seen.channel_id, seen.session_id, seen.joined) == (general, mover_id, False)

    # The outsider never joined, subscribed or watched the roster: not one presence frame.
    for client in (outsider, member, subscriber, tech_subscriber):
        assert_nothing(client, 0.2)


def test_nameless_sessions_join_silently_until_named(connect):
    member = connect("member")
    general = member.channel_id("general")
    join(member, general)
    nameless = connect()
    nameless.send(m.JoinChannel(channel_id=general))
    assert nameless.expect(m.JoinResponse).success
    assert_nothing(member)
    nameless.send(m.SetNickname(nickname="named"))
    nameless.expect(m.NicknameResponse)
    seen = next_presence(member, m.ChannelPresence)
    assert (seen.channel_id, seen.nickname, seen.joined) == (general, "named", True)


def test_disconnect_is_not_answered_with_the_sessions_own_presence(connect):
    member = connect("member")
    general = member.channel_id("general")
    join(member, general)
    leaver = connect("leaver")
    watch(leaver)
    leaver_id = join(leaver, general)
    assert next_presence(member, m.ChannelPresence).session_id == leaver_id
    leaver.send(m.Disconnect(reason="bye"))
    # DISCONNECT is answered by closing the socket, nothing else: not even the leaver's own departure.
    frames = []
    with pytest.raises(ConnectionClosed):
        for _ in range(10):
            frames.append(leaver.recv())
    assert frames == []
    seen = next_presence(member, m.ChannelPresence)
    assert (seen.session_id, seen.joined) == (leaver_id, False)
