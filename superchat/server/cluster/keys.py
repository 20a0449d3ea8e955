"""The names of what the nodes keep in Redis."""

from __future__ import annotations

PREFIX = "superchat:"
# The one stream of events every node appends to and reads.
STREAM = PREFIX + "events"
# The nodes of the cluster, alive or not yet buried.
NODES = PREFIX + "nodes"


def alive_key(node: str) -> str:
    return f"{PREFIX}node:{node}:alive"


def roster_key(node: str) -> str:
    return f"{PREFIX}node:{node}:roster"


def addresses_key(node: str) -> str:
    return f"{PREFIX}node:{node}:addresses"


def limit_key(key: str) -> str:
    return f"{PREFIX}limit:{key}"


def block_key(key: str) -> str:
    return f"{PREFIX}block:{key}"
