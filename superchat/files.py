"""Files the server makes once and keeps: the SSH host key, the default config file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_whole(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` holding all of ``data``, or leave nothing: a full disk would otherwise leave
    a file cut short that stops every later start, and another process could read it half written.

    Raises FileExistsError when ``path`` exists (another process made it first), OSError when it
    cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # A link, unlike a rename, never replaces a file another process made meanwhile.
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
