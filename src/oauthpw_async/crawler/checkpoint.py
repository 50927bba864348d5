"""Per-partition crawl positions, saved atomically (temp file, fsync, rename), tied to the crawl that made them.

The state file (version 2)::

    {"version": 2,
     "fingerprint": {"crawler": "pkg.mod.Incidents", "partitions": ["a", "b"],
                     "pagination": "Offset(...)", "output": "/data/incidents.jsonl"},
     "partitions": {"a": {"next": {"url": "/api/x", "params": [["offset", "200"]]}, "done": false, "pages": 2},
                    "b": {"next": null, "done": true, "pages": 7}}}

Positions only make sense for the crawl that saved them: resumed with another crawler class,
other partitions, another pagination or into another output, they would skip records. So
:meth:`Checkpoints.open` compares the recorded :func:`fingerprint` with the running crawl's
and refuses a mismatch (:class:`~oauthpw_async.errors.StateMismatch`) unless told to start
over. Version 1 files (no fingerprint, written by earlier releases) are still resumed, with
a warning, and the running crawl's fingerprint is recorded in them: refusing them would force
every existing crawl to start over on upgrade.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import orjson

from .._atomic import LockFile, atomic_write, remove_stale_temps
from ..errors import StateError, StateLocked, StateMismatch, StateWriteError, UsageError
from ..redact import without_credentials
from .pagination import PageRequest
from .sinks import STREAM

__all__ = ["STATE_VERSION", "Checkpoints", "PositionStore", "fingerprint"]

log = logging.getLogger("oauthpw_async.crawler")

#: The state file format written by this release (version 1 is read too).
STATE_VERSION = 2


def _name_of(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def fingerprint(crawler: object, pagination: object, partitions: Sequence[str], sink: object) -> dict[str, Any]:
    """What a state file belongs to: the crawler class, its partitions, pagination and output.

    ``output`` is the sink's ``identity`` (a :class:`~oauthpw_async.crawler.JsonLinesSink`'s
    resolved path), else the sink's class. A stream (identity ``"-"``, e.g. stdout) matches any
    output: what its reader took is the reader's, so a crawl piped into ``head`` may resume into a file.
    ``pagination`` is the strategy's ``repr`` (its
    settings), or its class when the ``repr`` is the default one with an address in it.
    """
    shown = repr(pagination)
    if shown.startswith("<") and " at 0x" in shown:  # object.__repr__: differs on every run
        shown = _name_of(pagination)
    identity = getattr(sink, "identity", None)
    return {
        "crawler": _name_of(crawler),
        "partitions": sorted(partitions),
        "pagination": shown,
        "output": identity if isinstance(identity, str) else _name_of(sink),
    }


# --- the engine's seam for positions kept elsewhere than a state file ----------------------------------------


class PositionStore(Protocol):
    """What the engine needs of a position store; :class:`Checkpoints` (a state file) is the default one.

    A store holds, per partition, the next page, the pages and records committed, whether the
    partition is done and why it may be incomplete. The engine calls :meth:`save` only after the
    page's records reached the sink. A store that subclasses this protocol inherits :meth:`save`,
    which makes the position every store keeps, and implements :meth:`commit_position` (and
    :meth:`at_rest`, to keep the next page otherwise than as it is given).
    """

    async def open(self, fingerprint: Mapping[str, Any] | None = None) -> None:
        """Start using the store for the crawl described by ``fingerprint``."""
        ...

    def close(self) -> None:
        """Stop using it (safe to call twice)."""
        ...

    def is_done(self, partition: str) -> bool:
        """Whether the partition finished."""
        ...

    def resume_from(self, partition: str) -> PageRequest | None:
        """The saved next page, if the partition was started."""
        ...

    def pages(self, partition: str) -> int:
        """Pages committed."""
        ...

    def records(self, partition: str) -> int:
        """Records committed."""
        ...

    def problems(self, partition: str) -> list[str]:
        """Why a finished partition may be missing records."""
        ...

    def save(
        self,
        partition: str,
        next_request: PageRequest | None,
        pages: int,
        *,
        records: int = 0,
        problems: list[str] | None = None,
    ) -> Awaitable[None]:
        """Commit the partition's next page (``None``: done) with :meth:`commit_position`.

        ``records`` counts the partition's records in the sink so far and ``problems`` says why a
        finished partition may be missing records, so a resumed run still reports them. The page
        is kept as :meth:`at_rest` says.
        """
        if next_request is not None:
            next_request = self.at_rest(next_request)
        position: dict[str, Any] = {
            "next": next_request.to_json() if next_request else None,
            "pages": pages,
            "records": records,
        }
        if problems:
            position["problems"] = list(problems)
        return self.commit_position(partition, position)

    def at_rest(self, request: PageRequest) -> PageRequest:
        """The next page as this store keeps it; by default as it is (the engine already drops what it sent)."""
        return request

    async def commit_position(self, partition: str, position: dict[str, Any]) -> None:
        """Keep ``position`` (``{"next", "pages", "records"}``, and ``"problems"`` when there are some)."""
        ...


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "partitions" and isinstance(old, list) and isinstance(new, list):
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        parts = []
        for what, names in (("added", added), ("removed", removed)):
            if names:
                shown = ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "")
                parts.append(f"{len(names)} {what} ({shown})")
        return f"partitions: {'; '.join(parts)}"
    return f"{key} was {old!r}, now {new!r}"


def _check_entry(path: Path, name: str, entry: Any) -> dict[str, Any]:
    """A partition entry, validated, or a :class:`StateError` that says what is wrong."""

    def bad(what: str) -> StateError:
        return StateError(f"state file {path} is damaged: partition {name!r} {what}; delete it to start over")

    if not isinstance(entry, dict):
        raise bad(f"is {type(entry).__name__}, not an object")
    done, pages, nxt = entry.get("done"), entry.get("pages"), entry.get("next", ...)
    if not isinstance(done, bool):
        raise bad(f"has done={done!r}, not true or false")
    if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
        raise bad(f"has pages={pages!r}, not a count")
    records = entry.get("records", 0)
    if not isinstance(records, int) or isinstance(records, bool) or records < 0:
        raise bad(f"has records={records!r}, not a count")
    problems = entry.get("problems", [])
    if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
        raise bad(f"has problems={problems!r}, not a list of reasons")
    if nxt is None:
        if not done:  # "not done, no next page" would silently restart the partition
            raise bad("is not done but has no next page")
        return entry
    if done:
        raise bad("is done but has a next page")
    if (
        not isinstance(nxt, dict)
        or not isinstance(nxt.get("url"), str)
        or not isinstance(params := nxt.get("params", []), list)
        or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in params)
    ):
        raise bad(f"has next={nxt!r}, not a page request")
    return entry


def _sync_sections(path: Path, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The incremental ``cursors`` and ``runs`` sections of a state document, checked."""
    cursors, runs = data.get("cursors", {}), data.get("runs", {})
    if not isinstance(cursors, dict) or not isinstance(runs, dict):
        raise StateError(f"state file {path} has damaged cursors; run `oauthpw-async state reset --state {path}`")
    for name, entry in [*cursors.items(), *runs.items()]:
        if not isinstance(entry, dict):
            raise StateError(f"state file {path} has a damaged cursor for partition {name!r}; run `state reset`")
    return cursors, runs


class Checkpoints(PositionStore):
    """The next page of each partition, or ``done``. In memory when ``path`` is ``None``.

    The engine calls :meth:`open` at the start of a run (with the crawl's :func:`fingerprint`)
    and :meth:`close` at the end. While open, the state file is locked: a second crawl
    on it, in this process or another, gets :class:`~oauthpw_async.errors.StateLocked` at once.

    Never silently restarted from scratch (that would re-crawl everything, or with another
    output, lose records): a damaged file, one holding no crawl state (``{}``) or one that
    belongs to another crawl is a :class:`~oauthpw_async.errors.StateError` that says what
    is wrong. To start over, delete the file, or pass ``restart=True``.

    Args:
        path: the state file; ``None`` keeps positions in memory only.
        on_mismatch: when the file belongs to another crawl: ``"fail"`` (default, raises
            :class:`~oauthpw_async.errors.StateMismatch`) or ``"restart"`` (log a warning,
            forget the saved positions and crawl from the start).
        restart: forget whatever the file holds (even a damaged one) and crawl from the start.

    Pass one to :meth:`Crawler.crawl <oauthpw_async.crawler.Crawler.crawl>` as ``state``
    to use these options: ``state=Checkpoints("s.json", on_mismatch="restart")``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        on_mismatch: Literal["fail", "restart"] = "fail",
        restart: bool = False,
    ) -> None:
        if on_mismatch not in ("fail", "restart"):
            raise UsageError(f"on_mismatch must be 'fail' or 'restart', not {on_mismatch!r}")
        self.path = Path(path) if path is not None else None
        self.on_mismatch = on_mismatch
        self.restart = restart
        self._data: dict[str, dict[str, Any]] = {}
        self._fingerprint: dict[str, Any] | None = None
        self._cursors: dict[str, dict[str, Any]] = {}  # incremental sync: committed, per partition
        self._runs: dict[str, dict[str, Any]] = {}  # incremental sync: the run in flight, per partition
        self._lock = anyio.Lock()
        self._file_lock = LockFile(self.path.with_name(f".{self.path.name}.lock")) if self.path is not None else None

    def __repr__(self) -> str:
        return f"Checkpoints({str(self.path) if self.path else None!r}, on_mismatch={self.on_mismatch!r})"

    # --- opening -----------------------------------------------------------------------------------

    async def open(self, fingerprint: Mapping[str, Any] | None = None) -> None:
        """Lock the state file, remove temp files a killed run left, read and check it.

        On a restart (or when recording the fingerprint in a version 1 file) the file is
        rewritten at once, so a run killed before its first page cannot leave the old
        positions to be resumed.

        Either returns holding the lock or raises without it (even when cancelled). One crawl
        at a time: a second ``open`` before :meth:`close` raises
        :class:`~oauthpw_async.errors.StateLocked`, on the same object too.
        """
        if self.path is None or self._file_lock is None:
            self._fingerprint = dict(fingerprint) if fingerprint is not None else None
            return
        lock = self._file_lock
        held_before = lock.held
        try:
            await anyio.to_thread.run_sync(self._open, fingerprint)
        except BaseException:
            if lock.held and not held_before:  # cancelled after the worker thread took it
                lock.release()
            raise

    def _open(self, fingerprint: Mapping[str, Any] | None) -> None:
        assert self.path is not None and self._file_lock is not None
        if not self._file_lock.acquire():
            raise StateLocked(
                f"state file {self.path} is in use by another crawl (in this or another process); wait for "
                "it to finish, or give this crawl its own state file",
                path=str(self.path),
            )
        self._fingerprint = dict(fingerprint) if fingerprint is not None else None
        try:
            removed = remove_stale_temps(self.path)
            if removed:
                log.info("removed %d temp file(s) an interrupted run left beside %s", len(removed), self.path)
            if self.restart:
                self._load_cursors_only()
                self._data, self._runs = {}, {}
            elif not self._load():
                return
            self._write()
        except OSError as exc:
            self._file_lock.release()
            raise self._write_error(exc, "use") from exc
        except BaseException:
            self._file_lock.release()
            raise

    def _load(self) -> bool:
        """Read the file into memory; ``True`` when it must be (re)written with this crawl's fingerprint."""
        assert self.path is not None
        data = self._read_document()
        if data is None:
            self._data = {}
            return False  # the first save creates it
        version = data["version"]
        partitions = {name: _check_entry(self.path, name, e) for name, e in data["partitions"].items()}
        self._cursors, self._runs = _sync_sections(self.path, data)
        recorded = data.get("fingerprint") if version == STATE_VERSION else {}
        if not isinstance(recorded, dict):
            raise StateError(f"state file {self.path} is damaged (no fingerprint object); delete it to start over")
        if version == 1 and not partitions:  # earlier releases wrote a state only with a position in it
            raise StateError(f"state file {self.path} holds no positions; delete it to start over")
        if recorded and self._fingerprint:
            return self._resume_if_same_crawl(partitions, recorded)
        if recorded:  # opened without a fingerprint (a tool reading the state): keep the file's
            self._fingerprint = recorded
        elif self._fingerprint:
            log.warning(
                "state file %s was written by an earlier release and does not say which crawl it belongs "
                "to; resuming it as this crawl's (%s) and recording that",
                self.path,
                self._fingerprint,
            )
        self._data = partitions
        return bool(self._fingerprint) and not recorded

    def _read_document(self) -> dict[str, Any] | None:
        """The state file's document, checked to be a crawl state of a known version (``None``: no file yet)."""
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"state file {self.path} is damaged ({exc.msg}); delete it to start over") from None
        if not isinstance(data, dict) or "version" not in data or not isinstance(data.get("partitions"), dict):
            raise StateError(
                f"state file {self.path} holds no crawl state (no version and partitions); it was not written "
                "by a crawl, or was emptied: delete it to start over"
            )
        version = data["version"]
        if version not in (1, STATE_VERSION) or isinstance(version, bool):
            raise StateError(
                f"state file {self.path} has format version {version!r}; this release reads 1 and {STATE_VERSION}: "
                "resume with the release that wrote it, or delete it to start over"
            )
        return data

    def _resume_if_same_crawl(self, partitions: dict[str, Any], recorded: Mapping[str, Any]) -> bool:
        """Take the file's positions if they belong to this crawl (a stream output matches any output).

        Positions of another crawl are dropped when ``on_mismatch`` is ``"restart"`` (or when only the
        output changed and :meth:`_new_output` allows it), else refused. ``True``: rewrite the file.
        """
        assert self._fingerprint is not None
        mine = self._fingerprint
        differences = {
            key: (recorded.get(key), mine.get(key))
            for key in sorted(set(recorded) | set(mine))
            if recorded.get(key) != mine.get(key)
            and not (key == "output" and STREAM in (recorded.get(key), mine.get(key)))
        }
        if not differences:
            self._data = partitions
            return False
        if set(differences) == {"output"} and self._new_output(partitions, *differences["output"]):
            return True
        if self.on_mismatch == "restart":
            what = "; ".join(_describe(k, old, new) for k, (old, new) in differences.items())
            log.warning("state file %s belongs to another crawl (%s); starting over as asked", self.path, what)
            self._data, self._cursors, self._runs = {}, {}, {}
            return True
        raise self._mismatch(differences)

    def _mismatch(self, differences: dict[str, tuple[Any, Any]]) -> StateMismatch:
        """The refusal of another crawl's positions: into another output, or of another crawl altogether."""
        if set(differences) == {"output"}:
            old, new = differences["output"]
            return StateMismatch(
                f"state file {self.path} holds the unfinished positions of a crawl into another output "
                f"({_describe('output', old, new)}); resuming from them would skip records in the new one. "
                f"Continue it into {old}, or start a new crawl into {new} with restart=True (the command "
                "line's --restart), or give it another state file",
                differences=differences,
            )
        what = "; ".join(_describe(k, old, new) for k, (old, new) in differences.items())
        return StateMismatch(
            f"state file {self.path} belongs to another crawl ({what}); resuming from it would skip records. "
            "Resume with the crawl it belongs to, or start over: delete it (and the output), or open it with "
            "restart=True",
            differences=differences,
        )

    def _new_output(self, partitions: dict[str, Any], old: object, new: object) -> bool:
        """A crawl into another output: positions belong to an output, cursors to the crawl.

        An incremental crawl (it has cursors or a run in flight) may write each run to a new output
        (a daily file): the cursors stay, the positions and the run in flight of the old output are
        dropped, so every partition reads from its committed cursor (an unfinished run's partitions
        too: what they wrote to the old output is written again). A full crawl may start into a new
        output once every partition is done. ``False``: the state holds a full crawl's unfinished
        positions, which only the old output can finish.
        """
        unfinished = sorted(name for name, entry in partitions.items() if not entry.get("done"))
        incremental = bool(self._cursors or self._runs)
        if unfinished and not incremental:
            return False
        if unfinished:
            log.warning(
                "state file %s: the run in flight wrote %s into %s; its partitions are read again from their "
                "committed cursors into %s",
                self.path,
                ", ".join(unfinished),
                old,
                new,
            )
        else:
            log.info("state file %s: a new run into %s (the last one wrote to %s)", self.path, new, old)
        self._data, self._runs = {}, {}
        return True

    def _load_cursors_only(self) -> None:
        """On a restart: keep the committed cursors (``--full-refresh`` is what ignores them)."""
        assert self.path is not None
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        if isinstance(data, dict):
            self._cursors, _ = _sync_sections(self.path, data)

    def read(self) -> None:
        """Read the file without locking or changing it, for tools that only look (``state show``).

        Raises:
            StateError: the file is not a usable crawl state.
        """
        if self.path is not None:
            self._fingerprint = None
            self._load()

    def close(self) -> None:
        """Release the state file's lock (safe to call twice, or without :meth:`open`)."""
        if self._file_lock is not None:
            self._file_lock.release()

    # --- positions ---------------------------------------------------------------------------------

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

    def at_rest(self, request: PageRequest) -> PageRequest:
        """``request`` without the query parameters that carry credentials: nothing in the file is secret.

        The engine also drops the tokens it sent (:func:`~oauthpw_async.redact.without_credentials`);
        this keeps direct callers of :meth:`save` safe.
        """
        url, params = without_credentials(request.url, request.params)
        return PageRequest(url, params)

    async def commit_position(self, partition: str, position: dict[str, Any]) -> None:
        """Record the partition's position (done when it has no next page) and write the file atomically.

        Raises :class:`~oauthpw_async.errors.StateWriteError` when the file cannot be written
        (the position then counts as not saved: the next run re-reads that page).
        """
        position["done"] = position["next"] is None
        async with self._lock:
            self._data[partition] = position
            await self._write_now("save")

    def _write(self) -> None:
        assert self.path is not None
        atomic_write(self.path, orjson.dumps(self.document()))

    def _write_error(self, exc: OSError, doing: str) -> StateWriteError:
        return StateWriteError(
            f"cannot {doing} the state file {self.path}: {exc.strerror or exc}; free space or fix the file, then run "
            "the crawl again (it resumes from the last position saved)",
            path=str(self.path),
            errno=exc.errno,
            strerror=exc.strerror,
        )

    # --- incremental sync: committed cursors and runs in flight, apart from the positions ---------------

    def document(self) -> dict[str, Any]:
        """The whole state as written to the file."""
        doc: dict[str, Any] = {
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint or {},
            "partitions": self._data,
        }
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
            await self._write_now("save")

    async def reset(self, partitions: Iterable[str] | None = None, *, cursors: bool) -> list[str]:
        """Forget positions and runs in flight (and the cursors too if ``cursors``); all partitions by default.

        Call it between :meth:`open` and :meth:`close`. Returns the partitions that had something to forget.
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
            await self._write_now("reset")
            return sorted(names)

    async def _write_now(self, doing: str) -> None:
        if self.path is None:
            return
        if self._file_lock is not None and not self._file_lock.held:
            raise UsageError(f"Checkpoints.{doing} before open(): open it first (the engine does)")
        try:
            await anyio.to_thread.run_sync(self._write)
        except OSError as exc:
            raise self._write_error(exc, doing) from exc
