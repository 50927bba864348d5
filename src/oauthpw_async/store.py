"""Where tokens live between processes: in memory (default) or in a private file.

A restarted crawler that finds a still-valid token (or a refresh token) in its store
uses it instead of logging in again: logins are what count against lockouts and limits.

A store never goes back in time. Every token the provider stores carries a *generation*
(one more than the token it replaced); a save whose generation is older than the stored one
is dropped. With rotating refresh tokens this is what keeps a restart from presenting a
refresh token that was already used.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import orjson

from ._atomic import atomic_write
from .errors import UnsafeTokenStore
from .grant import Token
from .record import MAX_STORED_LIFETIME, BadTokenRecord, TokenRecord

try:  # POSIX; elsewhere only threads of one process are kept apart
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_STORED_LIFETIME", "FileTokenStore", "MemoryTokenStore", "StoredToken", "TokenStore"]

log = logging.getLogger("oauthpw_async.store")

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Opening a FIFO for reading waits for a writer: never wait (the file is checked right after).
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _as_record(token: TokenRecord | Token) -> TokenRecord:
    return token if isinstance(token, TokenRecord) else TokenRecord.of(token)


@attrs.frozen
class StoredToken:
    """A token as a store keeps it: its record (times on the wall clock) and its generation.

    Made from a :class:`~oauthpw_async.grant.Token` or a :class:`~oauthpw_async.record.TokenRecord`;
    the provider puts the record on its own clock (:meth:`TokenRecord.token`) when it restores it.
    """

    #: The token with wall-clock times.
    record: TokenRecord = attrs.field(converter=_as_record)
    #: Counts the renewals of one credential: a higher generation replaced a lower one.
    generation: int

    @property
    def token(self) -> Token:
        """The token on the wall clock's time line (monotonic times are epoch seconds): for showing it."""
        return self.record.token()


class TokenStore(Protocol):
    """Keeps the newest token per credential key.

    ``save`` is called from a worker thread, possibly from several at once, and must keep the
    entry with the highest generation: an older entry never replaces a newer one.
    """

    def load(self, key: str) -> StoredToken | None:
        """The stored entry for ``key``, if any (an unusable one is ``None``, with a warning)."""
        ...

    def save(self, key: str, entry: StoredToken) -> bool:
        """Store ``entry`` unless the store holds a newer one; whether it was stored."""
        ...


_NOT_REGULAR = "is not a regular file (a FIFO, a socket, a device or a directory); point the token store at a file path"


def _to_record(entry: StoredToken) -> dict[str, Any]:
    return {"generation": entry.generation, **entry.record.as_json()}


def _generation(rec: Mapping[str, Any]) -> int:
    value = rec.get("generation", 0)  # files written before generations existed
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadTokenRecord("generation is not a whole number >= 0")
    return value


def _from_record(rec: object) -> StoredToken:
    """Validate a stored record strictly: a damaged or forged file must not yield a token."""
    if not isinstance(rec, dict):
        raise BadTokenRecord("the record is not a JSON object")
    return StoredToken(TokenRecord.from_json(rec), _generation(rec))


def _order(rec: object) -> tuple[float, float]:
    """How new a stored record is: (generation, issued time); an unusable record is the oldest."""
    try:
        entry = _from_record(rec)
    except BadTokenRecord:
        return (-1, -math.inf)
    return (entry.generation, entry.record.issued_wall)


class MemoryTokenStore:
    """Keeps tokens for the life of the process (the default)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def load(self, key: str) -> StoredToken | None:
        """The stored entry, if any."""
        rec = self._records.get(key)
        return _from_record(rec) if rec else None

    def save(self, key: str, entry: StoredToken) -> bool:
        """Replace the stored entry unless it is newer; whether ``entry`` was stored."""
        rec = _to_record(entry)
        with self._lock:
            if key in self._records and _order(rec) < _order(self._records[key]):
                return False
            self._records[key] = rec
            return True


class FileTokenStore:
    """Tokens in a JSON file readable by its owner only (0600), replaced atomically.

    The file holds live credentials (access and refresh tokens): keep it out of backups
    and version control. Several processes may share it: each save takes an exclusive
    ``flock`` on ``<file>.lock`` (the data file itself is replaced on every save), reads the
    file, and writes only if its entry is at least as new as the stored one.

    Loading refuses (:class:`UnsafeTokenStore`) a symlink or a file that group or others may
    read or write; a damaged file, or a record with wrong types or an absurd lifetime, is
    ignored with a warning (a login follows) and replaced on the next save.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: The sidecar file that saves lock (it holds nothing).
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()

    def _refuse(self, problem: str) -> UnsafeTokenStore:
        return UnsafeTokenStore(str(self.path), problem)

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(
                    "is a symbolic link; a token store must be a regular file: remove the link "
                    "(the store writes the file itself) or point the store at the real path"
                ) from None
            if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a unix socket cannot be opened
                raise self._refuse(_NOT_REGULAR) from None
            raise
        try:
            # Checked on the opened file itself, so the file cannot be swapped after the check.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(_NOT_REGULAR)
            if os.name == "posix" and st.st_mode & 0o077:
                raise self._refuse(
                    f"is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}) and holds live tokens: "
                    f"run 'chmod 600 {self.path}' (and consider revoking the tokens it held)"
                )
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        blob = b"".join(chunks)
        try:
            data = orjson.loads(blob)
        except orjson.JSONDecodeError:
            log.warning("token store %s is not valid JSON; ignored (it is replaced on the next save)", self.path)
            return {}
        if not isinstance(data, dict):
            log.warning("token store %s does not hold a JSON object; ignored", self.path)
            return {}
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if fcntl is None:  # pragma: no cover - Windows
                yield
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    def load(self, key: str) -> StoredToken | None:
        """The stored entry for ``key``; ``None`` if missing or unusable (with a warning).

        Raises:
            UnsafeTokenStore: the file is a symlink, not a regular file, or open to group/others.
        """
        rec = self._read().get(key)
        if rec is None:
            return None
        try:
            return _from_record(rec)
        except BadTokenRecord as exc:
            log.warning(
                "token store %s: the stored token is unusable (%s); ignored, logging in instead", self.path, exc
            )
            return None

    def save(self, key: str, entry: StoredToken) -> bool:
        """Write ``entry`` unless the file holds a newer one (temp file + fsync + rename, mode 0600).

        Returns whether it was written. Other keys in the file are kept.
        """
        rec = _to_record(entry)
        with self._locked():
            data = self._read()
            if key in data and _order(rec) < _order(data[key]):
                return False
            data[key] = rec
            atomic_write(self.path, orjson.dumps(data), mode=0o600)
            return True
