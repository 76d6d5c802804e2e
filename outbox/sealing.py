"""Sealing credentials at rest: AES-256-GCM (from `cryptography`) under a master key.

The master key is given by reference, like every secret: `OUTBOX_SECRET_KEY_FILE` (a file) or
`OUTBOX_SECRET_KEY_ENV` (the name of an environment variable). Either holds one or more keys,
one per line (or comma-separated), each 32 random bytes in URL-safe base64 (`outbox keys
generate`). The first key seals; every key opens: rotating is adding a new first key, running
`outbox keys rotate` (which seals every row again under it), then dropping the old one.

A sealed value reads `v1.<key id>.<nonce + ciphertext, base64>`. The key id (a hash prefix of
the key, never the key) says which master key opens it, so that a wrong key is named at start
instead of failing row by row. The channel id and field are bound in as associated data: a
sealed value copied to another channel or field does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from outbox.config_checks import warn_if_exposed
from outbox.errors import ConfigError

VERSION = "v1"
KEY_FILE_ENV = "OUTBOX_SECRET_KEY_FILE"
KEY_ENV_ENV = "OUTBOX_SECRET_KEY_ENV"


class SealError(ConfigError):
    """A sealed value that the given master keys do not open. Names key ids, never values."""


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id(raw: bytes) -> str:
    return hashlib.sha256(b"outbox master key id\0" + raw).hexdigest()[:12]


class Keyring:
    """The master keys: the first seals, all open."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("the master key list is empty")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.primary = key_id(keys[0])

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids()})"

    def ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, value: str, *, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self.primary].encrypt(nonce, value.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{VERSION}.{self.primary}.{body}"

    def open(self, sealed: str, *, context: str) -> str:
        version, kid, body = sealed_parts(sealed)
        if version != VERSION:
            raise SealError(f"{context}: sealed with an unknown format {version!r}")
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(
                f"{context}: sealed under master key id {kid}, which the given master keys"
                f" (ids {', '.join(self.ids())}) do not include: is this the right master key?"
            )
        try:
            raw = base64.urlsafe_b64decode(body)
            return aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(
                f"{context}: master key id {kid} does not open it (damaged, or moved from"
                " another channel)"
            ) from None


def sealed_parts(sealed: str) -> tuple[str, str, str]:
    parts = sealed.split(".", 2)
    if len(parts) != 3:
        raise SealError("a sealed value is malformed")
    return parts[0], parts[1], parts[2]


def keyring_from(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The master keys named by OUTBOX_SECRET_KEY_FILE or OUTBOX_SECRET_KEY_ENV; None if
    neither is set. Errors say where the key was looked for, never what it holds."""
    env = os.environ if environ is None else environ
    path, var = env.get(KEY_FILE_ENV), env.get(KEY_ENV_ENV)
    if path and var:
        raise ConfigError(f"give {KEY_FILE_ENV} or {KEY_ENV_ENV}, not both")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {KEY_FILE_ENV} {path}: {exc.strerror}") from exc
        warn_if_exposed(Path(path))  # issue 19 §3: named, never shown
        where = f"{KEY_FILE_ENV} {path}"
    elif var:
        text = env.get(var, "")
        where = f"environment variable {var} ({KEY_ENV_ENV})"
    else:
        return None
    keys: list[bytes] = []
    for number, line in enumerate(text.replace(",", "\n").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            raw = base64.urlsafe_b64decode(line.encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{where}: key {number} is not 32 bytes in URL-safe base64"
                " (make one with `outbox keys generate`)"
            )
        keys.append(raw)
    if not keys:
        raise ConfigError(f"{where} holds no master key")
    return Keyring(keys)
