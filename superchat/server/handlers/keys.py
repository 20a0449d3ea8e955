"""SSH public keys as account data: add, list, relabel, delete."""

from __future__ import annotations

import logging

from ...protocol import messages
from ...sshkeys import InvalidKey, parse_public_key
from ...storage import SSHKeyExists
from .. import passwords
from ..context import ServerContext
from ..outbound import Refused, send
from ..permissions import account_of
from ..preconditions import registered_only
from ..session import Session

log = logging.getLogger("superchat.accounts")

MAX_LABEL_BYTES = 100
# Any 32 bytes make a well-formed ed25519 key, so without a cap one account could add rows forever.
MAX_KEYS_PER_USER = 100


def _key_refused(text: str) -> messages.SSHKeyAdded:
    return messages.SSHKeyAdded(success=False, key_id=0, fingerprint="", error_message=text)


@registered_only("Must be authenticated to add SSH key")
def add_ssh_key(ctx: ServerContext, session: Session, msg: messages.AddSSHKey) -> None:
    user_id = account_of(session)
    if not msg.public_key.strip():
        raise Refused(_key_refused("Public key cannot be empty"))
    if len(msg.label.encode()) > MAX_LABEL_BYTES:
        raise Refused(_key_refused(f"Label must be at most {MAX_LABEL_BYTES} bytes"))
    try:
        key = parse_public_key(msg.public_key)
    except InvalidKey as exc:
        raise Refused(_key_refused(f"Invalid SSH public key: {exc}")) from None
    if len(ctx.store.list_ssh_keys(user_id)) >= MAX_KEYS_PER_USER:
        raise Refused(_key_refused(f"Too many SSH keys (max {MAX_KEYS_PER_USER}); delete one first"))
    try:
        row = ctx.writer.run(
            ctx.store.add_ssh_key, user_id, key.fingerprint, key.authorized_line, key.key_type, msg.label or None
        )
    except SSHKeyExists:
        raise Refused(_key_refused("SSH key already exists")) from None
    log.info("User %d added SSH key %s", user_id, key.fingerprint)
    send(session, messages.SSHKeyAdded(success=True, key_id=row.id, fingerprint=row.fingerprint, error_message=""))


@registered_only("Must be authenticated to list SSH keys")
def list_ssh_keys(ctx: ServerContext, session: Session, msg: messages.ListSSHKeys) -> None:
    user_id = account_of(session)
    send(session, messages.SSHKeyList(keys=[
        messages.SSHKeyInfo(
            id=key.id,
            fingerprint=key.fingerprint,
            key_type=key.key_type,
            label=key.label or "",
            added_at=key.added_at,
            last_used_at=key.last_used_at or 0,
        )
        for key in ctx.store.list_ssh_keys(user_id)
    ]))


@registered_only("Must be authenticated to update SSH key")
def update_ssh_key_label(ctx: ServerContext, session: Session, msg: messages.UpdateSSHKeyLabel) -> None:
    user_id = account_of(session)
    if len(msg.new_label.encode()) > MAX_LABEL_BYTES:
        problem = f"Label must be at most {MAX_LABEL_BYTES} bytes"
    elif ctx.writer.run(ctx.store.relabel_ssh_key, user_id, msg.key_id, msg.new_label or None):
        log.info("User %d relabelled SSH key %d", user_id, msg.key_id)
        problem = ""
    else:
        problem = "SSH key not found or does not belong to you"
    send(session, messages.SSHKeyLabelUpdated(success=not problem, error_message=problem))


@registered_only("Must be authenticated to delete SSH key")
def delete_ssh_key(ctx: ServerContext, session: Session, msg: messages.DeleteSSHKey) -> None:
    user_id = account_of(session)
    with passwords.sign_in_methods:  # the last key and the password must not both go
        problem = _deletion_problem(ctx, user_id, msg.key_id)
    send(session, messages.SSHKeyDeleted(success=not problem, error_message=problem))


def _deletion_problem(ctx: ServerContext, user_id: int, key_id: int) -> str:
    """Delete the key unless that is refused; returns why it was, or ""."""
    keys = ctx.store.list_ssh_keys(user_id)
    user = ctx.store.get_user(user_id)
    if not any(key.id == key_id for key in keys):
        return "SSH key not found or does not belong to you"
    if len(keys) == 1 and user is not None and not user.password_hash:
        return "Cannot delete last SSH key when no password is set"
    if not ctx.writer.run(ctx.store.delete_ssh_key, user_id, key_id):
        return "SSH key not found or does not belong to you"
    log.info("User %d deleted SSH key %d", user_id, key_id)
    return ""


HANDLERS = {
    messages.AddSSHKey: add_ssh_key,
    messages.ListSSHKeys: list_ssh_keys,
    messages.UpdateSSHKeyLabel: update_ssh_key_label,
    messages.DeleteSSHKey: delete_ssh_key,
}
