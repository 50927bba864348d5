"""Where tokens live between processes: in memory (default) or in a private file.

A restarted crawler that finds a still-valid token (or a refresh token) in its store
uses it instead of logging in again: logins are what count against lockouts and limits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import orjson

from ._atomic import atomic_write
from ._secret import Secret
from .grant import Instant, Token

__all__ = ["FileTokenStore", "MemoryTokenStore", "TokenStore"]


class TokenStore(Protocol):
    """Keeps the newest token per credential key.

    ``load`` returns a token whose times are on the wall clock: ``issued.monotonic`` is
    ignored and ``refresh_expires_at`` is epoch seconds; the provider re-bases them.
    """

    def load(self, key: str) -> Token | None:
        """The stored token for ``key``, if any."""
        ...

    def save(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``, replacing the previous one."""
        ...


def _to_record(token: Token) -> dict[str, Any]:
    rexp = token.refresh_expires_at
    return {
        "access_token": token.access_token.reveal(),
        "authorization": token.authorization,
        "token_type": token.token_type,
        "issued_wall": token.issued.wall,
        "lifetime": token.lifetime,
        "lifetime_source": token.lifetime_source,
        "refresh_token": token.refresh_token.reveal() if token.refresh_token else None,
        "refresh_expires_wall": None if rexp is None else token.issued.wall + (rexp - token.issued.monotonic),
        "scope": token.scope,
        "extra": dict(token.extra),
    }


def _from_record(rec: dict[str, Any]) -> Token:
    rt = rec.get("refresh_token")
    return Token(
        access_token=Secret(str(rec["access_token"])),
        authorization=str(rec["authorization"]),
        token_type=str(rec["token_type"]),
        issued=Instant(math.nan, float(rec["issued_wall"])),
        lifetime=float(rec["lifetime"]),
        lifetime_source=str(rec.get("lifetime_source", "default")),
        refresh_token=Secret(rt) if isinstance(rt, str) and rt else None,
        refresh_expires_at=rec.get("refresh_expires_wall"),
        scope=rec.get("scope"),
        extra=rec.get("extra") or {},
    )


class MemoryTokenStore:
    """Keeps tokens for the life of the process (the default)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def load(self, key: str) -> Token | None:
        """The stored token, if any."""
        rec = self._records.get(key)
        return _from_record(rec) if rec else None

    def save(self, key: str, token: Token) -> None:
        """Replace the stored token."""
        self._records[key] = _to_record(token)


class FileTokenStore:
    """Tokens in a JSON file readable by its owner only (0600), replaced atomically.

    The file holds live credentials (access and refresh tokens): keep it out of backups
    and version control. A damaged file is ignored and replaced on the next save.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _read_all(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, key: str) -> Token | None:
        """The stored token for ``key``; ``None`` if missing or unreadable."""
        rec = self._read_all().get(key)
        if not isinstance(rec, dict):
            return None
        try:
            return _from_record(rec)
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, key: str, token: Token) -> None:
        """Write ``token`` for ``key`` with temp file + fsync + rename, mode 0600."""
        data = self._read_all()
        data[key] = _to_record(token)
        atomic_write(self.path, orjson.dumps(data), mode=0o600)
