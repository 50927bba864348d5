"""A protected API whose records change: for incremental-sync tests, benchmarks and the demo.

Mount it on :class:`~oauthpw_async.testing.LocalServer` like the demo API:
``LocalServer(auth, api=ChangesAPI(records=10_000))``. Every endpoint checks the bearer token
with :meth:`AuthServerState.check_authorization`.

The dataset is a deterministic base (record ``i`` was last updated at
``base_epoch + (i // ties) * spacing``, so a million records cost no memory) plus an override
map of the records changed, created or deleted since (:meth:`ChangesAPI.update`,
:meth:`~ChangesAPI.create`, :meth:`~ChangesAPI.delete`, or ``POST /control/changes``). Update
times are whole seconds on the server's clock (``now() + clock_offset``), which every answer
also sends as its ``Date`` header.

Switches for what goes wrong in the field: :meth:`ChangesAPI.at` changes the data (or calls
:attr:`~ChangesAPI.on_kill`, to stop the crawl as a kill would) before a given request is
answered, so rows vanish and move between the pages of a crawl; :meth:`~ChangesAPI.expire_positions`
refuses the next saved positions as an expired query locator.

"Changed since" styles, one per real-world family, over the same records:

=========== ==================================================================================
servicenow  ``GET /api/now/table/<table>``: ``sysparm_query=sys_updated_on>=YYYY-MM-DD HH:MM:SS``
            (seconds; ``^ORDERBYsys_updated_on`` or ``^ORDERBYsys_id``), ``sysparm_limit``,
            paged by ``sysparm_offset`` (or a keyset ``sysparm_after`` when ``paging="keyset"``)
            through an absolute ``Link: <...>; rel="next"``; ``X-Total-Count``; deletions vanish.
jira        ``GET /rest/api/2/search``: ``jql=updated >= "yyyy/MM/dd HH:mm" ORDER BY updated``
            (minute precision), ``startAt``/``maxResults``/``total``; deletions vanish.
zendesk     ``GET /api/v2/incremental/tickets/cursor.json``: ``start_time`` (epoch seconds) or
            ``cursor``; ``after_cursor`` + ``end_of_stream``; ordered by (update time, id);
            deleted tickets are listed with ``status: "deleted"``.
graph       ``GET /v1.0/<resource>/delta``: all live records, then ``$deltatoken`` rounds with
            only what changed (``@removed`` for deletions); ``@odata.nextLink`` /
            ``@odata.deltaLink`` (absolute). A round lists what changed after the token it was
            given, so changes made during a round are in the next round too.
=========== ==================================================================================
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeVar

import attrs
import orjson
from aiohttp import web

from .authserver import AuthServerState

if TYPE_CHECKING:
    import random
    from pathlib import Path

    from ..crawler import Crawler
    from ..sources import TokenSource

__all__ = ["ChangesAPI", "RecordState", "describe", "id_of", "incremental_demo", "replay"]

K = TypeVar("K", int, tuple[int, int])


@attrs.frozen
class RecordState:
    """One record's current state on the server."""

    id: int
    updated: int  # epoch seconds, server clock
    version: int
    deleted: bool = False
    seq: int = 0  # position in the change log (0: never changed)


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def describe(record: Any) -> tuple[int, int | None, bool]:
    """``(id, update time in epoch seconds or None, deleted)`` of a record in any style, or of a tombstone."""
    from ..crawler.incremental import parse_timestamp

    if isinstance(record, dict) and record.get("_deleted") is True:
        inner = record.get("record")
        return id_of(inner), None, True
    if "@removed" in record:
        return id_of(record), None, True
    for field in ("sys_updated_on", "updated_at", "lastModifiedDateTime"):
        if field in record:
            stamp = record[field]
            break
    else:
        stamp = record.get("fields", {}).get("updated")
    moment = parse_timestamp(stamp)
    return id_of(record), int(moment.timestamp()) if moment else None, record.get("status") == "deleted"


def replay(batches: Iterable[Iterable[Any]]) -> dict[int, tuple[int | None, bool]]:
    """What a sink holds after these outputs, in order: ``id -> (update time, deleted)``; later records win."""
    held: dict[int, tuple[int | None, bool]] = {}
    for batch in batches:
        for record in batch:
            record_id, updated, deleted = describe(record)
            held[record_id] = (updated, deleted)
    return held


def id_of(record: Any) -> int:
    """The numeric id of a record in any style (``sys_id`` hex, Jira/Graph string ids, tombstones)."""
    if isinstance(record, dict) and record.get("_deleted") is True and isinstance(record.get("record"), dict):
        return id_of(record["record"])
    if "sys_id" in record:
        return int(record["sys_id"], 16)
    return int(record["id"])


class ChangesAPI:
    """Route installer and state of a mutable, paginated, filterable API.

    Args:
        records: base dataset size (ids ``0..records-1``).
        base_epoch: update time of record 0 (epoch seconds).
        spacing: seconds between successive base update times.
        ties: base records share their update time in runs of this length (equal timestamps
            across page boundaries when it does not divide the page size).
        max_page_size: the server caps page sizes.
        paging: ``offset`` or ``keyset`` for the servicenow style's next links.
        clock_offset: seconds added to the server's clock (a server whose clock is skewed).
        date_header: send the server time in ``Date`` (``False`` sends an empty one, as
            useless to a client as none).
        filter_minutes: the servicenow filter ignores seconds, as minute-precision filters do.
        latency: seconds added to every answer.
        prefix: a path the routes are mounted under.
        now: the server's time source (epoch seconds); tests may freeze or step it.
    """

    def __init__(
        self,
        *,
        records: int = 1000,
        base_epoch: int = 1_700_000_000,
        spacing: int = 1,
        ties: int = 1,
        max_page_size: int = 100,
        paging: Literal["offset", "keyset"] = "offset",
        clock_offset: float = 0.0,
        date_header: bool = True,
        filter_minutes: bool = False,
        latency: float = 0.0,
        prefix: str = "",
        now: Callable[[], float] = time.time,
    ) -> None:
        if records < 0 or spacing < 0 or ties < 1 or max_page_size < 1:
            raise ValueError("records and spacing must be >= 0, ties and max_page_size >= 1")
        self.records = records
        self.base_epoch = base_epoch
        self.spacing = spacing
        self.ties = ties
        self.max_page_size = max_page_size
        self.paging = paging
        self.clock_offset = clock_offset
        self.date_header = date_header
        self.filter_minutes = filter_minutes
        self.latency = latency
        self.prefix = prefix.rstrip("/")
        self.now = now
        #: Optional hook called with the number of data requests served so far (before answering):
        #: make changes *during* a crawl from it.
        self.on_request: Callable[[int], None] | None = None
        #: Called when a scheduled kill (:meth:`at` with ``kill=True``) is reached: stop the crawl from it
        #: (cancel its scope, or kill its process), as a SIGKILL would, before the answer is read.
        self.on_kill: Callable[[], None] | None = None
        self._script: dict[int, list[dict[str, Any]]] = {}
        self._expiring = 0
        #: Requests by outcome: ``"servicenow"``, ``"graph"``, ``"control"``, ``"401"``, ``"expired"``...
        self.counts: collections.Counter[str] = collections.Counter()
        #: Data requests being answered now.
        self.inflight = 0
        self.next_id = records
        self.seq = 0
        self._over: dict[int, RecordState] = {}
        self._holes: list[int] = []  # base ids that have an override, sorted
        self._live: list[tuple[int, int]] = []  # (updated, id) of live overridden records, sorted
        self._all: list[tuple[int, int]] = []  # (updated, id) of every overridden record, sorted
        self._by_id_cache: dict[tuple[Any, ...], list[int]] = {}
        self._auth: AuthServerState | None = None

    # --- the dataset ----------------------------------------------------------------------------

    def server_time(self) -> float:
        """The server's clock (epoch seconds)."""
        return self.now() + self.clock_offset

    def base_updated(self, record_id: int) -> int:
        """The update time of a never-changed base record."""
        return self.base_epoch + (record_id // self.ties) * self.spacing

    def state_of(self, record_id: int) -> RecordState | None:
        """A record's current state (``None`` if it never existed)."""
        over = self._over.get(record_id)
        if over is not None:
            return over
        if 0 <= record_id < self.records:
            return RecordState(record_id, self.base_updated(record_id), 0)
        return None

    def final_state(self) -> Iterator[RecordState]:
        """Every record that exists or was deleted, by id (deleted ones with ``deleted=True``)."""
        for i in range(self.next_id):
            state = self.state_of(i)
            if state is not None:
                yield state

    def live_ids(self) -> set[int]:
        """Ids of the records that are not deleted."""
        dead = {i for i, r in self._over.items() if r.deleted}
        return set(range(self.next_id)) - dead

    def differences(self, held: dict[int, tuple[int | None, bool]], *, deletions: bool = True) -> list[str]:
        """How a sink's content (from :func:`replay`) differs from the source's current state.

        Every live record must be held with its current update time; a deleted one must be held
        as deleted or not at all (``deletions=False``: the style does not show deletions, so
        deleted records are not checked). Returns at most 20 descriptions; empty means equal.
        """
        problems: list[str] = []
        for state in self.final_state():
            got = held.get(state.id)
            if state.deleted:
                if deletions and got is not None and not got[1]:
                    problems.append(f"{state.id}: deleted at the source, live in the sink")
            elif got is None:
                problems.append(f"{state.id}: missing")
            elif got[1] or got[0] != state.updated:
                problems.append(f"{state.id}: sink has {got}, source has updated={state.updated}")
            if len(problems) >= 20:
                break
        extra = [i for i in held if self.state_of(i) is None]
        problems.extend(f"{i}: in the sink, never at the source" for i in extra[:5])
        return problems

    def changed_since_seq(self, seq: int) -> list[RecordState]:
        """Records changed, created or deleted after change-log position ``seq``."""
        return sorted((r for r in self._over.values() if r.seq > seq), key=lambda r: r.id)

    def _put(self, state: RecordState) -> None:
        old = self._over.get(state.id)
        if old is not None:
            self._remove(self._all, (old.updated, old.id))
            if not old.deleted:
                self._remove(self._live, (old.updated, old.id))
        elif state.id < self.records:
            bisect.insort(self._holes, state.id)
        self._over[state.id] = state
        bisect.insort(self._all, (state.updated, state.id))
        if not state.deleted:
            bisect.insort(self._live, (state.updated, state.id))
        self._by_id_cache.clear()

    @staticmethod
    def _remove(seq: list[tuple[int, int]], key: tuple[int, int]) -> None:
        i = bisect.bisect_left(seq, key)
        if i < len(seq) and seq[i] == key:
            del seq[i]

    def update(self, ids: Sequence[int]) -> list[int]:
        """Touch these records (update time = now, version + 1); unknown or deleted ids are skipped."""
        return self._change(ids, deleted=False)

    def create(self, count: int) -> list[int]:
        """Create ``count`` new records (new ids at the end)."""
        now = int(self.server_time())
        ids = list(range(self.next_id, self.next_id + count))
        for i in ids:
            self.seq += 1
            self._put(RecordState(i, now, 1, False, self.seq))
        self.next_id += count
        return ids

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete these records (a tombstone timed now, for the styles that show deletions)."""
        return self._change(ids, deleted=True)

    def _change(self, ids: Sequence[int], *, deleted: bool) -> list[int]:
        """A new version of each live record of ``ids``, timed now (``deleted``: a tombstone); returns those ids."""
        now = int(self.server_time())
        done = []
        for i in ids:
            state = self.state_of(i)
            if state is None or state.deleted:
                continue
            self.seq += 1
            self._put(RecordState(i, now, state.version + 1, deleted, self.seq))
            done.append(i)
        return done

    def at(
        self,
        request: int,
        *,
        update: Sequence[int] = (),
        create: int = 0,
        delete: Sequence[int] = (),
        kill: bool = False,
    ) -> None:
        """Before answering data request number ``request`` (0-based, every style counted): change the data.

        Changes between pages (deletions that shift offsets, updates that move records, creations)
        and, with ``kill``, a call of :attr:`on_kill` after them. Several calls for one request add up.
        """
        if request < 0 or create < 0:
            raise ValueError("request and create must be >= 0")
        changes = {"update": list(update), "create": create, "delete": list(delete), "kill": kill}
        self._script.setdefault(request, []).append(changes)

    def clear_schedule(self) -> int:
        """Forget the changes scheduled with :meth:`at` that no request reached yet; returns how many."""
        pending = sum(len(v) for v in self._script.values())
        self._script.clear()
        return pending

    def expire_positions(self, count: int = 1) -> None:
        """Refuse the positions handed out so far, as expired: the next ``count`` requests that carry one.

        A position is an offset past the first row, a keyset or export cursor or a skip token;
        the answer is Salesforce's for an expired query locator: 400 with
        ``[{"errorCode": "INVALID_QUERY_LOCATOR", ...}]``. A request without a position (a first
        page) ends the expiry: the positions the server hands out after it are new.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        self._expiring += count

    @staticmethod
    def _carries_position(query: Any) -> bool:
        for name in ("sysparm_offset", "startAt"):
            if query.get(name, "0") not in ("", "0"):
                return True
        return any(query.get(name) for name in ("sysparm_after", "cursor", "$skiptoken"))

    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``{"update": [ids], "create": n, "delete": [ids]}`` -> what was done (the control API)."""
        updated = self.update([int(i) for i in changes.get("update", [])])
        created = self.create(int(changes.get("create", 0)))
        deleted = self.delete([int(i) for i in changes.get("delete", [])])
        return {"updated": updated, "created": created, "deleted": deleted, "seq": self.seq}

    # --- queries ----------------------------------------------------------------------------------

    def _base_from(self, key: Callable[[int], K], lower: K, strict: bool) -> int:
        """First base index whose key is above (``strict``) or at least ``lower``."""
        find = bisect.bisect_right if strict else bisect.bisect_left
        return find(range(self.records), lower, key=key)

    def _merge(
        self,
        base_lo: int,
        base_key: Callable[[int], K],
        over: list[K],
        over_lo: int,
        over_id: Callable[[K], int],
        offset: int,
        limit: int,
    ) -> tuple[list[int], bool]:
        """Ids at ranks ``offset..offset+limit`` of (live base ids >= base_lo) merged with over[over_lo:].

        Both sequences are sorted by key; overridden base ids (the holes) are skipped in the base.
        The rank of a base index is found by binary search, so deep offsets cost O(log^2 n).
        Returns the ids and whether more follow.
        """
        holes, n = self._holes, self.records
        hole_lo = bisect.bisect_left(holes, base_lo)

        def before(b: int) -> int:  # items ranked before base index b
            live_base = (b - base_lo) - (bisect.bisect_left(holes, b) - hole_lo)
            if b >= n:
                return live_base + len(over) - over_lo
            return live_base + bisect.bisect_left(over, base_key(b), lo=over_lo) - over_lo

        lo, hi = base_lo, n  # largest b with before(b) <= offset
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if before(mid) <= offset:
                lo = mid
            else:
                hi = mid - 1
        b = lo
        ranked = before(b)
        if ranked > offset:  # the offset lies among overrides ranked before every base record
            b, o, skip = base_lo, over_lo, offset
        else:
            skip = offset - ranked
            o = len(over) if b >= n else bisect.bisect_left(over, base_key(b), lo=over_lo)
        hole_set = self._over
        out: list[int] = []
        while len(out) <= limit:  # one more than asked: says whether more follow
            while b < n and b in hole_set:
                b += 1
            if b >= n and skip:  # only overrides left: jump
                o += skip
                skip = 0
            if b < n and (o >= len(over) or base_key(b) < over[o]):
                item, b = b, b + 1
            elif o < len(over):
                item, o = over_id(over[o]), o + 1
            else:
                break
            if skip:
                skip -= 1
            else:
                out.append(item)
        more = len(out) > limit
        return out[:limit], more

    def by_time(
        self, since: int | None, after: tuple[int, int] | None, offset: int, limit: int, *, deleted: bool
    ) -> tuple[list[int], bool]:
        """Ids with update time >= ``since``, ordered by (update time, id), after a keyset position."""
        lower = after if after is not None else (since if since is not None else -(2**62), -1)
        key: Callable[[int], tuple[int, int]] = lambda i: (self.base_updated(i), i)  # noqa: E731
        base_lo = self._base_from(key, lower, strict=True)
        over = self._all if deleted else self._live
        over_lo = bisect.bisect_right(over, lower)
        return self._merge(base_lo, key, over, over_lo, lambda k: k[1], offset, limit)

    def _over_ids(self, since: int | None, deleted: bool, seq: int | None = None) -> list[int]:
        cache_key = (since, deleted, seq)
        ids = self._by_id_cache.get(cache_key)
        if ids is None:
            ids = self._by_id_cache[cache_key] = sorted(
                r.id
                for r in self._over.values()
                if (since is None or r.updated >= since) and (deleted or not r.deleted) and (seq is None or r.seq > seq)
            )
        return ids

    def by_id(
        self, since: int | None, after: int | None, offset: int, limit: int, *, deleted: bool
    ) -> tuple[list[int], bool]:
        """Ids with update time >= ``since``, ordered by id, after a keyset id."""
        # Base update times grow with the id: the base records in the filter are an id range.
        base_lo = 0 if since is None else self._base_from(self.base_updated, since, strict=False)
        if after is not None:
            base_lo = max(base_lo, after + 1)
        over = self._over_ids(since, deleted)
        over_lo = 0 if after is None else bisect.bisect_right(over, after)
        return self._merge(base_lo, lambda i: i, over, over_lo, lambda k: k, offset, limit)

    def count(self, since: int | None, *, deleted: bool) -> int:
        """Records with update time >= ``since``."""
        base_lo = 0 if since is None else self._base_from(self.base_updated, since, strict=False)
        live_base = (self.records - base_lo) - (len(self._holes) - bisect.bisect_left(self._holes, base_lo))
        over = self._all if deleted else self._live
        lower = (since, -1) if since is not None else (-(2**62), -1)
        return live_base + len(over) - bisect.bisect_right(over, lower)

    # --- rendering ----------------------------------------------------------------------------------

    def _state(self, record_id: int) -> RecordState:
        state = self.state_of(record_id)
        assert state is not None
        return state

    def _servicenow(self, s: RecordState) -> dict[str, Any]:
        return {
            "sys_id": f"{s.id:032x}",
            "number": f"INC{s.id:07d}",
            "short_description": f"Record {s.id} version {s.version}",
            "sys_mod_count": str(s.version),
            "sys_updated_on": _utc(s.updated).strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _jira(self, s: RecordState) -> dict[str, Any]:
        stamp = _utc(s.updated).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        return {"id": str(s.id), "key": f"PRJ-{s.id}", "fields": {"summary": f"v{s.version}", "updated": stamp}}

    def _zendesk(self, s: RecordState) -> dict[str, Any]:
        return {
            "id": s.id,
            "subject": f"Ticket {s.id}",
            "status": "deleted" if s.deleted else "open",
            "version": s.version,
            "updated_at": _utc(s.updated).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _graph(self, s: RecordState) -> dict[str, Any]:
        if s.deleted:
            return {"id": str(s.id), "@removed": {"reason": "deleted"}}
        return {
            "id": str(s.id),
            "displayName": f"Item {s.id}",
            "version": s.version,
            "lastModifiedDateTime": _utc(s.updated).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    # --- HTTP ---------------------------------------------------------------------------------------

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        """Install the routes on ``app``, checking tokens against ``auth``."""
        self._auth = auth
        p = self.prefix
        app.router.add_get(f"{p}/api/now/table/{{table}}", self._wrap("servicenow", self._servicenow_page))
        app.router.add_get(f"{p}/rest/api/2/search", self._wrap("jira", self._jira_page))
        app.router.add_get(f"{p}/api/v2/incremental/tickets/cursor.json", self._wrap("zendesk", self._zendesk_page))
        app.router.add_get(f"{p}/v1.0/{{resource:.+}}/delta", self._wrap("graph", self._graph_page))
        app.router.add_post(f"{p}/control/changes", self._control_changes)
        app.router.add_get(f"{p}/control/state", self._control_state)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        response = web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
        if headers:
            response.headers.update(headers)
        response.headers["Date"] = formatdate(self.server_time(), usegmt=True) if self.date_header else ""
        return response

    def _authorized(self, request: web.Request) -> bool:
        assert self._auth is not None
        return self._auth.check_authorization(request.headers.get("Authorization"))

    def _wrap(self, style: str, handler: Callable[[web.Request], web.Response]) -> Callable[[web.Request], Any]:
        async def serve(request: web.Request) -> web.Response:
            self.inflight += 1
            try:
                served = sum(v for k, v in self.counts.items() if k != "control")
                if self.on_request is not None:
                    self.on_request(served)
                for changes in self._script.pop(served, ()):
                    self.apply(changes)
                    if changes["kill"] and self.on_kill is not None:
                        self.on_kill()
                if self.latency:
                    await asyncio.sleep(self.latency)
                if not self._authorized(request):
                    self.counts["401"] += 1
                    return self._json(
                        {"error": "invalid_token"}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                    )
                if self._expiring and not self._carries_position(request.query):
                    self._expiring = 0  # a crawl started afresh: the positions handed out before are never sent
                elif self._expiring:
                    self._expiring -= 1
                    self.counts["expired"] += 1
                    return self._json([{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}], 400)
                self.counts[style] += 1
                try:
                    return handler(request)
                except (ValueError, KeyError) as exc:
                    return self._json({"error": f"bad request: {exc}"}, 400)
            finally:
                self.inflight -= 1

        return serve

    def _limit(self, value: str | None) -> int:
        size = int(value) if value else self.max_page_size
        if size <= 0:
            raise ValueError("page size must be positive")
        return min(size, self.max_page_size)

    def _servicenow_page(self, request: web.Request) -> web.Response:
        q = request.query
        since: int | None = None
        orders: list[str] = []
        for term in q.get("sysparm_query", "").split("^"):
            term = term.strip()
            if term.startswith("sys_updated_on>="):
                moment = datetime.strptime(term[len("sys_updated_on>=") :], "%Y-%m-%d %H:%M:%S")
                since = int(moment.replace(tzinfo=UTC).timestamp())
                if self.filter_minutes:
                    since -= since % 60
            elif term.startswith("ORDERBY"):
                orders.append(term[len("ORDERBY") :])
                if orders[-1] not in ("sys_updated_on", "sys_id"):
                    raise ValueError(f"cannot order by {orders[-1]}")
            elif term:
                raise ValueError(f"unsupported query term {term!r}")
        order = orders[0] if orders else "sys_id"  # the first ORDERBY sorts; ties go by sys_id
        limit = self._limit(q.get("sysparm_limit"))
        offset = int(q.get("sysparm_offset", "0"))
        after_raw = q.get("sysparm_after")
        if order == "sys_updated_on":
            after = tuple(int(x) for x in after_raw.split(".")) if after_raw else None
            ids, more = self.by_time(since, after, 0 if after else offset, limit, deleted=False)  # type: ignore[arg-type]
        else:
            ids, more = self.by_id(since, int(after_raw) if after_raw else None, 0 if after_raw else offset, limit,
                                   deleted=False)  # fmt: skip
        states = [self._state(i) for i in ids]
        headers = {"X-Total-Count": str(self.count(since, deleted=False))}
        if more:
            params = dict(q)
            if self.paging == "keyset":
                last = states[-1]
                params["sysparm_after"] = f"{last.updated}.{last.id}" if order == "sys_updated_on" else str(last.id)
                params.pop("sysparm_offset", None)
            else:
                params["sysparm_offset"] = str(offset + len(ids))
            nxt = request.url.with_query(params)
            headers["Link"] = f'<{nxt}>; rel="next"'
        return self._json({"result": [self._servicenow(s) for s in states]}, headers=headers)

    def _jira_page(self, request: web.Request) -> web.Response:
        q = request.query
        jql = q.get("jql", "")
        since: int | None = None
        lowered = jql.lower()
        if "updated" in lowered.split("order by")[0]:
            marker = lowered.index(">=")
            value = jql[marker + 2 :].strip().split('"')[1]
            moment = datetime.strptime(value, "%Y/%m/%d %H:%M")  # minutes: seconds are not accepted
            since = int(moment.replace(tzinfo=UTC).timestamp())
        by_time = "order by updated" in " ".join(lowered.split())
        start = int(q.get("startAt", "0"))
        limit = self._limit(q.get("maxResults"))
        if by_time:
            ids, _ = self.by_time(since, None, start, limit, deleted=False)
        else:
            ids, _ = self.by_id(since, None, start, limit, deleted=False)
        return self._json(
            {
                "startAt": start,
                "maxResults": limit,
                "total": self.count(since, deleted=False),
                "issues": [self._jira(self._state(i)) for i in ids],
            }
        )

    @staticmethod
    def _encode(updated: int, record_id: int) -> str:
        return base64.urlsafe_b64encode(f"{updated}:{record_id}".encode()).decode().rstrip("=")

    @staticmethod
    def _decode(cursor: str) -> tuple[int, int]:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        updated, _, record_id = raw.partition(":")
        return int(updated), int(record_id)

    def _zendesk_page(self, request: web.Request) -> web.Response:
        q = request.query
        limit = self._limit(q.get("per_page"))
        # A cursor is a keyset position; start_time means updated >= start_time.
        after = self._decode(q["cursor"]) if q.get("cursor") else (int(q.get("start_time", "0")), -1)
        ids, more = self.by_time(None, after, 0, limit, deleted=True)
        states = [self._state(i) for i in ids]
        cursor = self._encode(states[-1].updated, states[-1].id) if states else self._encode(*after)
        url = request.url.with_query({"cursor": cursor, "per_page": str(limit)})
        return self._json(
            {
                "tickets": [self._zendesk(s) for s in states],
                "after_cursor": cursor,
                "after_url": str(url),
                "end_of_stream": not more,
            }
        )

    def _graph_page(self, request: web.Request) -> web.Response:
        q = request.query
        limit = self._limit(q.get("$top"))
        if q.get("$skiptoken"):
            token, hi, after = (int(x) for x in q["$skiptoken"].split("."))
        else:
            token, hi, after = int(q.get("$deltatoken", "-1")), self.seq, -1
        if token < 0:  # the first round: every live record
            ids, more = self.by_id(None, after if after >= 0 else None, 0, limit, deleted=False)
        else:
            over = self._over_ids(None, True, token)
            lo = bisect.bisect_right(over, after)
            ids, more = over[lo : lo + limit], lo + limit < len(over)
        base = request.url.with_query({})
        top = {"$top": q["$top"]} if q.get("$top") else {}
        body: dict[str, Any] = {"value": [self._graph(self._state(i)) for i in ids]}
        if more:
            body["@odata.nextLink"] = str(base.with_query({"$skiptoken": f"{token}.{hi}.{ids[-1]}", **top}))
        else:
            body["@odata.deltaLink"] = str(base.with_query({"$deltatoken": str(hi), **top}))
        return self._json(body)

    async def _control_changes(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._json({"error": "invalid_token"}, 401)
        self.counts["control"] += 1
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            return self._json(self.apply(changes))
        except (ValueError, TypeError) as exc:
            return self._json({"error": f"bad request: {exc}"}, 400)

    async def _control_state(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._json({"error": "invalid_token"}, 401)
        self.counts["control"] += 1
        return self._json(
            {
                "records": self.records,
                "next_id": self.next_id,
                "seq": self.seq,
                "base": {"epoch": self.base_epoch, "spacing": self.spacing, "ties": self.ties},
                "overrides": [[r.id, r.updated, r.version, r.deleted] for r in self._over.values()],
            }
        )


def _fresh_files(folder: Any, *names: str) -> list[Any]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.unlink(missing_ok=True)
    return paths


async def incremental_demo(
    out: TextIO, *, records: int = 100_000, changed: int = 1_000, out_dir: str = "demo-output", seed: int = 7
) -> int:
    """A full crawl, then changes at the source, then an incremental run that fetches only those.

    A Zendesk-style ticket export over a local server: ``changed`` records change between the
    runs (80% updated, 10% created, 10% deleted). Prints what each run did and whether the
    JSON Lines output (both runs appended) now matches the source. Returns 0, or 7 when it
    does not.
    """
    import random
    from pathlib import Path

    from ..crawler import Crawler
    from ..crawler.incremental import ExportCursor
    from ..provider import TokenProvider
    from .server import LocalServer

    class Tickets(Crawler):
        path = "/api/v2/incremental/tickets/cursor.json"
        params = {"start_time": "0", "per_page": "100"}
        records_path = "tickets"
        pagination = ExportCursor()
        primary_key = "id"
        updated_field = "updated_at"

        def changed_since(self, partition: Any, since: datetime) -> dict[str, str]:
            return {"start_time": str(int(since.timestamp()))}

        def is_deleted(self, record: Any) -> bool:
            return bool(record.get("status") == "deleted")

    jsonl, state = _fresh_files(Path(out_dir), "incremental-records.jsonl", "incremental-state.json")
    api = ChangesAPI(records=records, spacing=30, max_page_size=100)  # a history of one update per 30 s
    rng = random.Random(seed)
    requests: list[int] = []
    async with LocalServer(AuthServerState(token_lifetime=300), api=api) as server:
        print(f"demo: a source of {records:,} tickets on {server.base_url}, read incrementally", file=out)
        async with TokenProvider(server.config()) as tokens:
            crawler = Tickets(base_url=server.base_url)
            for label in ("first run (full)", "second run (incremental)"):
                if requests:
                    _change_the_source(api, rng, changed, out)
                requests.append(await _demo_run(crawler, tokens, jsonl, state, label, out))
    held = replay([[orjson.loads(line) for line in jsonl.read_bytes().splitlines()]])
    problems = api.differences(held)
    verdict = "matches the source" if not problems else "DIFFERS from the source: " + "; ".join(problems[:3])
    print(
        f"demo: the second run made {requests[1] / requests[0]:.1%} of the first run's requests; "
        f"{jsonl} (both runs appended) {verdict}",
        file=out,
    )
    return 0 if not problems else 7


def _change_the_source(api: ChangesAPI, rng: random.Random, changed: int, out: TextIO) -> None:
    """Change ``changed`` tickets between the runs: 80% updated, 10% deleted, 10% created."""
    picked = rng.sample(range(api.records), changed - changed // 10)
    cut = len(picked) * 8 // 9
    updated, deleted = api.update(picked[:cut]), api.delete(picked[cut:])
    created = api.create(changed // 10)
    print(
        f"demo: at the source, {len(updated):,} tickets updated, {len(created):,} created, {len(deleted):,} deleted",
        file=out,
    )


async def _demo_run(crawler: Crawler, tokens: TokenSource, jsonl: Path, state: Path, label: str, out: TextIO) -> int:
    """One crawl appending to ``jsonl``, resuming its cursor from ``state``; prints it, returns its requests."""
    from ..crawler import JsonLinesSink

    sink = JsonLinesSink(jsonl)
    try:
        stats = await crawler.crawl(tokens, sink, state=str(state))
    finally:
        sink.close()
    sync = stats.partitions["default"].sync
    assert sync is not None
    print(
        f"demo: {label}: {stats.requests:,} API requests, {stats.records:,} records written "
        f"({sync.tombstones:,} deletions), {sync.redelivered:,} re-deliveries dropped; "
        f"cursor {sync.cursor_before or '-'} -> {sync.cursor_after}",
        file=out,
    )
    return stats.requests
