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
from collections.abc import Callable, Mapping
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
        split_link_lines: send ``rel="self"`` and ``rel="next"`` as two ``Link`` header lines
            (``self`` first), and an ``X-Total-Count`` header, on the ``link`` style.
        next_origin: make every absolute next link (offset ``Link``, odata ``@odata.nextLink``)
            and the nexturl style's link point at this other origin (``http://127.0.0.2:PORT``).
        prefix: a path the routes are mounted under (``/servicenow`` serves ``/servicenow/api/...``).
        redirect_lists_to: answer list requests with 302 to the same path on this origin.
        echo_authorization: answer a 4xx (unknown project, bad parameters) with a body that
            echoes the request's ``Authorization`` header raw, JSON-escaped and HTML-escaped.

    :meth:`expire_positions` makes every cursor and next URL handed out so far invalid (the
    server answers 400 ``INVALID_QUERY_LOCATOR``), as an expired query locator or scroll id.
    :attr:`per_project` may grow during a crawl (records appended).
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
        split_link_lines: bool = False,
        next_origin: str | None = None,
        redirect_lists_to: str | None = None,
        echo_authorization: bool = False,
        prefix: str = "",
    ) -> None:
        self.projects = projects
        self.per_project = per_project
        self.max_page_size = max_page_size
        self.latency = latency
        self.empty_page_at = empty_page_at
        self.cycle_at = cycle_at
        self.split_link_lines = split_link_lines
        self.next_origin = next_origin
        self.redirect_lists_to = redirect_lists_to
        self.echo_authorization = echo_authorization
        self.prefix = prefix.rstrip("/")
        #: Values of ``X-*`` and ``Accept`` request headers seen, counted.
        self.headers_seen: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Bumped by :meth:`expire_positions`; positions carry the epoch they were issued in.
        self.epoch = 0
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

    def expire_positions(self) -> None:
        """Invalidate every cursor and next URL issued so far (the first page still works)."""
        self.epoch += 1

    def expected_ids(self) -> set[int]:
        """Every record id in the dataset."""
        return set(range(self.total))

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        """Install the routes on ``app``, checking tokens against ``auth``."""
        self._auth = auth
        app.router.add_get(f"{self.prefix}/api/ping", self._ping)
        app.router.add_get(f"{self.prefix}/api/items/{{id}}", self._detail)
        app.router.add_get(f"{self.prefix}/api/{{style}}/items", self._list)

    # --- helpers ------------------------------------------------------------------------------------

    async def _gate(self, request: web.Request, kind: str) -> web.Response | None:
        for name, value in request.headers.items():
            if name.lower().startswith("x-") or name.lower() == "accept":
                self.headers_seen[(name.lower(), value)] += 1
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

    def _rejected(self, request: web.Request, status: int, message: str) -> web.Response:
        body: dict[str, Any] = {"error": message}
        if self.echo_authorization:
            auth = request.headers.get("Authorization", "")
            body["echo"] = auth  # JSON-escaped by the encoder
            html = auth.replace("&", "&amp;").replace("<", "&lt;").replace("+", "&#43;").replace("/", "&#x2F;")
            text = f"{message}; you sent Authorization: {auth} <p>{html}</p> {orjson.dumps(auth).decode()}"
            return web.Response(status=status, text=text + " " + orjson.dumps(body).decode())
        return web.json_response(body, status=status)

    async def _list_page(self, request: web.Request) -> web.Response:
        denied = await self._gate(request, "list")
        if denied is not None:
            return denied
        if self.redirect_lists_to is not None:
            raise web.HTTPFound(f"{self.redirect_lists_to}{request.path_qs}")
        style = request.match_info["style"]
        if style not in STYLES:
            return web.json_response({"error": f"unknown style {style}"}, status=404)
        project = request.query.get("project", self.projects[0])
        if project not in self.projects:
            return self._rejected(request, 404, f"unknown project {project}")
        q = request.query
        if q.get("epoch") is not None and q.get("epoch") != str(self.epoch):
            return web.json_response(
                [{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}], status=400
            )
        try:
            size = min(
                int(q.get("limit") or q.get("per_page") or q.get("$top") or self.max_page_size), self.max_page_size
            )
            start = self._requested_start(style, q, size)
        except ValueError:
            return self._rejected(request, 400, "bad paging parameter")
        if start is None:
            return web.json_response({"error": "cursor expired"}, status=400)
        if size <= 0 or start < 0:
            return self._rejected(request, 400, "bad paging parameter")
        return self._page(request, style, project, start, size)

    def _requested_start(self, style: str, q: Mapping[str, str], size: int) -> int | None:
        """The first record's index a list request asks for, in its style's own terms.

        ``None``: a cursor handed out before :meth:`expire_positions`. Raises ``ValueError`` for a
        parameter that is not a number.
        """
        if style == "offset":
            return int(q.get("offset", 0))
        if style == "cursor":
            cursor, _, epoch = q.get("cursor", "").partition(".")
            if cursor and epoch != str(self.epoch):
                return None
            return int(cursor, 16) if cursor else 0
        if style in ("page", "link"):
            return (int(q.get("page", 1)) - 1) * size
        if style == "odata":
            return int(q.get("$skip", 0))
        return int(q.get("after", 0))

    def _page(self, request: web.Request, style: str, project: str, start: int, size: int) -> web.Response:
        """The page of ``size`` records from ``start``, with the next link its style hands out."""
        page_index = start // size
        pidx = self.projects.index(project)
        items = [] if page_index in self.empty_page_at else self._slice(pidx, project, start, size)
        nxt = start + size
        more = nxt < self.per_project
        if self.cycle_at is not None and page_index == self.cycle_at:
            nxt, more = 0, True  # a next link back to the first page
        base = f"{self.prefix}/api/{style}/items"
        here = self.next_origin or str(request.url.origin())
        if style == "offset":
            link = f'<{here}{base}?project={project}&offset={nxt}&limit={size}>; rel="next"'
            return self._json(
                {"items": items, "total": self.per_project, "offset": start}, headers={"Link": link} if more else None
            )
        if style == "cursor":
            return self._json(
                {"data": items, "meta": {"has_more": more, "next_cursor": f"{nxt:x}.{self.epoch}" if more else None}}
            )
        if style == "page":
            pages = -(-self.per_project // size)
            return self._json(
                {"results": items, "page": page_index + 1, "total_pages": pages, "count": self.per_project}
            )
        if style == "nexturl":
            body: dict[str, Any] = {"records": items, "totalSize": self.per_project, "done": not more}
            if more:
                prefix = self.next_origin or ""
                body["nextRecordsUrl"] = f"{prefix}{base}?project={project}&after={nxt}&limit={size}&epoch={self.epoch}"
            return self._json(body)
        if style == "odata":
            body = {"value": items, "@odata.count": self.per_project}
            if more:
                body["@odata.nextLink"] = f"{here}{base}?project={project}&$skip={nxt}&$top={size}"
            return self._json(body)
        link_next = f'<{base}?project={project}&page={nxt // size + 1}&per_page={size}>; rel="next"'
        link_self = f'<{base}?project={project}&page={page_index + 1}&per_page={size}>; rel="self"'
        if not self.split_link_lines:
            return self._json(items, headers={"Link": link_next} if more else None)
        response = self._json(items, headers={"X-Total-Count": str(self.per_project)})
        response.headers.add("Link", link_self)  # two header lines, "self" first
        if more:
            response.headers.add("Link", link_next)
        return response
