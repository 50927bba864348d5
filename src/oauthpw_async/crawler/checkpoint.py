"""Per-partition crawl positions, saved atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import orjson

from .._atomic import atomic_write
from ..errors import StateError
from .pagination import PageRequest

__all__ = ["Checkpoints"]


class Checkpoints:
    """The next page of each partition, or ``done``. In memory when ``path`` is ``None``.

    A damaged state file is an error (never silently restarted from scratch: that would
    re-crawl everything); delete it to start over.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict[str, Any]] = {}
        self._cursors: dict[str, dict[str, Any]] = {}  # incremental sync: committed, per partition
        self._runs: dict[str, dict[str, Any]] = {}  # incremental sync: the run in flight, per partition
        self._lock = anyio.Lock()
        if self.path is not None and self.path.exists():
            try:
                data = orjson.loads(self.path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise StateError(f"state file {self.path} is damaged ({exc.msg}); delete it to start over") from None
            if not isinstance(data, dict) or not isinstance(data.get("partitions", {}), dict):
                raise StateError(f"state file {self.path} is not a crawl state; delete it to start over")
            self._data = data.get("partitions", {})
            self._cursors, self._runs = data.get("cursors", {}), data.get("runs", {})
            if not isinstance(self._cursors, dict) or not isinstance(self._runs, dict):
                raise StateError(f"state file {self.path} has damaged cursors; run `oauthpw-async state reset`")

    def is_done(self, partition: str) -> bool:
        """Whether the partition finished in an earlier run."""
        return bool(self._data.get(partition, {}).get("done"))

    def resume_from(self, partition: str) -> PageRequest | None:
        """The saved next page, if the partition was started."""
        entry = self._data.get(partition)
        if entry and entry.get("next"):
            return PageRequest.from_json(entry["next"])
        return None

    def pages(self, partition: str) -> int:
        """Pages already committed for the partition."""
        return int(self._data.get(partition, {}).get("pages", 0))

    def records(self, partition: str) -> int:
        """Records already committed for the partition."""
        return int(self._data.get(partition, {}).get("records", 0))

    def problems(self, partition: str) -> list[str]:
        """Why a finished partition may be missing records (saved with its end)."""
        return [str(p) for p in self._data.get(partition, {}).get("problems", [])]

    async def save(
        self,
        partition: str,
        next_request: PageRequest | None,
        pages: int,
        *,
        records: int = 0,
        problems: list[str] | None = None,
    ) -> None:
        """Record the partition's next page (``None``: done) and write the file atomically."""
        async with self._lock:
            entry: dict[str, Any] = {
                "next": next_request.to_json() if next_request else None,
                "done": next_request is None,
                "pages": pages,
                "records": records,
            }
            if problems:
                entry["problems"] = problems
            self._data[partition] = entry
            if self.path is not None:
                blob = orjson.dumps(self.document())
                await anyio.to_thread.run_sync(atomic_write, self.path, blob)

    # --- incremental sync: committed cursors and runs in flight, apart from the positions ---------------

    def document(self) -> dict[str, Any]:
        """The whole state as written to the file."""
        doc: dict[str, Any] = {"version": 1, "partitions": self._data}
        if self._cursors:
            doc["cursors"] = self._cursors
        if self._runs:
            doc["runs"] = self._runs
        return doc

    def cursor(self, partition: str) -> dict[str, Any] | None:
        """The partition's committed incremental cursor (``None``: never synced)."""
        return self._cursors.get(partition)

    def run(self, partition: str) -> dict[str, Any] | None:
        """The partition's incremental run in flight (its filter, the server time it started at...)."""
        return self._runs.get(partition)

    def set_run(self, partition: str, run: dict[str, Any]) -> None:
        """Update the run in flight; written with the partition's next :meth:`save`."""
        self._runs[partition] = run

    async def commit_cursor(self, partition: str, cursor: dict[str, Any]) -> None:
        """Commit a finished partition's next cursor (its run in flight ends) and write the file."""
        async with self._lock:
            self._cursors[partition] = cursor
            self._runs.pop(partition, None)
            await self._write()

    async def reset(self, partitions: Iterable[str] | None = None, *, cursors: bool) -> list[str]:
        """Forget positions and runs in flight (and the cursors too if ``cursors``); all partitions by default.

        Returns the partitions that had something to forget.
        """
        async with self._lock:
            names = set(self._data) | set(self._runs) | (set(self._cursors) if cursors else set())
            if partitions is not None:
                names &= set(partitions)
            for name in names:
                self._data.pop(name, None)
                self._runs.pop(name, None)
                if cursors:
                    self._cursors.pop(name, None)
            await self._write()
            return sorted(names)

    async def _write(self) -> None:
        if self.path is not None:
            await anyio.to_thread.run_sync(atomic_write, self.path, orjson.dumps(self.document()))
