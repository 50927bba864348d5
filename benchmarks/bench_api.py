"""The protected API the benchmarks call: a cheap ping, one offset-paginated list and a detail endpoint.

Mounted on the package's test server (``LocalServer(state, api=BenchAPI(...))``); every request's
bearer token is checked against that server's :class:`AuthServerState`, so an expired or revoked
token is answered with 401 and counted. ``GET /__stats`` returns the server-side counts.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import orjson
from aiohttp import web

from oauthpw_async.testing import AuthServerState


def make_record(record_id: int, project: str) -> dict[str, Any]:
    """The deterministic list record with this id."""
    digest = hashlib.blake2b(str(record_id).encode(), digest_size=4).hexdigest()
    return {"id": record_id, "project": project, "title": f"Item {record_id}", "hash": digest}


def make_detail(record_id: int) -> dict[str, Any]:
    """The detail document of a record."""
    return {"id": record_id, "body": f"Detail text for item {record_id}", "priority": record_id % 5}


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


class BenchAPI:
    """Route installer: ``/api/ping``, ``/api/offset/items?project=&offset=&limit=``, ``/api/items/{id}``.

    Records of project ``i`` have the ids ``i * per_project`` to ``(i + 1) * per_project - 1``.
    """

    def __init__(self, projects: tuple[str, ...] = ("p0",), per_project: int = 0, max_page_size: int = 100) -> None:
        self.projects = projects
        self.per_project = per_project
        self.max_page_size = max_page_size
        #: Requests by ``"<endpoint>:<status>"``, e.g. ``"ping:200"``, ``"detail:401"``.
        self.counts: collections.Counter[str] = collections.Counter()
        self._auth: AuthServerState | None = None

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        self._auth = auth
        app.router.add_get("/api/ping", self._ping)
        app.router.add_get("/api/offset/items", self._list)
        app.router.add_get("/api/items/{id}", self._detail)
        app.router.add_get("/__stats", self._stats)

    def _denied(self, request: web.Request, kind: str) -> web.Response | None:
        assert self._auth is not None
        if self._auth.check_authorization(request.headers.get("Authorization")):
            self.counts[f"{kind}:200"] += 1
            return None
        self.counts[f"{kind}:401"] += 1
        return web.json_response(
            {"error": "invalid_token"}, status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    async def _ping(self, request: web.Request) -> web.Response:
        return self._denied(request, "ping") or _json({"ok": True})

    async def _detail(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "detail")
        if denied is not None:
            return denied
        rid = int(request.match_info["id"])
        if not 0 <= rid < len(self.projects) * self.per_project:
            return web.json_response({"error": "not found"}, status=404)
        return _json(make_detail(rid))

    async def _list(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "list")
        if denied is not None:
            return denied
        q = request.query
        project = q.get("project", self.projects[0])
        if project not in self.projects:
            return web.json_response({"error": f"unknown project {project}"}, status=404)
        size = min(int(q.get("limit", self.max_page_size)), self.max_page_size)
        start = int(q.get("offset", 0))
        base = self.projects.index(project) * self.per_project
        items = [make_record(base + i, project) for i in range(start, min(start + size, self.per_project))]
        return _json({"items": items, "total": self.per_project, "offset": start})

    async def _stats(self, request: web.Request) -> web.Response:
        assert self._auth is not None
        return _json({"auth": dict(self._auth.counts), "api": dict(self.counts)})
