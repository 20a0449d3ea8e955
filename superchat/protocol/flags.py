"""The user_flags bitfield and the nickname decorations clients display."""

ADMIN = 0x01
MODERATOR = 0x02


def decorated_nickname(nickname: str, registered: bool, flags: int) -> str:
    """``~nick`` anonymous, ``$nick`` admin, ``@nick`` moderator, bare for other registered users."""
    if not registered:
        return "~" + nickname
    if flags & ADMIN:
        return "$" + nickname
    if flags & MODERATOR:
        return "@" + nickname
    return nickname
