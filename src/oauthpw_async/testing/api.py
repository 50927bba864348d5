"""A protected, paginated JSON API over a seeded dataset, with fault injection.

Mount it on :class:`LocalServer` with ``LocalServer(auth, api=DemoAPI(...))``. Every
endpoint checks the bearer token against the authorization server (401 when expired or
revoked). Records are computed from their id, so a million-record dataset costs no memory.

Pagination styles (``/api/<style>/items``), one per real-world family:

========== =========================================================================
offset     ``offset``/``limit`` with ``total`` in the body and an RFC 8288 ``Link`` header
cursor     ``cursor`` in, ``meta.next_cursor`` + ``meta.has_more`` out
page       ``page``/``per_page`` in, ``total_pages`` out
nexturl    a *relative* ``nextRecordsUrl`` in the body (Salesforce style)
odata      ``$skip``/``$top`` in, absolute ``@odata.nextLink`` out
link       ``page`` in, only a ``Link: <...>; rel="next"`` header out (body is a bare list)
========== =========================================================================

``/api/items/{id}`` is the detail endpoint; ``/api/ping`` a cheap protected endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Callable
from typing import Any, Literal

import attrs
import orjson
from aiohttp import web

from .authserver import AuthServerState

__all__ = ["STYLES", "ApiFault", "DemoAPI", "make_detail", "make_record"]

STYLES = ("offset", "cursor", "page", "nexturl", "odata", "link")
ApiFaultKind = Literal["status", "slow", "revoke", "drop", "deny"]


@attrs.define
class ApiFault:
    """One failure applied to an upcoming API request (list or detail)."""

    kind: ApiFaultKind
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0


def make_record(record_id: int, project: str) -> dict[str, Any]:
    """The deterministic record with this id."""
    digest = hashlib.blake2b(str(record_id).encode(), digest_size=4).hexdigest()
    return {"id": record_id, "project": project, "title": f"Item {record_id}", "hash": digest}


def make_detail(record_id: int) -> dict[str, Any]:
    """The detail document for a record."""
    return {"id": record_id, "body": f"Detail text for item {record_id}", "priority": record_id % 5}


class DemoAPI:
    """Route installer and state of the demo API.

    Args:
        projects: partition names; each project holds ``per_project`` records.
        per_project: records per project.
        max_page_size: the server caps page sizes, as real APIs do.
        latency: seconds added to every API answer.
        empty_page_at: page indexes (0-based) answered empty though more pages follow.
        cycle_at: a page index whose "next" points back to the first page (a cycle).
    """

    def __init__(
        self,
        *,
        projects: tuple[str, ...] = ("alpha", "beta", "gamma"),
        per_project: int = 250,
        max_page_size: int = 100,
        latency: float = 0.0,
        empty_page_at: frozenset[int] = frozenset(),
        cycle_at: int | None = None,
    ) -> None:
        self.projects = projects
        self.per_project = per_project
        self.max_page_size = max_page_size
        self.latency = latency
        self.empty_page_at = empty_page_at
        self.cycle_at = cycle_at
        self.faults: collections.deque[ApiFault] = collections.deque()
        #: Requests by outcome: ``"list:200"``, ``"detail:401"``, ``"fault:status"``...
        self.counts: collections.Counter[str] = collections.Counter()
        #: Optional hook called with the number of API requests served so far.
        self.on_request: Callable[[int], None] | None = None
        #: List requests being answered now, and the most seen at once.
        self.inflight = 0
        self.max_inflight = 0
        #: Refuse every token with 401 (the account lost access to the API).
        self.deny_all = False
        self._auth: AuthServerState | None = None

    @property
    def total(self) -> int:
        """Records across all projects."""
        return len(self.projects) * self.per_project

    def inject(self, *faults: ApiFault) -> None:
        """Queue faults for upcoming API requests, in order."""
        self.faults.extend(faults)

    def expected_ids(self) -> set[int]:
        """Every record id in the dataset."""
        return set(range(self.total))

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        """Install the routes on ``app``, checking tokens against ``auth``."""
        self._auth = auth
        app.router.add_get("/api/ping", self._ping)
        app.router.add_get("/api/items/{id}", self._detail)
        app.router.add_get("/api/{style}/items", self._list)

    # --- helpers ------------------------------------------------------------------------------------

    async def _gate(self, request: web.Request, kind: str) -> web.Response | None:
        n = sum(self.counts.values())
        if self.on_request is not None:
            self.on_request(n)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.faults:
            fault = self.faults.popleft()
            self.counts[f"fault:{fault.kind}"] += 1
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "revoke":
                assert self._auth is not None
                self._auth.revoke_access_tokens()
            elif fault.kind == "deny":  # a 401 whatever the token (an account that lost access)
                self.counts[f"{kind}:401"] += 1
                return web.json_response({"error": "invalid_token"}, status=401)
            elif fault.kind == "drop":
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            else:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return web.json_response({"error": "unavailable"}, status=fault.status, headers=headers)
        assert self._auth is not None
        if self.deny_all or not self._auth.check_authorization(request.headers.get("Authorization")):
            self.counts[f"{kind}:401"] += 1
            return web.json_response(
                {"error": "invalid_token"}, status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        self.counts[f"{kind}:200"] += 1
        return None

    def _project(self, request: web.Request) -> tuple[int, str] | web.Response:
        project = request.query.get("project", self.projects[0])
        if project not in self.projects:
            return web.json_response({"error": f"unknown project {project}"}, status=404)
        return self.projects.index(project), project

    def _slice(self, pidx: int, project: str, start: int, size: int) -> list[dict[str, Any]]:
        end = min(start + size, self.per_project)
        base = pidx * self.per_project
        return [make_record(base + i, project) for i in range(max(start, 0), end)]

    @staticmethod
    def _json(data: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(body=orjson.dumps(data), content_type="application/json", headers=headers)

    # --- endpoints -------------------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return await self._gate(request, "ping") or self._json({"ok": True})

    async def _detail(self, request: web.Request) -> web.Response:
        denied = await self._gate(request, "detail")
        if denied is not None:
            return denied
        try:
            rid = int(request.match_info["id"])
        except ValueError:
            return self._json({"error": "bad id"})
        if not 0 <= rid < self.total:
            return web.json_response({"error": "not found"}, status=404)
        return self._json(make_detail(rid))

    async def _list(self, request: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._list_page(request)
        finally:
            self.inflight -= 1

    async def _list_page(self, request: web.Request) -> web.Response:
        denied = await self._gate(request, "list")
        if denied is not None:
            return denied
        style = request.match_info["style"]
        if style not in STYLES:
            return web.json_response({"error": f"unknown style {style}"}, status=404)
        found = self._project(request)
        if isinstance(found, web.Response):
            return found
        pidx, project = found
        q = request.query
        try:
            size = min(
                int(q.get("limit") or q.get("per_page") or q.get("$top") or self.max_page_size), self.max_page_size
            )
            if style == "offset":
                start = int(q.get("offset", 0))
            elif style == "cursor":
                start = int(q["cursor"], 16) if q.get("cursor") else 0
            elif style in ("page", "link"):
                start = (int(q.get("page", 1)) - 1) * size
            elif style == "odata":
                start = int(q.get("$skip", 0))
            else:
                start = int(q.get("after", 0))
        except ValueError:
            return web.json_response({"error": "bad paging parameter"}, status=400)
        if size <= 0 or start < 0:
            return web.json_response({"error": "bad paging parameter"}, status=400)
        page_index = start // size
        items = [] if page_index in self.empty_page_at else self._slice(pidx, project, start, size)
        nxt = start + size
        more = nxt < self.per_project
        if self.cycle_at is not None and page_index == self.cycle_at:
            nxt, more = 0, True  # a next link back to the first page
        base = f"/api/{style}/items"
        if style == "offset":
            link = f'<{request.url.origin()}{base}?project={project}&offset={nxt}&limit={size}>; rel="next"'
            return self._json(
                {"items": items, "total": self.per_project, "offset": start}, headers={"Link": link} if more else None
            )
        if style == "cursor":
            return self._json(
                {"data": items, "meta": {"has_more": more, "next_cursor": format(nxt, "x") if more else None}}
            )
        if style == "page":
            pages = -(-self.per_project // size)
            return self._json(
                {"results": items, "page": page_index + 1, "total_pages": pages, "count": self.per_project}
            )
        if style == "nexturl":
            body: dict[str, Any] = {"records": items, "totalSize": self.per_project, "done": not more}
            if more:
                body["nextRecordsUrl"] = f"{base}?project={project}&after={nxt}&limit={size}"
            return self._json(body)
        if style == "odata":
            body = {"value": items}
            if more:
                body["@odata.nextLink"] = f"{request.url.origin()}{base}?project={project}&$skip={nxt}&$top={size}"
            return self._json(body)
        headers = {}
        if more:
            headers["Link"] = f'<{base}?project={project}&page={nxt // size + 1}&per_page={size}>; rel="next"'
        return self._json(items, headers=headers)
