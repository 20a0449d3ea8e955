"""Nicknames, registration, login, logout and passwords."""

from __future__ import annotations

import logging
import re

from ...config import Config
from ...protocol import ErrorCode, flags, messages
from ...storage import NicknameTaken, UserRow
from .. import limits, passwords, presence
from ..bans import describe, now_ms
from ..context import ServerContext
from ..outbound import Refused, send
from ..permissions import account_of
from ..preconditions import nickname_required, registered_only
from ..session import Session

log = logging.getLogger("superchat.accounts")

NICKNAME_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")
MIN_NICKNAME_BYTES = 3
# The wire format caps nicknames at 20 bytes whatever the configuration says.
MAX_NICKNAME_BYTES = 20
RESERVED_FOR_ADMINS = "Nickname reserved: admin accounts are made by the server operator"


def _nickname_refused(text: str) -> messages.NicknameResponse:
    return messages.NicknameResponse(success=False, message=text)


def set_nickname(ctx: ServerContext, session: Session, msg: messages.SetNickname) -> None:
    presence.allow_change(session)
    nickname = msg.nickname
    longest = min(MAX_NICKNAME_BYTES, ctx.config.max_nickname_length)
    if not MIN_NICKNAME_BYTES <= len(nickname.encode()) <= longest:
        raise Refused.error(ErrorCode.INVALID_FORMAT, f"Nickname must be {MIN_NICKNAME_BYTES}-{longest} characters")
    if not NICKNAME_CHARACTERS.fullmatch(nickname):
        raise Refused(_nickname_refused(
            f"Invalid nickname. Must be {MIN_NICKNAME_BYTES}-{longest} characters, alphanumeric plus - and _"))
    owner = ctx.store.get_user_by_folded_nickname(nickname)
    if owner is not None and owner.id != session.user_id:
        raise Refused(_nickname_refused("Nickname registered, password required"))
    changed = bool(session.nickname) and session.nickname != nickname
    if session.user_id is not None and changed:
        # Also an admin's own name in another case: the operator spells admin names in admin_users.
        if reserved_for_admins(ctx.config, nickname):
            log.warning("Session %d: rename of user %d to %s refused: reserved for admins", session.id,
                        session.user_id, nickname)
            raise Refused(_nickname_refused(RESERVED_FOR_ADMINS))
        try:
            ctx.writer.run(ctx.store.rename_user, session.user_id, nickname)
        except NicknameTaken:
            raise Refused(_nickname_refused("Nickname already in use")) from None
        # Admin rights belong to the configured nicknames, which no rename leads to: renaming an admin
        # takes them at once, as the next start would.
        if session.user_flags & flags.ADMIN:
            ctx.writer.run(ctx.store.assign_flag, flags.ADMIN, ctx.config.admin_users)
            for signed_in in ctx.sessions.sessions_of_user(session.user_id):  # this one and any other
                signed_in.user_flags &= ~flags.ADMIN
            log.info("User %d is no longer an admin after renaming to %s", session.user_id, nickname)
    session.nickname = nickname
    log.info("Session %d set nickname: %s", session.id, nickname)
    verb = "changed" if changed else "set"
    send(session, messages.NicknameResponse(success=True, message=f"Nickname {verb} to {nickname}"))
    presence.identity_changed(ctx, session)


def _registration_refused(text: str) -> messages.RegisterResponse:
    return messages.RegisterResponse(success=False, message=text)


@nickname_required("Must set nickname before registering", reply=_registration_refused)
def register_user(ctx: ServerContext, session: Session, msg: messages.RegisterUser) -> None:
    if session.user_id is not None:
        raise Refused(_registration_refused("This session is already registered"))
    if not passwords.well_formed(msg.password):
        raise Refused(_registration_refused("Invalid password hash format"))
    nickname = session.nickname
    if reserved_for_admins(ctx.config, nickname):
        log.warning("Session %d: registration of %s refused: reserved for admins", session.id, nickname)
        raise Refused(_registration_refused(RESERVED_FOR_ADMINS))
    if ctx.store.get_user_by_folded_nickname(nickname) is not None:
        raise Refused(_registration_refused("Nickname already registered"))
    if not ctx.registrations.allow(passwords.LoginThrottle.source(session.host)):
        limits.exceeded(limits.session_named(session.id, session.nickname), "account registration",
                        f"registration of {nickname} refused: too many from {session.host}")
        raise Refused(_registration_refused("Too many registrations from your address; try again later"))
    stored_hash = passwords.hash_password(msg.password)
    try:
        user = ctx.writer.run(ctx.store.create_user, nickname, stored_hash, 0)
    except NicknameTaken:
        raise Refused(_registration_refused("Nickname already registered")) from None
    _sign_in(session, user)
    log.info("Session %d registered nickname %s (user %d)", session.id, nickname, user.id)
    send(session, messages.RegisterResponse(
        success=True, user_id=user.id, message=f"Successfully registered {nickname}!"
    ))
    presence.identity_changed(ctx, session)


def _login_refused(text: str) -> messages.AuthResponse:
    return messages.AuthResponse(success=False, message=text)


def auth_request(ctx: ServerContext, session: Session, msg: messages.AuthRequest) -> None:
    wait = ctx.logins.seconds_blocked(session.host)
    if wait:
        raise Refused(_login_refused(f"Too many failed login attempts. Try again in {wait} seconds."))
    # A case variant names the account too; upstream clients salt their hash with the name as typed,
    # so for them only the registered spelling matches the password.
    user = ctx.store.get_user_by_folded_nickname(msg.nickname)
    if user is not None and not user.password_hash:
        raise Refused(_login_refused("This account requires SSH authentication. Please connect via SSH."))
    # An unknown name fails exactly like a wrong password, in answer and in time.
    matched = passwords.password_matches(msg.password, user.password_hash if user else None)
    wait = ctx.logins.seconds_blocked(session.host)
    if wait:
        # Other attempts from this address failed while this one was checked: its outcome stays
        # secret, or parallel connections would get more guesses than the throttle allows.
        raise Refused(_login_refused(f"Too many failed login attempts. Try again in {wait} seconds."))
    if not matched:
        ctx.logins.failed(session.host, msg.nickname)
        log.info("Session %d: login failed for %s from %s", session.id, msg.nickname, session.host)
        raise Refused(_login_refused("Invalid credentials"))
    ctx.logins.succeeded(session.host)
    # The check above yielded to other clients; the account may have been deleted, renamed or
    # given a new password meanwhile, and only the account as it is now may be signed into.
    current = ctx.store.get_user(user.id)
    if current is None or current.nickname != user.nickname or current.password_hash != user.password_hash:
        raise Refused(_login_refused("Invalid credentials"))
    if complete_sign_in(ctx, session, user, f"Welcome back, {user.nickname}!"):
        log.info("Session %d logged in as %s (user %d)", session.id, user.nickname, user.id)


def complete_sign_in(ctx: ServerContext, session: Session, user: UserRow, greeting: str) -> bool:
    """Sign the session into a proven account unless it is banned, and tell the client either way."""
    ban = ctx.bans.user_ban(user.id, user.nickname)
    if ban is not None and not ban.shadowban:
        log.info("Session %d: login refused for banned user %s (id %d)", session.id, user.nickname, user.id)
        send(session, messages.AuthResponse(success=False, message=f"Account banned {describe(ban)}"))
        return False
    _sign_in(session, user)
    session.shadowbanned = ban is not None
    ctx.writer.run_if_space(ctx.store.touch_user, user.id, now_ms())
    send(session, messages.AuthResponse(
        success=True,
        user_id=user.id,
        nickname=user.nickname,
        message=greeting,
        user_flags=user.user_flags,
    ))
    presence.identity_changed(ctx, session)
    return True


def acceptable_nickname(config: Config, nickname: str) -> bool:
    longest = min(MAX_NICKNAME_BYTES, config.max_nickname_length)
    return MIN_NICKNAME_BYTES <= len(nickname.encode()) <= longest and bool(NICKNAME_CHARACTERS.fullmatch(nickname))


def reserved_for_admins(config: Config, nickname: str) -> bool:
    """Named in admin_users, in any case: no network client may make an account of that name.
    Nicknames are ASCII (NICKNAME_CHARACTERS), so lower() folds them as SQL's lower() does."""
    return nickname.lower() in {name.lower() for name in config.admin_users}


def logout(ctx: ServerContext, session: Session, msg: messages.Logout) -> None:
    """No answer, as the protocol defines; the session keeps its nickname, anonymously."""
    if session.user_id is None:
        return
    log.info("Session %d logged out (user %d)", session.id, session.user_id)
    session.user_id = None
    session.user_flags = 0
    session.shadowbanned = False
    presence.identity_changed(ctx, session)


PASSWORD_CHANGED = messages.PasswordChanged(success=True, error_message="")


def _password_change_refused(text: str) -> messages.PasswordChanged:
    return messages.PasswordChanged(success=False, error_message=text)


@registered_only("Must be authenticated to change password")
def change_password(ctx: ServerContext, session: Session, msg: messages.ChangePassword) -> None:
    user = ctx.store.get_user(account_of(session))
    if user is None:
        raise Refused(_password_change_refused("User not found"))
    # The reference server skips this check when old_password is empty; a stolen open
    # session must not be enough to take over an account, so an existing password is required.
    if user.password_hash and not passwords.password_matches(msg.old_password, user.password_hash):
        raise Refused(_password_change_refused("Incorrect current password"))
    if not msg.new_password:
        with passwords.sign_in_methods:
            if not ctx.store.list_ssh_keys(user.id):
                raise Refused(_password_change_refused(
                    "Cannot remove password without SSH keys. Add an SSH key first."))
            ctx.writer.run(ctx.store.set_password, user.id, "")
        log.info("User %s (id %d) removed their password (SSH-only login)", user.nickname, user.id)
        send(session, PASSWORD_CHANGED)
        return
    if not passwords.well_formed(msg.new_password):
        raise Refused(_password_change_refused("Invalid password hash format"))
    ctx.writer.run(ctx.store.set_password, user.id, passwords.hash_password(msg.new_password))
    log.info("User %s (id %d) changed their password", user.nickname, user.id)
    send(session, PASSWORD_CHANGED)


def _sign_in(session: Session, user: UserRow) -> None:
    session.user_id = user.id
    session.nickname = user.nickname
    session.user_flags = user.user_flags


HANDLERS = {
    messages.SetNickname: set_nickname,
    messages.RegisterUser: register_user,
    messages.AuthRequest: auth_request,
    messages.Logout: logout,
    messages.ChangePassword: change_password,
}
