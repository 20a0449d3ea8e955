"""SSH public keys in authorized_keys form: validation and OpenSSH's SHA256 fingerprint."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    fingerprint: str  # "SHA256:" + unpadded base64 of the key blob's SHA-256, as ssh-keygen -l prints
    authorized_line: str  # type, base64 and comment, without authorized_keys options


_ECDSA_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}


def _ed25519(fields: list[bytes]) -> None:
    if len(fields) != 1 or len(fields[0]) != 32:
        raise InvalidKey("ed25519 key must be 32 bytes")


def _rsa(fields: list[bytes]) -> None:
    if len(fields) != 2:
        raise InvalidKey("RSA key needs an exponent and a modulus")
    exponent, modulus = fields
    if not exponent or not modulus or modulus[0] & 0x80 or len(modulus.lstrip(b"\0")) * 8 < 1024:
        raise InvalidKey("RSA modulus must be positive and at least 1024 bits")


def _dss(fields: list[bytes]) -> None:
    if len(fields) != 4 or not all(fields):
        raise InvalidKey("DSA key needs p, q, g and y")


def _ecdsa(curve: str, extra: int):
    def check(fields: list[bytes]) -> None:
        if len(fields) != 2 + extra:
            raise InvalidKey(f"malformed {curve} key")
        if fields[0].decode(errors="replace") != curve:
            raise InvalidKey(f"curve {fields[0]!r} does not match the key type")
        point = fields[1]
        if len(point) != _ECDSA_POINT_BYTES[curve] or point[0] != 4:
            raise InvalidKey(f"malformed {curve} point")

    return check


def _sk_ed25519(fields: list[bytes]) -> None:
    if len(fields) != 2 or len(fields[0]) != 32:
        raise InvalidKey("malformed security-key ed25519 key")


# Each type's blob is its name followed by these length-prefixed fields.
_CHECKS = {
    "ssh-ed25519": _ed25519,
    "ssh-rsa": _rsa,
    "ssh-dss": _dss,
    "ecdsa-sha2-nistp256": _ecdsa("nistp256", 0),
    "ecdsa-sha2-nistp384": _ecdsa("nistp384", 0),
    "ecdsa-sha2-nistp521": _ecdsa("nistp521", 0),
    "sk-ecdsa-sha2-nistp256@openssh.com": _ecdsa("nistp256", 1),
    "sk-ssh-ed25519@openssh.com": _sk_ed25519,
}


def _split_blob(blob: bytes) -> list[bytes]:
    fields, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InvalidKey("truncated key data")
        (length,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise InvalidKey("truncated key data")
        fields.append(blob[pos : pos + length])
        pos += length
    return fields


def parse_public_key(text: str) -> PublicKey:
    """Parse one authorized_keys line (options allowed before the key type)."""
    tokens = text.strip().split()
    start = next((i for i, token in enumerate(tokens) if token in _CHECKS), None)
    if start is None:
        raise InvalidKey("no supported key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-*, ...)")
    if start + 1 >= len(tokens):
        raise InvalidKey("key data missing")
    key_type, encoded = tokens[start], tokens[start + 1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise InvalidKey("key data is not base64") from exc
    fields = _split_blob(blob)
    if not fields or fields[0] != key_type.encode():
        raise InvalidKey("key data does not match its type")
    _CHECKS[key_type](fields[1:])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    line = " ".join([key_type, encoded, *tokens[start + 2 :]])
    return PublicKey(key_type=key_type, fingerprint=f"SHA256:{digest}", authorized_line=line)
