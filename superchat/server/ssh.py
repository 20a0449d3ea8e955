"""SSH: the protocol over an SSH session channel, the client signed in by its public key.

paramiko speaks SSH; its transport thread is a greenlet under gevent's patching, so each
connection costs a greenlet or two, not an OS thread. After the handshake the channel
carries exactly the frames a TCP connection carries. The session starts signed in: the
server sends SERVER_CONFIG, then AUTH_RESPONSE, unasked.

A key registered to an account signs into that account, whatever user name the client
gives. An unknown key offered under a user name nobody has registered (in any case) and
not reserved for admins creates that account (SSH-only: no password until the user sets
one) and registers the key to it; an unknown key for an existing account is refused: keys
are added to an account with ADD_SSH_KEY by a signed-in user.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import gevent
import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..files import create_whole
from ..protocol import messages
from ..storage import NicknameTaken, SSHKeyExists, StorageError, UserRow
from . import limits
from .bans import now_ms
from .context import ServerContext
from .handlers.accounts import acceptable_nickname, complete_sign_in, reserved_for_admins
from .links import RECV_BYTES
from .outbound import send
from .passwords import LoginThrottle
from .session import Session
from .transport import FAREWELL_SECONDS, SessionRunner

log = logging.getLogger("superchat.ssh")
# paramiko logs every failed handshake (port scanners, wrong protocols) with a traceback at
# ERROR; those are not server errors, and this module logs one line for each instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# The reference client refuses a server whose version string does not start with this.
SSH_VERSION = "SSH-2.0-SuperChat"
HANDSHAKE_SECONDS = 10.0
AUTO_REGISTERED_LABEL = "Auto-registered"


def load_host_key(path: Path) -> paramiko.PKey:
    """The host key at ``path``, created (Ed25519, mode 0600) on first start and reused after.

    Raises OSError when it cannot be read, parsed or created.
    """
    if not path.exists():
        try:
            _create_host_key(path)
        except FileExistsError:  # another server sharing the file made it first: theirs is used
            pass
        except OSError as exc:
            raise OSError(f"cannot create SSH host key {path}: {exc.strerror or exc}") from exc
        else:
            log.info("Generated SSH host key at %s", path)
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.SSHException, ValueError) as exc:
        raise OSError(f"cannot use SSH host key {path}: {exc}") from exc


def _create_host_key(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_whole(path, pem, 0o600)


class SshLink:
    transport = "ssh"
    wrap = None
    os_socket = None

    def __init__(self, channel: paramiko.Channel):
        self._channel = channel

    def bind(self, send_wrapped) -> None:
        """SSH keeps its own channel flow control; nothing to add to the session's queue."""

    def set_idle_timeout(self, seconds: float) -> None:
        self._channel.settimeout(seconds)

    def recv(self) -> bytes:
        return self._channel.recv(RECV_BYTES)

    def try_write(self, data: bytes) -> int:
        # paramiko's send may block on the TCP socket under it whatever the SSH window says (the
        # client chooses the window), so nothing is written from the sender's greenlet: the
        # session's flusher writes, and the outbound limit drops a client that stopped reading.
        return 0

    def write_all(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except paramiko.SSHException as exc:
            raise OSError(str(exc)) from exc

    def shutdown(self) -> None:
        # In a greenlet of its own: saying goodbye may block on a client that stopped reading.
        gevent.spawn(self._say_goodbye)

    def _say_goodbye(self) -> None:
        # An exit status first: OpenSSH's client then ends with status 0, as after a shell.
        try:
            self._channel.send_exit_status(0)
            self._channel.close()
        except (paramiko.SSHException, OSError):
            pass

    def close(self) -> None:
        self._channel.close()


@dataclass(frozen=True)
class _Offer:
    """The key a client proved it holds, and who it makes the client."""

    fingerprint: str
    user_id: int | None  # None: a new account named ``username`` is to be created
    username: str
    key_type: str
    public_key: str


class _Gatekeeper(paramiko.ServerInterface):
    """Decides, without side effects, whether a key may sign in; paramiko asks before the
    client proves it holds the key and again after, so accounts are created only later."""

    def __init__(self, ctx: ServerContext, can_register: bool):
        self._ctx = ctx
        self._can_register = can_register
        self.offer: _Offer | None = None
        self.channel_opened = False

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        store = self._ctx.store
        fingerprint = key.fingerprint
        known = store.get_ssh_key(fingerprint)
        if known is not None:
            self.offer = _Offer(fingerprint, known.user_id, username, key.get_name(), "")
            return paramiko.AUTH_SUCCESSFUL
        if not self._can_register or not acceptable_nickname(self._ctx.config, username):
            return paramiko.AUTH_FAILED
        if reserved_for_admins(self._ctx.config, username) or store.get_user_by_folded_nickname(username):
            return paramiko.AUTH_FAILED
        line = f"{key.get_name()} {key.get_base64()}"
        self.offer = _Offer(fingerprint, None, username, key.get_name(), line)
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        # One session per connection: the first session channel is the chat.
        if kind != "session" or self.channel_opened:
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.channel_opened = True
        return paramiko.OPEN_SUCCEEDED

    # OpenSSH's client asks for a shell (and a terminal when it has one); frames flow either way.
    def check_channel_shell_request(self, channel) -> bool:
        return True

    def check_channel_pty_request(self, *args) -> bool:
        return True

    def check_channel_env_request(self, *args) -> bool:
        return True

    def check_channel_window_change_request(self, *args) -> bool:
        return True


class SshHandler:
    """Called by the StreamServer on ssh_port for each accepted socket."""

    def __init__(self, ctx: ServerContext, runner: SessionRunner, host_key: paramiko.PKey):
        self._ctx = ctx
        self._runner = runner
        self._host_key = host_key

    def __call__(self, sock: socket.socket, address: tuple) -> None:
        host = address[0]
        transport = paramiko.Transport(sock)
        transport.local_version = SSH_VERSION
        transport.add_server_key(self._host_key)
        gate = _Gatekeeper(self._ctx, self._ctx.registrations.has_room(LoginThrottle.source(host)))
        try:
            transport.start_server(server=gate)
            channel = transport.accept(HANDSHAKE_SECONDS)
            offer = gate.offer
            if channel is None or offer is None:
                log.info("SSH connection from %s ended before a session opened", host)
                return
            link = SshLink(channel)
            # A banned address or one over its cap is told so before any account is made for it.
            if not self._runner.admit(link, address):
                return
            user = self._account(offer, host)
            if user is None:
                return
            self._runner.run(link, address, lambda session: self._signed_in(session, user.id, offer))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("SSH connection from %s failed: %s", host, exc or type(exc).__name__)
        except StorageError as exc:
            if not self._ctx.writer.disk_space.tells(exc):
                log.error("SSH connection from %s failed: database error: %s", host, exc)
        finally:
            # The client hangs up once its channel is closed; closing first could reset the
            # connection and lose the last frames still on their way, a refusal among them.
            transport.join(FAREWELL_SECONDS)
            transport.close()

    def _account(self, offer: _Offer, host: str) -> UserRow | None:
        """The account the key signs into, created with the key registered to it if new."""
        ctx = self._ctx
        if offer.user_id is not None:
            return ctx.store.get_user(offer.user_id)
        if not ctx.registrations.allow(LoginThrottle.source(host)):
            limits.exceeded(f"SSH sign-up of {offer.username} from {host}", "account registration",
                            "too many registrations from this address")
            return None
        try:
            user = ctx.writer.run(ctx.store.create_user, offer.username, "", 0)
        except NicknameTaken:  # registered by someone else since the key was checked
            return None
        try:
            ctx.writer.run(ctx.store.add_ssh_key, user.id, offer.fingerprint, offer.public_key, offer.key_type,
                           AUTO_REGISTERED_LABEL)
        except SSHKeyExists:  # the same key, registered through another connection meanwhile
            ctx.writer.run(ctx.store.delete_user, user.id)
            return None
        log.info("Auto-registered user %s (id %d) via SSH from %s, key %s", user.nickname, user.id, host,
                 offer.fingerprint)
        return user

    def _signed_in(self, session: Session, user_id: int, offer: _Offer) -> None:
        ctx = self._ctx
        user = ctx.store.get_user(user_id)  # as it is now: renamed, re-flagged or deleted meanwhile
        if user is None:
            send(session, messages.AuthResponse(success=False, message="Account no longer exists"))
            session.finish("account deleted")
            return
        if not complete_sign_in(ctx, session, user, f"Authenticated via SSH as {user.nickname}"):
            session.finish("account banned")
            return
        ctx.writer.run_if_space(ctx.store.touch_ssh_key, offer.fingerprint, now_ms())
        log.info("Session %d signed in by SSH key as %s (user %d, key %s)", session.id, user.nickname, user.id,
                 offer.fingerprint)
