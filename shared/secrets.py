"""Connection configs encrypted at rest with a key derived from RETL_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as _random
import time
from functools import cache
from typing import Any

from cryptography.fernet import Fernet

from shared.settings import get_settings


def _secret_key() -> str:
    """RETL_SECRET_KEY, or a key kept in RETL_HOME/secret.key, created on first use."""
    settings = get_settings()
    if settings.secret_key:
        return settings.secret_key
    path = settings.home / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Exclusive create: of processes starting at once, one writes the key and every one
        # reads that key; it is never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(_random.token_urlsafe(32))
    for _ in range(100):  # the creator may not have written it yet
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: remove it, or set RETL_SECRET_KEY")


@cache
def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def encrypt_config(config: dict[str, Any]) -> str:
    return _fernet(_secret_key()).encrypt(json.dumps(config).encode()).decode()


def decrypt_config(token: str) -> dict[str, Any]:
    return json.loads(_fernet(_secret_key()).decrypt(token.encode()))


def signing_key() -> bytes:
    """A key for signing opaque tokens (pagination cursors), distinct from the encryption key."""
    return hashlib.sha256(b"retl-signing:" + _secret_key().encode()).digest()
