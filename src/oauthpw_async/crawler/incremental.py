"""Incremental sync: read only what changed since the last run, and lose nothing at the boundaries.

A crawler opts in with :attr:`~oauthpw_async.crawler.Crawler.updated_field` and a
:meth:`~oauthpw_async.crawler.Crawler.changed_since` hook (a "changed since X" filter), or with
:attr:`~oauthpw_async.crawler.Crawler.delta_path` (a token the server hands out at the end of a
round: Graph ``@odata.deltaLink``, Zendesk ``after_cursor``).

How the next run's filter is chosen, per partition (the proof sketch is in the README):

* ``M`` = the largest update time delivered in this run; ``S`` = the server's time when the
  partition's run started (its first answer's ``Date``; the client clock minus
  :attr:`~oauthpw_async.crawler.Crawler.clock_skew` only when there is none).
* next cursor = ``S`` when it came from the server's ``Date`` (the run read every record updated
  before it, so a bulk update stamped at one moment is not read again by every later run), else
  ``min(M, S)``; never below the previous cursor, except that a record seen twice in one run with
  a newer update time (it *moved* under offset paging, which skips one unseen record per move)
  lowers it to that record's first-seen update time. No record delivered: unchanged. The bound
  that holds: a record whose update becomes visible within ``lookback`` of its update time is read.
* the next run asks for ``since = floor(cursor - lookback, filter_precision)`` with ``>=``.
* records re-delivered because of the lookback are dropped when their primary key and update
  time equal what an earlier run wrote (the keys of records at or after the next ``since`` are
  kept with the cursor, at most :attr:`~oauthpw_async.crawler.Crawler.max_recent_keys`).
* the cursor is committed only when the partition finished complete, after its records are in
  the sink; a stopped run resumes from its positions (whose requests carry the filter).
* ``ordered_by_updated``: pages seek instead of counting rows. After each page the next request
  is ``changed_since(T)`` with ``T`` the last update time read, so rows deleted or moved behind
  the page cannot make the crawl skip one; offsets are used only inside a tie group larger than a
  page, and a shift there (seen through one row of overlap, a changed total or a move) reads the
  group again from its first row.
* de-duplication compares versions (update time and content), never keys alone: a record read
  again after an expired position is written unless this very version was.

This module holds the pure parts (timestamp parsing, the cursor state and its arithmetic) and
:class:`IncrementalSync`, the engine's helper that applies them.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import heapq
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import orjson

from .._paths import MISSING, Path, dig, lookup
from ..clock import Clock
from ..errors import PageShapeError, StateError, UsageError
from .checkpoint import Checkpoints
from .pagination import Cursor, LinkHeader, Offset, Page, PageNumber, PageRequest, Paginator, resolve

if TYPE_CHECKING:
    from .base import Crawler, Partition
    from .engine import PartitionStats

__all__ = [
    "CursorState",
    "CursorStore",
    "ExportCursor",
    "IncrementalSync",
    "RunKeys",
    "RunState",
    "SyncStats",
    "content_digest",
    "format_time",
    "key_digest",
    "next_cursor",
    "next_since",
    "parse_timestamp",
    "server_time",
    "step_back",
    "tombstone",
]

log = logging.getLogger("oauthpw_async.crawler")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# --- timestamps --------------------------------------------------------------------------------------


def _from_epoch(value: int | float) -> datetime:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude.

    Seconds below 1e11 (until year 5138), milliseconds below 1e14, microseconds below 1e17:
    so milliseconds before 1973-03-03 would be misread as seconds (no update time is that old).
    """
    magnitude = abs(value)
    if magnitude < 1e11:
        scale = 1_000_000
    elif magnitude < 1e14:
        scale = 1_000
    elif magnitude < 1e17:
        scale = 1
    else:
        return EPOCH + _US * (int(value) // 1000 if isinstance(value, int) else round(value / 1000))
    micros = value * scale if isinstance(value, int) else round(value * scale)
    return EPOCH + _US * micros


def parse_timestamp(value: Any) -> datetime | None:
    """An update time in any common format, as an aware UTC datetime; ``None`` for null or empty.

    Accepted: ISO 8601 with or without an offset (``Z``, ``+05:30``, ``+0000``; no offset means
    UTC), ``YYYY-MM-DD HH:MM:SS`` (UTC), a date alone (midnight UTC), fractions of any length
    (kept to the microsecond), epoch seconds / milliseconds / microseconds / nanoseconds as
    numbers or digit strings (told apart by magnitude), and :class:`datetime` objects.

    Raises:
        PageShapeError: anything else (the field does not hold an update time).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            return _from_epoch(value)
        if isinstance(value, str):
            text = value.strip()
            whole, dot, fraction = text.partition(".")
            if (
                whole.lstrip("+-").isdigit()
                and len(whole) - len(whole.lstrip("+-")) <= 1
                and (not dot or fraction.isdigit())
            ):
                if not fraction or abs(int(whole)) >= 1e11:
                    return _from_epoch(int(whole) if not fraction else float(text))
                # seconds with a fraction ("1700000000.123456", Slack): exact, unlike a float
                sign = -1 if whole.startswith("-") else 1
                return _from_epoch(int(whole)) + sign * _US * int(fraction[:6].ljust(6, "0"))
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is UTC:
                return parsed
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        raise TypeError
    except (TypeError, ValueError, OverflowError):
        shown = repr(value)[:80]
        raise PageShapeError(
            f"{shown} is not an update time: use ISO 8601, 'YYYY-MM-DD HH:MM:SS' or epoch seconds/milliseconds, "
            "or override parse_updated()"
        ) from None


def format_time(moment: datetime) -> str:
    """``2024-01-02T03:04:05.123456Z``: how times are written in the state file."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def micros(moment: datetime) -> int:
    """Epoch microseconds."""
    return (moment - EPOCH) // _US


def server_time(headers: Mapping[str, str]) -> datetime | None:
    """The server's clock from an answer's ``Date`` header (RFC 9110 §6.6.1), or ``None``."""
    value = headers.get("Date")
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def next_since(cursor: datetime, lookback: timedelta, precision: timedelta) -> datetime:
    """The filter of the run after ``cursor``: ``cursor - lookback``, floored to the filter's precision."""
    step = max(1, precision // _US)
    value = micros(cursor - lookback)
    return EPOCH + _US * (value - value % step)


def key_digest(value: Any) -> bytes:
    """A fixed-size, type-aware digest of a primary key (the engine's own, 16 bytes)."""
    return hashlib.blake2b(orjson.dumps(value), digest_size=16).digest()


def tombstone(record: Any, key: Any) -> dict[str, Any]:
    """What the sink receives for a deleted record: ``{"_deleted": true, "_key": key, "record": record}``.

    ``_key`` is the record's primary key (``None`` when the crawler declares none); ``record`` is
    what the source sent (Graph: ``{"id": ..., "@removed": {...}}``; Zendesk: the ticket).
    """
    return {"_deleted": True, "_key": key, "record": record}


# --- state ---------------------------------------------------------------------------------------------


def _time_or_none(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise StateError(f"the state's {what} {value!r} is not a time; run `oauthpw-async state reset`") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


#: How many times one partition's run reads a tie group again because rows may have shifted under its offsets.
MAX_REWINDS = 8

#: Recent keys are stored packed: 16-byte key digest, 8-byte update time (µs), 8-byte content digest.
_ENTRY = 32


def _pack(recent: Mapping[bytes, tuple[int, int]]) -> str:
    blob = b"".join(d + t.to_bytes(8, "big", signed=True) + c.to_bytes(8, "big") for d, (t, c) in recent.items())
    return base64.b64encode(blob).decode()


def _unpack(text: str) -> dict[bytes, tuple[int, int]]:
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        blob = b"?"
    if len(blob) % _ENTRY:
        raise StateError("the state's recent keys are damaged; run `oauthpw-async state reset`")
    return {
        blob[i : i + 16]: (
            int.from_bytes(blob[i + 16 : i + 24], "big", signed=True),
            int.from_bytes(blob[i + 24 : i + 32], "big"),
        )
        for i in range(0, len(blob), _ENTRY)
    }


def content_digest(record: Any) -> int:
    """A 64-bit digest of a record's content (keys sorted): tells a re-delivery from a new version."""
    blob = orjson.dumps(record, default=repr, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


@attrs.define
class CursorState:
    """A partition's committed incremental state: where the next run starts.

    ``recent`` maps primary-key digests to the update time (epoch µs) and content digest they were
    written with, for the records at or after the next run's ``since``: re-delivered unchanged,
    they are dropped. The content is compared, not only the time: a record updated twice within
    the source's time precision (the same second) has the same update time but a new content.
    """

    cursor: datetime | None = None
    token: str | None = None
    recent: dict[bytes, tuple[int, int]] = attrs.field(factory=dict)
    runs: int = 0
    #: Facts about the run that set this cursor (shown by ``oauthpw-async state show``).
    last_run: dict[str, Any] = attrs.field(factory=dict)

    def describe(self) -> str | None:
        """The cursor for people: a time, a delta token (shortened), or ``None`` (never synced)."""
        if self.token is not None:
            short = self.token if len(self.token) <= 40 else f"...{self.token[-32:]}"
            return f"token {short}" + (f" ({format_time(self.cursor)})" if self.cursor else "")
        return format_time(self.cursor) if self.cursor is not None else None

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        return {
            "cursor": format_time(self.cursor) if self.cursor else None,
            "token": self.token,
            "recent": _pack(self.recent),
            "recent_count": len(self.recent),
            "runs": self.runs,
            "last_run": self.last_run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CursorState:
        """Inverse of :meth:`to_json` (``None``: never synced)."""
        if not data:
            return cls()
        token = data.get("token")
        return cls(
            cursor=_time_or_none(data.get("cursor"), "cursor"),
            token=str(token) if token is not None else None,
            recent=_unpack(str(data.get("recent") or "")),
            runs=int(data.get("runs", 0)),
            last_run=dict(data.get("last_run") or {}),
        )


Mode = Literal["full", "incremental", "delta"]


@attrs.define
class RunState:
    """A partition's run in flight, saved with its positions so a stopped run resumes as it was."""

    mode: Mode
    since: datetime | None = None
    server_start: datetime | None = None
    max_seen: datetime | None = None
    floor: datetime | None = None
    token: str | None = None
    #: The filter of the pages being read now, when the crawl seeks by update time.
    seek: datetime | None = None
    #: The saved position counts rows inside one update time (a tie group larger than a page).
    grouped: bool = False
    #: The earliest filter whose pages were counted by offsets in this run (moves there skip rows).
    exposed: datetime | None = None
    #: ``server_start`` came from the server's ``Date`` header (not from the client's clock).
    dated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The state file's form."""
        out: dict[str, Any] = {"mode": self.mode, "token": self.token, "grouped": self.grouped, "dated": self.dated}
        for name in ("since", "server_start", "max_seen", "floor", "seek", "exposed"):
            value = getattr(self, name)
            out[name] = format_time(value) if value is not None else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunState:
        """Inverse of :meth:`to_json`."""
        mode = data.get("mode")
        if mode not in ("full", "incremental", "delta"):
            raise StateError(f"the state's run mode {mode!r} is unknown; run `oauthpw-async state reset`")
        token = data.get("token")
        return cls(
            mode=mode,
            since=_time_or_none(data.get("since"), "since"),
            server_start=_time_or_none(data.get("server_start"), "server time"),
            max_seen=_time_or_none(data.get("max_seen"), "largest update time"),
            floor=_time_or_none(data.get("floor"), "floor"),
            token=str(token) if token is not None else None,
            seek=_time_or_none(data.get("seek"), "seek"),
            grouped=data.get("grouped") is True,
            exposed=_time_or_none(data.get("exposed"), "exposed"),
            dated=data.get("dated") is True,
        )


def next_cursor(
    previous: CursorState,
    run: RunState,
    candidates: Iterable[tuple[int, bytes, int]],
    *,
    lookback: timedelta,
    precision: timedelta,
    max_recent: int,
    server_clock: bool = True,
) -> CursorState:
    """The cursor after a complete run (pure: the whole correctness argument is here).

    Args:
        previous: the committed state the run started from.
        run: what the run saw (``max_seen`` = M, ``server_start`` = S, ``floor`` from moves,
            the newest delta ``token``).
        candidates: ``(update time µs, key digest, content digest)`` of records delivered in the
            run, for the re-delivery memory; only those at or after the next ``since`` are kept.
        lookback: :attr:`Crawler.lookback`.
        precision: :attr:`Crawler.filter_precision`.
        max_recent: at most this many keys are kept (the newest).
        server_clock: :attr:`Crawler.cursor_at_server_time`: a ``Date``-stamped S may be the cursor.
    """
    token = run.token if run.token is not None else previous.token
    recent: dict[bytes, tuple[int, int]]
    if run.max_seen is None:  # nothing delivered: the previous cursor still stands
        cursor, recent = previous.cursor, previous.recent
    else:
        # min(M, S): every record updated during the run (at or after S) is inside the next filter,
        # and a server clock ahead of the records cannot push the cursor past unseen ones.
        if run.server_start is None:
            cursor = run.max_seen
        elif run.dated and server_clock:
            # The run read every record updated before S by the server's own clock (those updated
            # during it are at or after S, inside the next filter; a record that moved lowers the
            # cursor below): the cursor may pass the newest record up to S, so a bulk update stamped
            # at one moment is not read again by every later run.
            cursor = run.server_start
        else:  # S from the client's clock (no Date header): no later than the newest record seen
            cursor = min(run.max_seen, run.server_start)
        if previous.cursor is not None:
            cursor = max(cursor, previous.cursor)
        if run.floor is not None:  # a record moved during the crawl: re-read from where it was
            cursor = min(cursor, run.floor)
        horizon = micros(next_since(cursor, lookback, precision))
        recent = {}
        for t, d, c in heapq.nlargest(max_recent, (e for e in candidates if e[0] >= horizon)):
            recent.setdefault(d, (t, c))  # newest first: a record seen twice keeps its newer version
    facts = {
        "mode": run.mode,
        "since": format_time(run.since) if run.since else None,
        "server_start": format_time(run.server_start) if run.server_start else None,
        "max_seen": format_time(run.max_seen) if run.max_seen else None,
        "floor": format_time(run.floor) if run.floor else None,
    }
    return CursorState(cursor=cursor, token=token, recent=recent, runs=previous.runs + 1, last_run=facts)


_NO_TIME = -(2**62)
_LOW64 = (1 << 64) - 1


class RunKeys:
    """The primary keys written in this run (digests), each with the version it was written with.

    The engine's one key store for an incremental crawler: it de-duplicates within the run like
    the plain set does, and tells a new version (a record updated during the crawl, which may
    have moved) from a repeat. A version is packed in one int (update µs << 64 | content digest)
    to keep a million keys small.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[bytes, int | None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: bytes, updated: int | None = None, content: int | None = None) -> None:
        """Remember ``key`` with the version written (unknown when ``content`` is ``None``)."""
        if content is None:
            self._seen[key] = None
        else:
            self._seen[key] = ((_NO_TIME if updated is None else updated) << 64) | content

    def update(self, keys: Iterable[bytes]) -> None:
        """Remember keys whose version is unknown (already in the sink)."""
        for key in keys:
            self._seen.setdefault(key, None)

    def written(self, key: bytes) -> tuple[bool, int | None, int | None]:
        """``(seen, update time µs, content digest)``; the last two are ``None`` when unknown."""
        if key not in self._seen:
            return False, None, None
        packed = self._seen[key]
        if packed is None:
            return True, None, None
        updated = packed >> 64
        return True, (None if updated == _NO_TIME else updated), packed & _LOW64


@attrs.define
class SyncStats:
    """What incremental sync did for one partition in this run (``PartitionStats.sync``)."""

    #: ``full`` (no cursor yet, or a full refresh), ``incremental`` (a since-filter) or ``delta`` (a token).
    mode: Mode
    #: The run continued from positions saved by a stopped run.
    resumed: bool = False
    #: The filter's lower bound, when ``incremental``.
    since: str | None = None
    cursor_before: str | None = None
    #: Set when the partition finished (``None`` while running or when it failed).
    cursor_after: str | None = None
    #: Records not written again: same primary key and update time as an earlier run wrote.
    redelivered: int = 0
    #: Records seen again in this run with a newer update time (they moved during the crawl).
    moves: int = 0
    #: Deleted records, written as tombstones.
    tombstones: int = 0
    #: Records without a usable update time (written, but they cannot move the cursor).
    untimed: int = 0
    #: Whether the cursor was committed (``False`` when the partition was incomplete).
    committed: bool = False


@attrs.frozen
class ExportCursor:
    """Zendesk-style incremental export paging: a cursor sent back until ``end_path`` says the stream ended.

    The first request carries ``start_time``; the following ones only the cursor. The last
    cursor is also the delta token of the next run (``delta_path = "after_cursor"``,
    ``delta_param = "cursor"``).
    """

    cursor_path: Path = "after_cursor"
    param: str = "cursor"
    end_path: Path = "end_of_stream"
    #: Parameters of the first request the cursor replaces.
    replaces: tuple[str, ...] = ("start_time",)

    @property
    def locator_path(self) -> Path:
        """Where the cursor is read from."""
        return self.cursor_path

    def start(self, request: PageRequest) -> PageRequest:
        """The first request as is."""
        return request

    def end_signalled(self, page: Page) -> bool:
        """``end_path`` is true."""
        return dig(page.data, self.end_path) is True

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """The cursor request, unless the stream ended."""
        cursor = dig(page.data, self.cursor_path)
        if self.end_signalled(page) or not isinstance(cursor, str) or not cursor:
            return None
        kept = tuple((k, v) for k, v in page.request.params if k not in self.replaces and k != self.param)
        return PageRequest(page.request.url, (*kept, (self.param, cursor)))


# --- the engine's helper ---------------------------------------------------------------------------------


def _overrides(crawler: Crawler, name: str) -> bool:
    method = getattr(type(crawler), name)
    return not (
        getattr(method, "__module__", "") == "oauthpw_async.crawler.base"
        and getattr(method, "__qualname__", "") == f"Crawler.{name}"
    )


class _DeltaEnds:
    """A strategy for which a page carrying the delta token is a last page (Graph's ``@odata.deltaLink``).

    The completeness check then knows that a one-page delta ended; everything else is the strategy's.
    """

    def __init__(self, inner: Paginator, delta_path: Path) -> None:
        self._inner = inner
        self._delta_path = delta_path

    def start(self, request: PageRequest) -> PageRequest:
        return self._inner.start(request)

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        return self._inner.next(page, records)

    def end_signalled(self, page: Page) -> bool:
        own = getattr(self._inner, "end_signalled", None)
        if own is not None and own(page):
            return True
        return lookup(page.data, self._delta_path) not in (MISSING, None, "")

    def __getattr__(self, name: str) -> Any:  # plan, locator_path: as the strategy has them
        return getattr(self._inner, name)


class _Tracker:
    __slots__ = ("chain_total", "count", "distinct", "expect", "heap", "last", "last_key", "name", "ordered",
                 "origin", "previous", "problems", "request", "rewind", "rewinds", "rewound", "run", "seeking",
                 "stats")  # fmt: skip

    def __init__(self, name: str, previous: CursorState, run: RunState, stats: SyncStats) -> None:
        self.name = name
        self.previous = previous
        self.run = run
        self.stats = stats
        self.heap: list[tuple[int, bytes, int]] = []  # the newest delivered (update µs, key, content)
        self.distinct = 0  # primary keys first delivered in this run by this process
        self.seeking = False  # pages are read by seeking from the last update time delivered
        self.origin: PageRequest | None = None  # the partition's first request, before any filter
        self.last: int | None = None  # the last page's last update time (µs), when it had one
        self.ordered = True  # the last page was in update-time order
        self.problems: list[str] = []
        self.chain_total: int | None = None  # the total the filter read by offsets announced last
        self.rewind: datetime | None = None  # read again from here: rows there may have been skipped
        self.rewinds = 0
        self.rewound = False
        self.last_key: bytes | None = None  # the key of the last record of the last page
        self.expect: bytes | None = None  # the key the next page must start with (it overlaps by one row)
        self.count = 0  # records on the last page
        self.request: PageRequest | None = None  # the last page's request


def _query(request: PageRequest) -> dict[str, str]:
    query = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
    query.update(request.params)
    return query


def step_back(current: PageRequest, proposed: PageRequest, count: int) -> PageRequest | None:
    """``proposed`` started one row earlier, when one of its parameters counts rows; else ``None``.

    The counting parameter is the one that grew by ``count`` (the records on the page of
    ``current``) from ``current`` to ``proposed``, in the query string or the parameters: a next
    link's ``sysparm_offset``, ``start`` or ``startAt``. Page numbers and opaque cursors do not.
    """
    before, after = _query(current), _query(proposed)
    counting = []
    for name, value in after.items():
        old = before.get(name, "0")
        if value.isdigit() and old.isdigit() and value != before.get(name) and int(value) == int(old) + count:
            counting.append(name)
    if len(counting) != 1 or count < 1:
        return None
    name = counting[0]
    value = str(int(after[name]) - 1)
    if name in dict(proposed.params):
        return proposed.with_params(**{name: value})
    parts = urlsplit(proposed.url)
    query = [(k, value if k == name else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return PageRequest(urlunsplit(parts._replace(query=urlencode(query))), proposed.params)


def _may_shift(paginator: Paginator) -> bool:
    """Whether rows can move under the strategy's positions (offsets, or next links that may hide one)."""
    return not isinstance(paginator, (Cursor, ExportCursor))


@runtime_checkable
class CursorStore(Protocol):
    """Where incremental sync keeps cursors and runs in flight, beside the positions.

    :class:`~oauthpw_async.crawler.Checkpoints` (a state file) is one; a store that keeps positions
    elsewhere than a state file may be another. A run in flight set with :meth:`set_run` is stored
    with the partition's next position save.
    """

    def is_done(self, partition: str) -> bool:
        """Whether the partition finished (in this run)."""
        ...

    def resume_from(self, partition: str) -> PageRequest | None:
        """The saved next page, if the partition was started."""
        ...

    def problems(self, partition: str) -> list[str]:
        """Why a finished partition may be missing records."""
        ...

    def cursor(self, partition: str) -> dict[str, Any] | None:
        """The partition's committed cursor (:meth:`CursorState.to_json`; ``None``: never synced)."""
        ...

    def run(self, partition: str) -> dict[str, Any] | None:
        """The partition's run in flight (:meth:`RunState.to_json`), if one is."""
        ...

    def set_run(self, partition: str, run: dict[str, Any]) -> None:
        """Update the run in flight; stored with the partition's next position save."""
        ...

    async def commit_cursor(self, partition: str, cursor: dict[str, Any]) -> None:
        """Commit a finished partition's next cursor; its run in flight ends."""
        ...

    async def reset(self, partitions: Iterable[str] | None = None, *, cursors: bool) -> list[str]:
        """Forget positions and runs in flight (cursors too if ``cursors``): a new run begins."""
        ...


class IncrementalSync:
    """Applies incremental sync for one crawl; the engine calls it at the start, per page and at the end.

    Cursors and runs in flight live in a :class:`CursorStore`: the state file's ``cursors`` and
    ``runs`` sections (apart from the positions in ``partitions``), or wherever another store keeps them.
    """

    def __init__(self, crawler: Crawler, checkpoints: CursorStore, clock: Clock, *, full_refresh: bool = False) -> None:
        self.crawler = crawler
        self.full_refresh = full_refresh
        self._checkpoints = checkpoints
        self._clock = clock
        self._trackers: dict[str, _Tracker] = {}
        name = type(crawler).__name__
        if crawler.delta_path is None and not _overrides(crawler, "changed_since"):
            raise UsageError(
                f"{name} declares updated_field but no changed_since(partition, since): say how to ask the "
                "source for records changed since a time (or declare delta_path for a server-side delta token)"
            )
        if not isinstance(crawler.lookback, timedelta) or crawler.lookback < timedelta(0):
            raise UsageError(f"{name}.lookback must be a timedelta of zero or more")
        if not isinstance(crawler.filter_precision, timedelta) or crawler.filter_precision < _US:
            raise UsageError(f"{name}.filter_precision must be a positive timedelta")
        self.keys: RunKeys | None = RunKeys() if crawler.primary_key is not None else None
        if isinstance(checkpoints, Checkpoints) and checkpoints.path is None:
            log.warning("%s is incremental but has no state file: every run reads everything", name)
        pagination = crawler.pagination
        offset_like = pagination in ("offset", "page_number", "link_header") or isinstance(
            pagination, (Offset, PageNumber, LinkHeader)
        )
        self._shifts = _may_shift(resolve(pagination))
        self._back: Callable[[PageRequest], PageRequest] | None = None
        if crawler.primary_key is None and crawler.delta_path is None and offset_like:
            log.warning(
                "%s: incremental sync over offset pagination without a primary_key: a record updated during a "
                "crawl moves and makes the next page skip one record, which cannot be detected; declare "
                "primary_key (or use keyset pagination)",
                name,
            )
        elif crawler.delta_path is None and offset_like and not crawler.ordered_by_updated:
            log.warning(
                "%s: incremental sync over offset pagination counts rows: a record deleted during a run while "
                "another is created shifts an unseen record past a page, and no count can show it; when the "
                "listing and changed_since() are ordered by update time, set ordered_by_updated = True so that "
                "pages seek by time instead",
                name,
            )

    def paginator(self, paginator: Paginator) -> Paginator:
        """The crawler's strategy, knowing that a page with the delta token is a last page."""
        self._back = getattr(paginator, "back", None)  # overlaps pages inside a tie group (offsets)
        if self.crawler.delta_path is None:
            return paginator
        return _DeltaEnds(paginator, self.crawler.delta_path)

    # --- start ---------------------------------------------------------------------------------------

    async def prepare(self, names: Sequence[str]) -> None:
        """Before the crawl: a full refresh, a finished run to commit, or a new run to begin."""
        cp = self._checkpoints
        if self.full_refresh:
            await cp.reset(names, cursors=True)
            log.warning("full refresh: the saved cursors are ignored and every partition is read in full")
            return
        for name in names:  # stopped between a partition's end and its commit: commit now
            if cp.is_done(name):
                await self.settle(name)
        if names and all(cp.is_done(n) for n in names):
            await cp.reset(names, cursors=False)  # the last run finished: this is a new one

    async def settle(self, name: str) -> None:
        """Commit the cursor of a partition whose last page was saved but whose cursor was not (a stop between)."""
        cp = self._checkpoints
        saved = cp.run(name)
        if saved is not None:
            previous = CursorState.from_json(cp.cursor(name))
            await self._commit(name, previous, RunState.from_json(saved), [], cp.problems(name), None)

    def start(self, partition: Partition, request: PageRequest, ps: PartitionStats) -> PageRequest:
        """The partition's first request, with the since-filter or the delta token."""
        crawler, cp, name = self.crawler, self._checkpoints, partition.name
        previous = CursorState.from_json(cp.cursor(name))
        saved = cp.run(name)
        resumed = saved is not None and cp.resume_from(name) is not None
        if saved is not None:
            run = RunState.from_json(saved)
        elif crawler.delta_path is not None and previous.token is not None:
            run = RunState("delta")
        elif crawler.updated_field is not None and previous.cursor is not None and _overrides(crawler, "changed_since"):
            run = RunState("incremental", since=next_since(previous.cursor, crawler.lookback, crawler.filter_precision))
        else:
            run = RunState("full")
        seeking = (
            crawler.ordered_by_updated
            and run.mode != "delta"
            and crawler.updated_field is not None
            and _overrides(crawler, "changed_since")
        )
        if saved is None:
            run.seek = run.since
        if resumed and self._shifts and run.mode != "delta" and not seeking:
            # Rows may have moved while the crawl was stopped (deletions, updates): under positions that
            # count rows, the resumed pages can skip records ordered after the saved position, anywhere
            # in the run's filter. The next run reads that filter again. (Seeking needs none of this: a
            # position inside a tie group restarts the group, see resume(), and groups read by offsets
            # before the stop were checked page by page or already lowered the cursor.)
            exposed = run.since or EPOCH
            run.floor = exposed if run.floor is None else min(run.floor, exposed)
            log.warning(
                "partition %s resumed from a position that counts rows: records may have moved while the "
                "crawl was stopped, so the next run reads again from %s",
                name,
                format_time(exposed),
            )
        cp.set_run(name, run.to_json())
        origin = request
        if run.mode == "delta" and previous.token is not None:
            request = crawler.delta_request(partition, request, previous.token)
        elif run.mode == "incremental" and run.since is not None:
            request = request.with_params(**crawler.changed_since(partition, run.since))
        stats = SyncStats(
            mode=run.mode,
            resumed=resumed,
            since=format_time(run.since) if run.since else None,
            cursor_before=previous.describe(),
        )
        tracker = self._trackers[name] = _Tracker(name, previous, run, stats)
        tracker.seeking, tracker.origin = seeking, origin
        ps.sync = stats
        return request

    def seeking(self, name: str) -> bool:
        """Whether the partition's pages are read by seeking from the last update time delivered."""
        return self._trackers[name].seeking

    def restart(self, name: str) -> None:
        """The partition is read again from its start (its saved position expired): seek from its filter."""
        tracker = self._trackers[name]
        tracker.run.seek, tracker.run.grouped = tracker.run.since, False

    def distinct(self, name: str) -> int | None:
        """Primary keys first delivered in this run by this process (``None`` without a primary key)."""
        return self._trackers[name].distinct if self.keys is not None else None

    def problems(self, name: str) -> list[str]:
        """Why the partition may be missing records, as incremental sync saw it."""
        return list(self._trackers[name].problems)

    def next_request(self, partition: Partition, proposed: PageRequest | None, total: int | None) -> PageRequest | None:
        """The page after the last one: ``proposed`` (the strategy's), or a seek from the last update time.

        Seeking (``ordered_by_updated``): the next page is the first of ``changed_since(T)``, with
        ``T`` the last update time delivered floored to the filter's precision. Every record not
        read yet is ordered after the last one delivered, so it is in that filter whatever rows
        before it were deleted or moved: nothing is skipped, and the records at ``T`` already
        delivered are dropped as the same version. When ``T`` is the filter being read (a tie
        group larger than a page), the strategy's offsets go on inside it; if rows may have
        shifted under them meanwhile (the count the filter announces, ``total``, changed or is not
        announced, or a record read there moved), the group is read again from its first row, at
        most :data:`MAX_REWINDS` times a run (then the next run reads again from it).
        """
        tracker = self._trackers[partition.name]
        run = tracker.run
        tracker.rewound = False
        if not tracker.seeking or tracker.origin is None:
            return proposed
        if not tracker.ordered:
            self._stop_seeking(tracker)
            return proposed
        since = (
            None
            if tracker.last is None
            else next_since(EPOCH + _US * tracker.last, timedelta(0), self.crawler.filter_precision)
        )
        grouped = proposed is not None and (since is None or (run.seek is not None and since <= run.seek))
        if grouped and run.grouped and (total is None or total != tracker.chain_total) and run.seek is not None:
            self._shifted(tracker, run.seek)  # rows may have moved under the offsets of this group
        if tracker.rewind is not None:
            return self._rewind(tracker, partition, tracker.origin)
        if proposed is None:
            return None
        if grouped:
            return self._within_group(tracker, proposed, total)
        assert since is not None
        tracker.chain_total = None
        run.seek, run.grouped = since, False
        self._checkpoints.set_run(partition.name, run.to_json())
        return tracker.origin.with_params(**self.crawler.changed_since(partition, since))

    def _stop_seeking(self, tracker: _Tracker) -> None:
        """Records out of update-time order: go on by the strategy; the next run reads this run's filter again."""
        run = tracker.run
        tracker.seeking, run.grouped = False, True
        run.exposed = run.since or EPOCH
        run.floor = run.exposed if run.floor is None else min(run.floor, run.exposed)
        problem = (
            "records were not in update-time order, or had no update time, although ordered_by_updated is "
            "set: order the listing and changed_since() by the update time, or set ordered_by_updated = False"
        )
        tracker.problems.append(problem)
        log.warning("partition %s: %s", tracker.name, problem)
        self._checkpoints.set_run(tracker.name, run.to_json())

    def _rewind(self, tracker: _Tracker, partition: Partition, origin: PageRequest) -> PageRequest:
        """Read a tie group again from its first row: rows at or after its time may have been skipped."""
        assert tracker.rewind is not None
        run = tracker.run
        back, tracker.rewind = tracker.rewind, None
        tracker.rewinds += 1
        tracker.rewound, tracker.chain_total = True, None
        run.seek, run.grouped = next_since(back, timedelta(0), self.crawler.filter_precision), False
        self._checkpoints.set_run(partition.name, run.to_json())
        return origin.with_params(**self.crawler.changed_since(partition, run.seek))

    def _within_group(self, tracker: _Tracker, proposed: PageRequest, total: int | None) -> PageRequest:
        """The next page inside a tie group read by offsets: one row of overlap when a step back is known.

        The next page then starts with this page's last record unless rows before it shifted (and
        the group is read again from its first row); without a step back, the next run reads the
        group again.
        """
        run = tracker.run
        tracker.chain_total = total
        run.grouped = True
        exposed = run.seek or EPOCH
        run.exposed = exposed if run.exposed is None else min(run.exposed, exposed)
        earlier = self._back(proposed) if self._back is not None else None
        if earlier is None and tracker.request is not None:
            earlier = step_back(tracker.request, proposed, tracker.count)  # a next link that counts rows
        if earlier is not None and tracker.last_key is not None and tracker.count > 1:
            proposed, tracker.expect = earlier, tracker.last_key
        else:  # nothing shows a shift here: the next run reads this group again
            run.floor = exposed if run.floor is None else min(run.floor, exposed)
        self._checkpoints.set_run(tracker.name, run.to_json())
        return proposed

    def rewound(self, name: str) -> bool:
        """Whether the last :meth:`next_request` went back to read a group again (its page is read anew)."""
        return self._trackers[name].rewound

    def _shifted(self, tracker: _Tracker, moment: datetime) -> None:
        """Rows at or after ``moment`` may have been skipped: read again from there (or in the next run)."""
        run = tracker.run
        if tracker.rewinds < MAX_REWINDS:
            tracker.rewind = moment if tracker.rewind is None else min(tracker.rewind, moment)
        else:
            run.floor = moment if run.floor is None else min(run.floor, moment)

    def resume(self, partition: Partition, request: PageRequest) -> PageRequest:
        """Where a resumed partition goes on: a position inside a tie group restarts that group."""
        tracker = self._trackers[partition.name]
        run = tracker.run
        if not tracker.stats.resumed or not tracker.seeking or not run.grouped:
            return request
        if run.seek is None or tracker.origin is None:
            return request
        run.grouped = False  # rows may have moved while the crawl was stopped: the group from its first row
        self._checkpoints.set_run(partition.name, run.to_json())
        return tracker.origin.with_params(**self.crawler.changed_since(partition, run.seek))

    # --- per page --------------------------------------------------------------------------------------

    def page(self, name: str, page: Page, records: Sequence[Any], ps: PartitionStats) -> list[Any]:
        """What to write of a page's records: tombstones for deletions, without the known re-deliveries."""
        tracker = self._trackers[name]
        run, stats, crawler = tracker.run, tracker.stats, self.crawler
        self._note_page(run, page)
        self._check_overlap(tracker, page, records)
        keys, key_path, recent = self.keys, crawler.primary_key, tracker.previous.recent
        heap, limit = tracker.heap, crawler.max_recent_keys
        top = run.max_seen
        out: list[Any] = []
        previous: int | None = None
        for record in records:
            try:
                moment = crawler.parse_updated(record)
            except PageShapeError as exc:
                if not stats.untimed:
                    log.warning("partition %s: a record has no usable update time (%s)", name, exc)
                moment = None
            if moment is None:
                stats.untimed += 1
            elif top is None or moment > top:
                top = moment
            updated = micros(moment) if moment is not None else None
            if updated is None or (previous is not None and updated < previous):
                tracker.ordered = False
            previous = updated
            key_value: Any = None
            if keys is not None:
                key_value = dig(record, key_path)
                digest = tracker.last_key = key_digest(key_value)
                content = content_digest(record)
                seen, first, written = keys.written(digest)
                if not seen:
                    tracker.distinct += 1
                elif written is not None and self._known_version(tracker, ps, content, written, updated, first):
                    continue  # the same version again, or an older one (a key from the sink has none)
                keys.add(digest, updated, content)
                if updated is not None:
                    entry = (updated, digest, content)
                    if len(heap) < limit:
                        heapq.heappush(heap, entry)
                    elif limit and entry > heap[0]:
                        heapq.heapreplace(heap, entry)
                    if not seen and recent.get(digest) == (updated, content):
                        stats.redelivered += 1  # an earlier run wrote this very version
                        continue
            if crawler.is_deleted(record):
                stats.tombstones += 1
                out.append(tombstone(record, key_value))
            else:
                out.append(record)
        run.max_seen = top
        tracker.last = previous if tracker.ordered else None
        self._checkpoints.set_run(name, run.to_json())  # saved with this page's position
        return out

    def _note_page(self, run: RunState, page: Page) -> None:
        """What a page tells the run: the server's time at its start (from the first page), the delta token."""
        crawler = self.crawler
        if run.server_start is None:
            stamped = server_time(page.headers)
            run.dated = stamped is not None
            run.server_start = stamped or (datetime.fromtimestamp(self._clock.wall(), UTC) - crawler.clock_skew)
        if crawler.delta_path is not None:
            token = dig(page.data, crawler.delta_path)
            if isinstance(token, str) and token:
                run.token = token

    def _check_overlap(self, tracker: _Tracker, page: Page, records: Sequence[Any]) -> None:
        """Begin the page: it must start with the record the last one ended with, when one row of overlap was asked."""
        tracker.ordered, tracker.last = True, None
        expect, tracker.expect, tracker.last_key, tracker.count = tracker.expect, None, None, len(records)
        tracker.request = page.request
        keys, key_path = self.keys, self.crawler.primary_key
        if expect is not None and keys is not None and (not records or key_digest(dig(records[0], key_path)) != expect):
            self._shifted(tracker, tracker.run.seek or EPOCH)  # rows shifted under the offsets of this group

    def _known_version(
        self, tracker: _Tracker, ps: PartitionStats, content: int, written: int, updated: int | None, first: int | None
    ) -> bool:
        """Whether a record whose key was written in this run, at version ``first``/``written``, is dropped.

        The same version again, or an older one, is dropped (counted a duplicate). A newer one moved
        during the crawl: it is written, and the rows it may have made the offsets skip are read again.
        """
        if content == written:
            ps.duplicates += 1  # the same version again
            return True
        if updated is None or first is None:
            return False
        if updated < first:
            ps.duplicates += 1  # an older version than the one written: keep the newer
            return True
        if updated > first:
            # Updated during the crawl: it moved, and under offset paging the move skipped a
            # record ordered after its old place (whose time is >= first). Seeking restarts each
            # filter at its first row: only a filter counted by offsets (a tie group) at or before
            # the old place can have skipped one.
            run = tracker.run
            tracker.stats.moves += 1
            old = EPOCH + _US * first
            if not tracker.seeking:
                run.floor = old if run.floor is None else min(run.floor, old)
            elif run.exposed is not None and old >= run.exposed:
                self._shifted(tracker, old)
        return False

    # --- end ------------------------------------------------------------------------------------------

    async def finish(self, name: str, problems: Sequence[str], ps: PartitionStats) -> None:
        """After the partition's last page is in the sink: commit the next cursor (if it is complete)."""
        tracker = self._trackers.pop(name)
        ps.sync = tracker.stats
        await self._commit(name, tracker.previous, tracker.run, tracker.heap, problems, tracker.stats)

    async def _commit(
        self,
        name: str,
        previous: CursorState,
        run: RunState,
        candidates: Iterable[tuple[int, bytes, int]],
        problems: Sequence[str],
        stats: SyncStats | None,
    ) -> None:
        crawler = self.crawler
        if problems:
            log.warning("partition %s is incomplete: its cursor stays where it was; the next run reads it again", name)
            new = previous
        else:
            if crawler.delta_path is not None and run.token is None:
                log.warning(
                    "partition %s: no delta token (%r) was on any page; the next run starts from the previous one",
                    name,
                    crawler.delta_path,
                )
            new = next_cursor(
                previous,
                run,
                candidates,
                lookback=crawler.lookback,
                precision=crawler.filter_precision,
                max_recent=crawler.max_recent_keys,
                server_clock=crawler.cursor_at_server_time,
            )
        await self._checkpoints.commit_cursor(name, new.to_json())
        if stats is not None:
            stats.cursor_after = new.describe()
            stats.committed = not problems
