"""Our Argon2id against OpenSSL's (through cryptography), on parameters small enough to be quick.

OpenSSL refuses salts under 8 bytes, which nicknames often are; the full client hash with a short
salt is checked against another implementation in tests/test_admin_accounts.py.
"""

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from superchat.client_password import argon2id


@pytest.mark.parametrize(("password", "salt", "passes", "memory_kib", "lanes", "length"), [
    (b"password", b"somesalt", 1, 8, 1, 32),  # the least memory there is: 8 blocks a lane
    (b"hunter22", b"nickname", 3, 32, 4, 32),  # the clients' passes and lanes
    (b"p" * 128, b"a-nickname-of-20-byt", 2, 256, 4, 64),  # data-dependent addressing over many lanes
    (b"", b"saltsalt", 4, 100, 3, 100),  # memory that is not a multiple of the slices; a long tag
    ("pässwörd".encode(), b"12345678", 1, 2048, 2, 16),  # several address blocks per segment
])
def test_argon2id_matches_openssl(password, salt, passes, memory_kib, lanes, length):
    openssl = Argon2id(salt=salt, length=length, iterations=passes, lanes=lanes, memory_cost=memory_kib)
    expected = openssl.derive(password)
    assert argon2id(password, salt, passes, memory_kib, lanes, length) == expected
