"""The real OpenSSH client as a socket-like stream for tests.client.Client: frames go to ssh's
stdin and come back on its stdout, carried over the SSH session channel."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

from tests.tools import require


def make_key(directory: Path, name: str = "id_ed25519") -> Path:
    """A fresh unencrypted Ed25519 key pair made by ssh-keygen; returns the private key's path."""
    path = directory / name
    subprocess.run([require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


def ssh_command(port: int, user: str, key: Path, known_hosts: Path, strict: str = "accept-new") -> list[str]:
    return [
        require("ssh"), "-T", "-p", str(port), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "IdentityAgent=none",
        "-o", f"StrictHostKeyChecking={strict}", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        f"{user}@127.0.0.1",
    ]


class OpenSshStream:
    def __init__(self, port: int, user: str, key: Path, known_hosts: Path, strict: str = "accept-new"):
        self.proc = subprocess.Popen(
            ssh_command(port, user, key, known_hosts, strict),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._timeout: float | None = 5.0

    def sendall(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def recv(self, size: int) -> bytes:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self._timeout)
        if not ready:
            raise TimeoutError("nothing from ssh in time")
        return os.read(fd, size)

    def stderr(self) -> str:
        self.proc.wait(timeout=10)
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
