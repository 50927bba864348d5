"""Files a crash cannot corrupt: atomic replacement, exclusive locks, cleanup of abandoned temp files."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["LockFile", "atomic_write", "remove_stale_temps", "try_lock"]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


_TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, blob: bytes, *, mode: int = 0o600) -> None:
    """Write ``blob`` to ``path`` through a temp file in the same folder: write, fsync, rename.

    The temp file (``.NAME.<random>.tmp``) gets ``mode`` before any byte is written, and is
    removed on any failure; only a process killed between its creation and the rename leaves
    it behind (see :func:`remove_stale_temps`). The folder is fsynced too, so the rename
    itself survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left beside ``path`` when a process was killed.

    Only names of the exact form ``.NAME.<random>.tmp`` for this ``path`` are touched (the
    random part has no dot, so another file's temps, say ``.NAME.x.<random>.tmp``, never
    match). Call it only while holding the lock that makes you ``path``'s only writer: a
    live writer's temp file looks the same. Returns what was removed.
    """
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"[^.]+" + re.escape(_TEMP_SUFFIX))
    removed: list[Path] = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            stale = path.parent / name
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
    return removed


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; ``False`` when someone holds it.

    ``flock`` locks belong to the open file, not the process: a second ``open`` of the same
    file in the same process is refused too, and the lock goes away with the last descriptor
    (so a killed process never leaves a file locked). Not enforced where ``fcntl`` is missing.
    """
    if sys.platform == "win32":  # pragma: no cover - no flock on Windows
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class LockFile:
    """An exclusive lock on a sidecar file, for a file that is replaced (renamed over) as it is saved.

    A lock on such a file itself would stay on the old inode after the first save. The
    sidecar exists only while held: :meth:`release` deletes it before unlocking, and
    :meth:`acquire` retries when the file it locked was deleted meanwhile, so two holders
    can never both succeed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock without waiting; ``False`` when another holder has it."""
        if self._fd is not None:
            return False  # one holder per object: a second acquire is another user
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # each retry means a holder released it between our open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if not try_lock(fd):
                os.close(fd)
                return False
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                self._fd = fd
                return True
            os.close(fd)  # we locked a file its holder deleted on release: lock the new one
        return False

    def release(self) -> None:
        """Delete the sidecar and unlock; nothing happens when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)
