"""AuthorizedSession: aiohttp requests that carry the token, for everything that is not a crawl.

The rules are the crawler's, for single API calls and workflows; they live in one place,
:mod:`oauthpw_async.pipeline`, which sends every request of both:

* The ``Authorization`` header is taken only once the request may be sent: each request first
  waits for a slot (a FIFO :class:`anyio.Semaphore` as large as the connection pool), then
  takes the token, then sends. Taking the header first and waiting for a pooled connection
  afterwards lets queued requests hold tokens that expire before they are sent.
* A 401 renews the token once per refused token and sends the request again; a request
  refused again with a newer token is a new rejection with its own renewal, within a bound.
* The token goes only to the base URL's origin and ``allowed_origins``. Redirects are
  followed by hand and every hop is checked: a foreign origin is refused
  (:class:`~oauthpw_async.errors.ForeignOriginError`) or followed without the token.
* Transient failures (no answer, 408, 5xx, 429, 503) are retried with the one backoff
  primitive, :class:`~oauthpw_async.retry.RetryPolicy`, for idempotent methods only unless
  the caller says a request is safe to repeat. What an answer means is decided by
  :func:`~oauthpw_async.responses.classify_api_response`, as in the crawler.

Responses are read whole before they are returned (:class:`APIResponse`): the slot and the
connection are released before the caller sees the answer, and a renewal or a retry is
already done by then.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Coroutine, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import aiohttp
import anyio
import attrs
import orjson

from ._api import HostGovernor, Origins, RequestStats, resolve_url, token_excerpt
from ._httputil import origin, safe_url
from .clock import Clock
from .errors import HTTPStatusError, UsageError
from .grant import Token
from .headers import checked_headers
from .pipeline import RequestPipeline, tls_of
from .retry import DEFAULT_RETRY, RetryPolicy
from .sources import TokenSource

__all__ = ["IDEMPOTENT_METHODS", "SESSION_RETRY", "APIResponse", "AuthorizedSession", "SessionStats"]

log = logging.getLogger("oauthpw_async.session")

#: Methods retried after a transient failure by default (RFC 9110 §9.2.2: repeating them is safe).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

SESSION_RETRY = DEFAULT_RETRY
"""The default retries of one request (:data:`~oauthpw_async.retry.DEFAULT_RETRY`): 4 attempts, backoff up
to 15 s, server waits up to 2 min."""

#: Connections (and so requests in flight) when the session makes its own pool.
DEFAULT_LIMIT = 100

Params = Mapping[str, str | int | float] | Sequence[tuple[str, str | int | float]] | str
Body = bytes | str | Mapping[str, str] | Sequence[tuple[str, str]]


@attrs.define
class SessionStats(RequestStats):
    """Counters of an :class:`AuthorizedSession` (plain ints; reading is free)."""


class APIResponse:
    """A complete answer: status, headers and the whole body, already read.

    Reads like :class:`aiohttp.ClientResponse` (``await r.json()``, ``await r.text()``,
    ``await r.read()``, ``r.raise_for_status()``), with the body also at hand as :attr:`body`.
    The connection went back to the pool before the response was returned.
    """

    __slots__ = ("_token", "_url", "body", "headers", "method", "reason", "status")

    def __init__(
        self,
        method: str,
        url: object,
        status: int,
        reason: str | None,
        headers: Mapping[str, str],
        body: bytes,
        token: Token | None,
    ) -> None:
        #: The method of the last request sent (a 303 turns a POST into a GET).
        self.method = method
        self._url = url  # aiohttp's URL object, turned into text only when asked for
        self.status = status
        self.reason = reason
        #: The response headers (case-insensitive: aiohttp's own).
        self.headers = headers
        #: The response body.
        self.body = body
        self._token = token  # only to scrub it from an error excerpt

    @property
    def url(self) -> str:
        """The URL that answered, after redirects."""
        return str(self._url)

    @property
    def ok(self) -> bool:
        """``status < 400``, as in aiohttp."""
        return self.status < 400

    async def read(self) -> bytes:
        """The body bytes."""
        return self.body

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        """The body decoded with ``encoding``, the charset the server named, or UTF-8."""
        if encoding is None:
            ctype = self.headers.get("Content-Type", "")
            match = re.search(r"charset=\"?([\w.:-]+)", ctype, re.IGNORECASE)
            encoding = match.group(1) if match else "utf-8"
        return self.body.decode(encoding, errors)

    async def json(self, *, loads: Any = orjson.loads) -> Any:
        """The body parsed as JSON (``None`` for an empty body), whatever the content type."""
        return loads(self.body) if self.body.strip() else None

    def raise_for_status(self) -> None:
        """Raise :class:`HTTPStatusError` (token scrubbed from the excerpt) when ``status >= 400``."""
        if self.status >= 400:
            raise HTTPStatusError(
                f"{self.method} failed",
                status=self.status,
                url=safe_url(self.url),
                excerpt=token_excerpt(self.body, self._token),
            )

    def __repr__(self) -> str:
        return f"<APIResponse {self.status} {self.method} {safe_url(self.url)}>"


class _RequestContext:
    """What a request method returns: await it, or use it as ``async with ... as response``."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, APIResponse]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, None, APIResponse]:
        return self._coro.__await__()

    async def __aenter__(self) -> APIResponse:
        return await self._coro

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class AuthorizedSession:
    """aiohttp requests with the token of a :class:`~oauthpw_async.sources.TokenSource`.

    Use it like :class:`aiohttp.ClientSession`::

        async with TokenProvider(config) as tokens, AuthorizedSession(tokens, base_url=API) as api:
            me = await (await api.get("/rest/api/2/myself")).json()
            async with api.post("/rest/api/2/issue", json=fields) as r:
                key = (await r.json())["key"]

    Args:
        tokens: a :class:`~oauthpw_async.TokenProvider`, :class:`~oauthpw_async.StaticToken`
            or your own source; share one per credential.
        base_url: the API's address; relative URLs are joined *under* it, and its origin may
            receive the token.
        allowed_origins: more origins that may receive the token.
        foreign_origins: a request or redirect to any other origin: ``"fail"`` with
            :class:`ForeignOriginError` (default) or ``"follow_without_token"``.
        headers: headers on every request (never ``Authorization``: the session sets it).
        limit: requests in flight at once; default: the pool size of ``session``, else 100.
        session: an aiohttp session to share (its connector's limit sizes the slots);
            one is made (and closed) otherwise.
        timeout: seconds one attempt may take.
        retry: retries after transient failures (default :data:`SESSION_RETRY`).
        retry_methods: methods retried after transient failures (default: the idempotent ones).
        raise_for_status: raise :class:`HTTPStatusError` for a final status >= 400 (default),
            or return the response.
        rate: requests per second per host (default: no limit).
        clock: time source for backoff; the token source's clock by default.
        sensitive_headers: headers never sent to a foreign origin; only content-negotiation and
            caching headers (:data:`~oauthpw_async.headers.FORWARDABLE_HEADERS`) ever go there,
            so this matters only for those.
    """

    def __init__(
        self,
        tokens: TokenSource,
        *,
        base_url: str | None = None,
        allowed_origins: Iterable[str] = (),
        foreign_origins: Literal["fail", "follow_without_token"] = "fail",
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        raise_for_status: bool = True,
        rate: float | None = None,
        clock: Clock | None = None,
        sensitive_headers: Iterable[str] = (),
    ) -> None:
        if base_url is not None and origin(base_url) == "null":
            raise UsageError(f"base_url must be an absolute http(s) URL, got {safe_url(base_url)!r}")
        allowed = [*([base_url] if base_url else []), *allowed_origins]
        if not allowed:
            raise UsageError("pass base_url= (the API's address) or allowed_origins=: the token goes only there")
        if foreign_origins not in ("fail", "follow_without_token"):
            raise UsageError("foreign_origins must be 'fail' or 'follow_without_token'")
        if limit is not None and limit < 1:
            raise UsageError("limit must be at least 1")
        self.tokens = tokens
        self.base_url = base_url
        self.stats = SessionStats()
        self._origins = Origins(allowed)
        self._foreign = foreign_origins
        self._headers = self._check_headers(headers, "AuthorizedSession headers")
        self._sensitive = tuple(sensitive_headers)
        self._session = session
        self._owns_session = session is None
        self._limit = limit or (self._pool_size(session) if session is not None else DEFAULT_LIMIT)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry or SESSION_RETRY
        self._retry_methods = frozenset(m.upper() for m in retry_methods)
        self._raise = raise_for_status
        self._rate = rate
        self._clock: Clock = clock or tokens.clock
        # URL as given -> absolute URL: most programs call a handful of URLs many times.
        self._absolutes: dict[str, str] = {}
        self._pipeline: RequestPipeline | None = None  # made in the event loop (its semaphore needs one)
        self._closed = False
        self._tls = tls_of(tokens)  # an unusable CA bundle is refused here, not at the first request

    @staticmethod
    def _pool_size(session: aiohttp.ClientSession) -> int:
        connector = session.connector
        sizes = [n for n in (getattr(connector, "limit", 0), getattr(connector, "limit_per_host", 0)) if n]
        return min(sizes) if sizes else DEFAULT_LIMIT

    @staticmethod
    def _check_headers(headers: Mapping[str, str] | None, where: str) -> dict[str, str]:
        out = checked_headers(headers, where=where)
        if any(k.lower() == "authorization" for k in out):
            raise UsageError("the session sets Authorization itself; remove it from headers")
        return out

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> AuthorizedSession:
        self._client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the aiohttp session if this one made it; the token source stays open."""
        self._closed = True
        if self._pipeline is not None:
            await self._pipeline.aclose()
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UsageError("this AuthorizedSession is closed")
        if self._pipeline is None:
            # Made inside the event loop (anyio needs one); FIFO, so requests are served in turn.
            self._pipeline = RequestPipeline(
                self.tokens,
                origins=self._origins,
                foreign_origins=self._foreign,
                slots=anyio.Semaphore(self._limit, fast_acquire=True),
                retry=self._retry,
                timeout=self._timeout,
                clock=self._clock,
                governor=lambda host: HostGovernor(self._rate, self._clock),
                stats=self.stats,
                fix_hint="pass foreign_origins='follow_without_token' to the session",
                sensitive_headers=self._sensitive,
                tls=self._tls,
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            )
        return self._session

    # --- requests ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Body | None = None,
        allow_redirects: bool = True,
        raise_for_status: bool | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> _RequestContext:
        """Send one request; await the result or use it as ``async with``.

        Args:
            method: the HTTP method.
            url: absolute, or relative to ``base_url`` (joined under it).
            params: query parameters.
            headers: headers for this request (merged over the session's).
            json: a body serialised as JSON (``Content-Type: application/json``); ``None``: no body, as in aiohttp.
            data: a body as bytes, text, or a form (mapping or pairs); it must be replayable,
                since a 401 or a retry sends it again.
            allow_redirects: follow redirects (each hop's origin checked); else return the 3xx.
            raise_for_status: overrides the session's setting for this request.
            idempotent: whether repeating the request after a transient failure is safe;
                default: whether ``method`` is in ``retry_methods``. A 401 is always renewed
                and resent (the server did not act on the request).
            timeout: seconds one attempt may take (default: the session's).

        Returns:
            an :class:`APIResponse`, read whole.

        Raises:
            HTTPStatusError: a final status >= 400 (with ``raise_for_status``), or no answer
                after the retries; the body excerpt never contains the token.
            UnauthorizedError: 401s even with renewed tokens.
            ForeignOriginError: the URL or a redirect leads to an origin the token must not go to.
            TokenError: the token source could not provide a token (e.g. StaticTokenRejected).
        """
        return _RequestContext(
            self._send(
                method.upper(),
                url,
                params,
                headers,
                json,
                data,
                allow_redirects,
                self._raise if raise_for_status is None else raise_for_status,
                idempotent,
                timeout,
            )
        )

    def get(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("HEAD", url, ...)``."""
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("OPTIONS", url, ...)``."""
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("POST", url, ...)``: not retried after a transient failure unless ``idempotent=True``."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("PUT", url, ...)``."""
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("PATCH", url, ...)``: not retried after a transient failure unless ``idempotent=True``."""
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> _RequestContext:
        """``request("DELETE", url, ...)``."""
        return self.request("DELETE", url, **kwargs)

    # --- one request -------------------------------------------------------------------------------

    def _absolute(self, url: str) -> str:
        absolute = self._absolutes.get(url)
        if absolute is None:
            absolute = self._resolve(url)
            if len(self._absolutes) >= 4096:
                self._absolutes.clear()
            self._absolutes[url] = absolute
        return absolute

    def _resolve(self, url: str) -> str:
        if self.base_url is not None:
            return resolve_url(self.base_url, url)
        if not url.startswith(("https://", "http://")):
            raise UsageError(f"{safe_url(url)!r} is not an absolute http(s) URL and the session has no base_url")
        return url

    @staticmethod
    def _body(json: Any, data: Body | None, headers: dict[str, str]) -> bytes | str | Body | None:
        if json is not None:
            if data is not None:
                raise UsageError("pass json= or data=, not both")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
            return orjson.dumps(json)
        if data is None or isinstance(data, (bytes, str, Mapping)):
            return data
        if isinstance(data, Sequence):
            pairs = [item for item in data if isinstance(item, tuple) and len(item) == 2]
            if len(pairs) == len(data):
                return [(str(k), str(v)) for k, v in pairs]
        raise UsageError(
            f"data of type {type(data).__name__} cannot be sent again after a 401 or a retry; "
            "pass bytes, str, a form mapping or json="
        )

    async def _send(
        self,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: Body | None,
        allow_redirects: bool,
        raise_for_status: bool,
        idempotent: bool | None,
        timeout: float | None,
    ) -> APIResponse:
        pipeline = self._pipeline
        session = self._session
        if pipeline is None or session is None or self._closed:
            session = self._client()
            pipeline = self._pipeline
            assert pipeline is not None
        send_headers = self._headers  # shared, never changed: copied before any change below
        if headers or json is not None:
            send_headers = {**send_headers, **self._check_headers(headers, "request headers")}
        body = None if json is None and data is None else self._body(json, data, send_headers)
        retriable = idempotent if idempotent is not None else method in self._retry_methods
        answer = await pipeline.send(
            session,
            method,
            self._absolute(url),
            headers=send_headers,
            params=params,
            body=body,
            allow_redirects=allow_redirects,
            retriable=retriable,
            not_retried=None if retriable else lambda: self._not_retried(method, idempotent),
            timeout=None if timeout is None else aiohttp.ClientTimeout(total=timeout),
        )
        if raise_for_status and answer.status >= 400:
            raise answer.error(f"{answer.method} failed" + ("" if answer.why else " (not retried)"))
        return APIResponse(
            answer.method, answer.url, answer.status, answer.reason, answer.headers, answer.body, answer.token
        )

    @staticmethod
    def _not_retried(method: str, idempotent: bool | None) -> str:
        if idempotent is False:
            return "not retried (idempotent=False)"
        return f"not retried: {method} may not be safe to repeat (pass idempotent=True if it is)"
