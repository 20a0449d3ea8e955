"""Several scd nodes acting as one server, through Redis; ``Solo`` when there is only one.

link.py declares what the server asks of either (``ClusterLink``). A node of several is composed
(node.py) of its connection to Redis (redis_link.py), the event stream (stream.py), the roster of
the other nodes and their sessions (roster.py), the heartbeat and burial of dead peers
(liveness.py) and the limits every node shares (shared_limits.py); keys.py names what they keep
in Redis.
"""

from .link import ClusterLink, Limit, RemoteSession
from .node import Cluster
from .shared_limits import SharedLimit
from .solo import Solo

__all__ = ["Cluster", "ClusterLink", "Limit", "RemoteSession", "SharedLimit", "Solo"]
