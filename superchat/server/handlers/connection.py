"""Keepalive and goodbye."""

from __future__ import annotations

from ...protocol import messages
from ..context import ServerContext
from ..outbound import send
from ..session import Session


class ClientDisconnect(Exception):
    """The client said DISCONNECT; the connection closes without an answer."""


def ping(ctx: ServerContext, session: Session, msg: messages.Ping) -> None:
    send(session, messages.Pong(client_timestamp=msg.timestamp))


def disconnect(ctx: ServerContext, session: Session, msg: messages.Disconnect) -> None:
    raise ClientDisconnect


HANDLERS = {
    messages.Ping: ping,
    messages.Disconnect: disconnect,
}
