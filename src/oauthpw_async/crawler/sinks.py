"""Where records go: JSON Lines via orjson, or any async callable."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import orjson

from .._paths import Path as KeyPath
from .._paths import dig

__all__ = ["CallableSink", "JsonLinesSink", "ListSink", "Sink"]


class Sink(Protocol):
    """Receives each page's records in order; :meth:`flush` makes them durable.

    The engine calls ``flush`` before it saves a checkpoint past those records.
    """

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Accept one page's records."""
        ...

    async def flush(self) -> None:
        """Make everything written so far durable."""
        ...


class JsonLinesSink:
    """Appends one JSON document per line; ``flush`` fsyncs.

    On open, a torn last line (from a process killed mid-write) is cut off, so the
    file stays valid JSON Lines and a resumed crawl appends cleanly.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.written = 0

    def _repair(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size
            while pos > 0:  # find the last newline, reading backwards in blocks
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                block = f.read(step)
                idx = block.rfind(b"\n")
                if idx >= 0:
                    f.truncate(pos + idx + 1)
                    return
            f.truncate(0)

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Append the records (buffered; see :meth:`flush`)."""
        if records:
            self._file.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
            self.written += len(records)

    async def flush(self) -> None:
        """Flush and fsync in a worker thread."""
        self._file.flush()
        await anyio.to_thread.run_sync(os.fsync, self._file.fileno())

    async def existing_keys(self, path: KeyPath) -> list[Any]:
        """The values at ``path`` (a primary key) of every record already in the file."""
        self._file.flush()

        def scan() -> list[Any]:
            keys: list[Any] = []
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        keys.append(dig(orjson.loads(line), path))
                    except orjson.JSONDecodeError:
                        continue  # a torn last line is repaired on open; nothing to learn from it
            return keys

        return await anyio.to_thread.run_sync(scan)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class CallableSink:
    """Calls ``fn(record)`` for every record (an async function: a queue put, a DB insert...)."""

    def __init__(self, fn: Callable[[Any], Awaitable[None]]) -> None:
        self._fn = fn

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Await ``fn`` once per record, in order."""
        for record in records:
            await self._fn(record)

    async def flush(self) -> None:
        """Nothing to do: each call has returned."""


class ListSink:
    """Keeps records in memory: for tests and small crawls only."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Append to :attr:`records`."""
        self.records.extend(records)

    async def flush(self) -> None:
        """Nothing to do."""
