"""Active bans, kept in memory so that every connection and post can be checked cheaply."""

from __future__ import annotations

import ipaddress
import time

from ..storage import BanRow, Store

# IPv4-mapped IPv6 addresses are ::ffff:0:0/96.
_MAPPED_PREFIX = 96


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR range, IPv4 or IPv6; host bits are allowed (``10.0.0.5/24`` = ``10.0.0.0/24``).

    Peers are matched without their IPv6 zone and with IPv4-mapped addresses as IPv4 (see ``address_in``), so
    ranges are normalised the same way: ``fe80::1%eth0`` is ``fe80::1/128`` and ``::ffff:10.0.0.0/120`` is
    ``10.0.0.0/24``. Otherwise such a ban would be accepted and then match nobody.
    """
    text = text.strip()
    address, slash, prefix = text.partition("/")
    network = ipaddress.ip_network(address.split("%", 1)[0] + slash + prefix, strict=False)
    if network.version == 6 and network.prefixlen >= _MAPPED_PREFIX:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network((mapped, network.prefixlen - _MAPPED_PREFIX))
    return network


def ban_network(ban: BanRow) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The range an IP ban covers."""
    if ban.ip_cidr is None:
        raise ValueError(f"IP ban {ban.id} names no address")
    return parse_network(ban.ip_cidr)


def address_in(host: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether a peer's address lies in a network; IPv4-mapped IPv6 peers count as IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.version == network.version and address in network


class BanList:
    """Bans are few and change rarely; the hot paths (accept, post, login) read them from here."""

    def __init__(self, store: Store):
        self._store = store
        self._ip: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, BanRow]] = []
        self._users: list[BanRow] = []
        # Reads of the database are numbered: one that started before another and finished after
        # it would bring back an older list.
        self._reads_started = 0
        self._newest_read = 0
        # Bans added in memory, with the number of reads started before each: a read started
        # before a ban was added may not have seen it.
        self._added: list[tuple[int, BanRow]] = []
        self.reload()

    def reload(self) -> None:
        """Read the active bans again; called after bans are lifted, and now and then."""
        self._reads_started += 1
        read = self._reads_started
        active = self._store.list_bans(False, now_ms())
        if read < self._newest_read:
            return
        self._newest_read = read
        self._added = [(reads_before, ban) for reads_before, ban in self._added if reads_before >= read]
        seen = {ban.id for ban in active}
        self._use(active + [ban for _, ban in self._added if ban.id not in seen])

    def add(self, ban: BanRow) -> None:
        """A ban just stored (on this node or another), in force here at once."""
        self._added.append((self._reads_started, ban))
        self._use([*self._users, *(ban for _, ban in self._ip), ban])

    def _use(self, bans: list[BanRow]) -> None:
        self._ip = [(ban_network(ban), ban) for ban in bans if ban.ban_type == "ip"]
        self._users = sorted((ban for ban in bans if ban.ban_type == "user"), key=lambda ban: ban.id)

    def ip_ban(self, host: str) -> BanRow | None:
        now = now_ms()
        for network, ban in self._ip:
            if address_in(host, network) and _active(ban, now):
                return ban
        return None

    def user_ban(self, user_id: int | None, nickname: str) -> BanRow | None:
        """The newest active ban naming this account or this nickname."""
        now = now_ms()
        for ban in reversed(self._users):
            named = (user_id is not None and ban.user_id == user_id) or (nickname and ban.nickname == nickname)
            if named and _active(ban, now):
                return ban
        return None


def _active(ban: BanRow, now: int) -> bool:
    return ban.banned_until is None or ban.banned_until > now


def describe(ban: BanRow) -> str:
    """``permanently`` or ``until 2025-10-08T14:30:15Z``, then the reason."""
    if ban.banned_until is None:
        span = "permanently"
    else:
        span = "until " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ban.banned_until / 1000))
    return f"{span}. Reason: {ban.reason}" if ban.reason else span


def user_ban_notice(ban: BanRow) -> str:
    return f"You have been banned {describe(ban)}"


def ip_ban_notice(ban: BanRow) -> str:
    return f"Your address is banned {describe(ban)}"
