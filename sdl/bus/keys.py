"""A deployment's CurveZMQ keys: one key pair per party (the broker, each instrument PC, each operator).

Keys belong to the deployment, never to the repository: a directory named by the config
(``bus.keys``) or by ``SDL_KEYS_DIR``, laid out as pyzmq's ``zmq.auth`` writes certificates::

    KEYS/public/NAME.key            who may connect (copy these to the controller)
    KEYS/private/NAME.key_secret    this machine's own secret keys (mode 0600, never copied)
    KEYS/revoked/NAME.key           public keys no longer trusted

``sdl keys new|list|revoke`` manage them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import zmq.auth

KEYS_ENV = "SDL_KEYS_DIR"
BROKER_KEY = "broker"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]*$"


class KeyRingError(ValueError):
    """A key that is missing, malformed or already there."""


class KeyRing:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.public_dir = self.directory / "public"
        self.private_dir = self.directory / "private"
        self.revoked_dir = self.directory / "revoked"

    @classmethod
    def from_env(cls) -> KeyRing | None:
        value = os.environ.get(KEYS_ENV)
        return cls(value) if value else None

    def create(self, name: str) -> tuple[Path, Path]:
        """A new key pair ``name``: (public file, secret file). Refused if the name is taken or revoked."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise KeyRingError(f"key name {name!r}: use lower-case letters, digits, '.', '_' and '-'")
        if (self.public_dir / f"{name}.key").exists() or (self.revoked_dir / f"{name}.key").exists():
            raise KeyRingError(f"a key {name!r} exists (or was revoked) in {self.directory}; choose another name")
        for folder in (self.public_dir, self.private_dir, self.revoked_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.private_dir.chmod(0o700)
        public, secret = zmq.auth.create_certificates(self.private_dir, name)
        Path(secret).chmod(0o600)
        shutil.move(public, self.public_dir / f"{name}.key")
        return self.public_dir / f"{name}.key", Path(secret)

    def names(self) -> list[str]:
        """The trusted (not revoked) keys."""
        return sorted(p.stem for p in self.public_dir.glob("*.key")) if self.public_dir.is_dir() else []

    def revoked(self) -> list[str]:
        return sorted(p.stem for p in self.revoked_dir.glob("*.key")) if self.revoked_dir.is_dir() else []

    def revoke(self, name: str) -> None:
        path = self.public_dir / f"{name}.key"
        if not path.exists():
            raise KeyRingError(f"no trusted key {name!r} in {self.public_dir}; trusted: "
                               f"{', '.join(self.names()) or 'none'}")
        self.revoked_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(path, self.revoked_dir / path.name)

    def public_key(self, name: str) -> bytes:
        path = self.public_dir / f"{name}.key"
        if not path.exists():
            raise KeyRingError(f"no trusted key {name!r} in {self.public_dir}; make it with `sdl keys new {name}`")
        public, _ = zmq.auth.load_certificate(path)
        return public

    def key_pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) of a key whose secret half is on this machine."""
        path = self.private_dir / f"{name}.key_secret"
        if not path.exists():
            raise KeyRingError(f"no secret key {name!r} in {self.private_dir}; make it here with `sdl keys new {name}`")
        if name not in self.names():
            raise KeyRingError(f"key {name!r} is revoked")
        public, secret = zmq.auth.load_certificate(path)
        return public, secret

    def trusted(self) -> dict[str, bytes]:
        """Public keys by name, of every key that is not revoked."""
        return {name: self.public_key(name) for name in self.names()}
