"""The servers a directory lists."""

from superchat.storage import DiscoveredServerRow, Store


def register_server(store: Store, hostname: str, port: int, now_ms: int, name: str = "Listed", **fields):
    values = {"description": "A server", "max_users": 0, "is_public": True, "channel_count": 3,
              "source_ip": "192.0.2.1", **fields}
    store.register_server(hostname, port, name, values["description"], values["max_users"], values["is_public"],
                          values["channel_count"], values["source_ip"], now_ms)


def test_registered_server_is_listed_with_every_field(store):
    register_server(store, "chat.example.org", 7000, 5_000, name="Example", description="Chat here",
                    max_users=50, is_public=False, channel_count=8, source_ip="2001:db8::1")
    (row,) = store.list_discovered_servers(10, 0)
    assert row == DiscoveredServerRow(
        id=row.id, hostname="chat.example.org", port=7000, name="Example", description="Chat here", user_count=0,
        max_users=50, uptime_seconds=0, is_public=False, channel_count=8, last_seen=5_000,
        source_ip="2001:db8::1", created_at=5_000,
    )


def test_registering_again_updates_the_listing_but_keeps_live_figures(store):
    register_server(store, "a.example", 6465, 1_000, name="Old")
    assert store.record_heartbeat("a.example", 6465, 12, 3_600, 5, 2_000)
    register_server(store, "a.example", 6465, 3_000, name="New", max_users=9, source_ip="192.0.2.9")
    (row,) = store.list_discovered_servers(10, 0)
    assert (row.name, row.max_users, row.source_ip, row.last_seen) == ("New", 9, "192.0.2.9", 3_000)
    assert (row.user_count, row.uptime_seconds, row.created_at) == (12, 3_600, 1_000)


def test_the_same_host_on_another_port_is_another_server(store):
    register_server(store, "a.example", 6465, 1_000)
    register_server(store, "a.example", 7000, 1_000)
    assert sorted(row.port for row in store.list_discovered_servers(10, 0)) == [6465, 7000]


def test_heartbeat_of_an_unlisted_server_changes_nothing(store):
    register_server(store, "a.example", 6465, 1_000)
    assert not store.record_heartbeat("a.example", 6466, 1, 1, 1, 2_000)
    assert not store.record_heartbeat("b.example", 6465, 1, 1, 1, 2_000)
    assert not store.mark_server_seen("b.example", 6465, 2_000)
    assert [row.last_seen for row in store.list_discovered_servers(10, 0)] == [1_000]


def test_listing_is_newest_first_fresh_only_and_limited(store):
    register_server(store, "old.example", 1, 1_000)
    register_server(store, "mid.example", 2, 2_000)
    register_server(store, "new.example", 3, 3_000)
    assert store.record_heartbeat("old.example", 1, 0, 0, 0, 4_000)
    assert store.mark_server_seen("mid.example", 2, 5_000)
    hosts = [row.hostname for row in store.list_discovered_servers(10, 0)]
    assert hosts == ["mid.example", "old.example", "new.example"]
    assert [row.hostname for row in store.list_discovered_servers(2, 0)] == ["mid.example", "old.example"]
    assert [row.hostname for row in store.list_discovered_servers(10, 4_000)] == ["mid.example", "old.example"]
    assert len(store.list_discovered_servers(None, 0)) == 3
    assert store.list_discovered_servers(0, 0) == []


def test_removing_servers_one_by_one_and_by_age(store):
    register_server(store, "a.example", 1, 1_000)
    register_server(store, "b.example", 2, 2_000)
    register_server(store, "c.example", 3, 3_000)
    assert store.remove_server("c.example", 3)
    assert not store.remove_server("c.example", 3)
    stale = store.remove_stale_servers(2_000)
    assert [(row.hostname, row.last_seen) for row in stale] == [("a.example", 1_000)]
    assert store.remove_stale_servers(2_000) == []
    assert [row.hostname for row in store.list_discovered_servers(10, 0)] == ["b.example"]
