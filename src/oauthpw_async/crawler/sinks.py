"""Where records go: JSON Lines via orjson, or any async callable."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol, Self

import anyio
import orjson

from .._atomic import try_lock
from .._paths import Path as KeyPath
from .._paths import dig
from ..errors import OutputLocked, SinkError

__all__ = ["STREAM", "CallableSink", "JsonLinesSink", "ListSink", "Sink", "StreamSink"]

#: The ``identity`` of a sink that is a stream (stdout): a state file written through it may be
#: resumed into any output, since what the stream's reader took is the reader's.
STREAM = "-"


class Sink(Protocol):
    """Receives each page's records in order; :meth:`flush` makes them durable.

    The engine calls ``flush`` before it saves a checkpoint past those records. A sink may
    also have an ``identity`` string naming where its records go (a file path): the state
    file records it, so resuming into another destination is refused. Sinks without one are
    known by their class.
    """

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Accept one page's records."""
        ...

    async def flush(self) -> None:
        """Make everything written so far durable."""
        ...


def _storage_error(path: Path, doing: str, exc: OSError) -> SinkError:
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "no errno"
    then = "run the crawl again"
    if not doing.startswith(("open", "repair")):
        then += ": positions were saved only for records written before this"
    return SinkError(
        f"cannot {doing} {path}: {exc.strerror or exc} ({code}); free space or fix the file, then {then}",
        path=str(path),
        errno=exc.errno,
        strerror=exc.strerror,
    )


class JsonLinesSink:
    """Appends one JSON document per line; ``flush`` fsyncs.

    The file is locked (``flock``) from construction to :meth:`close`: another sink on it, in
    this process or another, raises :class:`~oauthpw_async.errors.OutputLocked` at once
    instead of interleaving with (or truncating) this one. A torn last line, left by a
    process killed mid-write, is cut off once the lock is held, so the file stays valid JSON
    Lines and a resumed crawl appends cleanly.

    A failure to write or fsync (a full disk...) raises
    :class:`~oauthpw_async.errors.SinkError` with the ``errno``; the sink then refuses every
    further write, so no checkpoint moves past records that may be lost. Use it as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.written = 0
        self._failure: SinkError | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: every write lands at the end, whatever else moved the offset.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise _storage_error(self.path, "open the output", exc) from exc
        try:
            if not try_lock(fd):
                raise OutputLocked(
                    f"output {self.path} is being written by another crawl (in this or another process); "
                    "wait for it to finish or write to another file: two crawls appending to one file lose records",
                    path=str(self.path),
                )
            _repair(fd)
            self._file = os.fdopen(fd, "ab")
        except OSError as exc:
            os.close(fd)
            raise _storage_error(self.path, "repair the output", exc) from exc
        except BaseException:
            os.close(fd)
            raise
        #: Where the records go, for the state file (see :class:`Sink`).
        self.identity = str(self.path.resolve())

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Append the records (buffered; see :meth:`flush`)."""
        self._check()
        if records:
            blob = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
            try:
                self._file.write(blob)
            except OSError as exc:
                self._fail("write to", exc)
            self.written += len(records)

    async def flush(self) -> None:
        """Flush and fsync (the fsync in a worker thread)."""
        self._check()
        try:
            self._file.flush()
            await anyio.to_thread.run_sync(os.fsync, self._file.fileno())
        except OSError as exc:
            self._fail("flush", exc)

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
        """Flush what is buffered, close the file and release the lock (safe to call twice)."""
        if self._file.closed:
            return
        try:
            self._file.close()  # closes the descriptor (and so unlocks) even when the flush fails
        except OSError as exc:
            if self._failure is None:  # after a failure the lost tail was already reported
                self._fail("close", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, doing: str, exc: OSError) -> NoReturn:
        # After a failed write or fsync the file's tail is unknown (and a retried fsync may
        # falsely succeed), so the sink stays failed: no later flush may vouch for lost records.
        self._failure = _storage_error(self.path, doing, exc)
        raise self._failure from exc


def _repair(fd: int) -> None:
    """Cut a torn last line (no newline at the end) off the file open as ``fd``."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    while pos > 0:  # find the last newline, reading backwards in blocks
        step = min(65536, pos)
        pos -= step
        idx = os.pread(fd, step, pos).rfind(b"\n")
        if idx >= 0:
            os.ftruncate(fd, pos + idx + 1)
            return
    os.ftruncate(fd, 0)


class StreamSink:
    """JSON Lines on a binary stream (stdout, a pipe), written off the event loop.

    ``flush`` returns only once every record written before it is in the stream (and on
    disk when the stream is a regular file), so the engine's checkpoint that follows never
    moves past records still in memory: at-least-once holds. A reader that closed the pipe
    surfaces as :class:`BrokenPipeError` from ``flush``, before that page's checkpoint.
    """

    #: A stream: a state written through it may be resumed into any output (see ``fingerprint``).
    identity = STREAM

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._lock = anyio.Lock()
        try:
            self._fsync = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        except (OSError, ValueError):  # no file descriptor (a test double): nothing to fsync
            self._fsync = False

    async def write(self, records: Sequence[Any], partition: str) -> None:
        """Queue one page's records."""
        if records:
            self._pending.append(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))

    async def flush(self) -> None:
        """Write everything queued; a slow reader blocks a worker thread, never the event loop."""
        # The lock orders flushes: a partition whose records another partition's flush took
        # returns only after that write finished.
        async with self._lock:
            if not self._pending:
                return
            blob = b"".join(self._pending)
            self._pending.clear()
            await anyio.to_thread.run_sync(self._write, blob)

    def _write(self, blob: bytes) -> None:
        self._stream.write(blob)
        self._stream.flush()
        if self._fsync:
            os.fsync(self._stream.fileno())


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
