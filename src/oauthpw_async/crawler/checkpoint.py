"""Per-partition crawl positions, saved atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
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
        self._lock = anyio.Lock()
        if self.path is not None and self.path.exists():
            try:
                data = orjson.loads(self.path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise StateError(f"state file {self.path} is damaged ({exc.msg}); delete it to start over") from None
            if not isinstance(data, dict) or not isinstance(data.get("partitions", {}), dict):
                raise StateError(f"state file {self.path} is not a crawl state; delete it to start over")
            self._data = data.get("partitions", {})

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
                blob = orjson.dumps({"version": 1, "partitions": self._data})
                await anyio.to_thread.run_sync(atomic_write, self.path, blob)
