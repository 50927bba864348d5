"""AuthorizedSession: aiohttp requests that carry the token, for everything that is not a crawl.

The rules are the crawler's, for single API calls and workflows:

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
import random
import re
import ssl
from collections.abc import Coroutine, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urljoin

import aiohttp
import anyio
import attrs
import orjson

from ._api import (
    MAX_REDIRECTS,
    HostGovernor,
    Origins,
    RefusedTokens,
    RequestStats,
    resolve_url,
    token_excerpt,
)
from ._httputil import origin, safe_url
from .clock import Clock
from .errors import CrawlError, ForeignOriginError, HTTPStatusError, UsageError
from .grant import Token
from .responses import classify_api_response
from .retry import Retrying, RetryPolicy
from .sources import TokenSource
from .transport import ssl_context

__all__ = ["IDEMPOTENT_METHODS", "SESSION_RETRY", "APIResponse", "AuthorizedSession", "SessionStats"]

log = logging.getLogger("oauthpw_async.session")

#: Methods retried after a transient failure by default (RFC 9110 §9.2.2: repeating them is safe).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

SESSION_RETRY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=15.0, max_wait=120.0, deadline=180.0)
"""The default retries of one request: 4 attempts, backoff up to 15 s, server waits up to 2 min."""

#: Connections (and so requests in flight) when the session makes its own pool.
DEFAULT_LIMIT = 100

Params = Mapping[str, str | int | float] | Sequence[tuple[str, str | int | float]] | str
Body = bytes | str | Mapping[str, str] | Sequence[tuple[str, str]]

# Headers that must not follow a redirect to an origin the token may not go to.
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


@attrs.define
class SessionStats(RequestStats):
    """Counters of an :class:`AuthorizedSession` (plain ints; reading is free)."""

    #: Redirect hops followed.
    redirects: int = 0


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
        self._headers = self._check_headers(headers)
        self._session = session
        self._owns_session = session is None
        self._limit = limit or (self._pool_size(session) if session is not None else DEFAULT_LIMIT)
        self._slots: anyio.Semaphore | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry or SESSION_RETRY
        self._retry_methods = frozenset(m.upper() for m in retry_methods)
        self._raise = raise_for_status
        self._rate = rate
        self._clock: Clock = clock or tokens.clock
        self._rng = random.Random()
        self._hosts: dict[str, HostGovernor] = {}
        # URL as given -> (absolute URL, may it have the token, its host's governor): most
        # programs call a handful of URLs many times, so each is resolved and checked once.
        self._routes: dict[str, tuple[str, bool, HostGovernor]] = {}
        self._refused = RefusedTokens()  # the 401 rule: a renewal per rejected token, bounded
        self._closed = False
        config = getattr(tokens, "config", None)
        # The connection's TLS settings (verify_tls, ca_bundle) apply to its API requests too.
        self._ssl: ssl.SSLContext | bool = ssl_context(config) if config is not None else True

    @staticmethod
    def _pool_size(session: aiohttp.ClientSession) -> int:
        connector = session.connector
        sizes = [n for n in (getattr(connector, "limit", 0), getattr(connector, "limit_per_host", 0)) if n]
        return min(sizes) if sizes else DEFAULT_LIMIT

    @staticmethod
    def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
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
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UsageError("this AuthorizedSession is closed")
        if self._slots is None:
            # Made inside the event loop (anyio needs one); FIFO, so requests are served in turn.
            self._slots = anyio.Semaphore(self._limit, fast_acquire=True)
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

    def _with_token(self, url: str) -> bool:
        if self._origins.allows(url):
            return True
        if self._foreign == "follow_without_token":
            return False
        foreign = origin(url)
        raise ForeignOriginError(
            f"{safe_url(url)} is on {foreign}, not an origin the token may be sent to; "
            f"add {foreign!r} to allowed_origins if it is yours, or pass "
            "foreign_origins='follow_without_token' to the session to read it without credentials",
            origin=foreign,
        )

    def _governor(self, url: str) -> HostGovernor:
        host = url.split("/", 3)[2]
        gov = self._hosts.get(host)
        if gov is None:
            gov = self._hosts[host] = HostGovernor(self._rate, self._clock)
        return gov

    def _route(self, url: str) -> tuple[str, bool, HostGovernor]:
        route = self._routes.get(url)
        if route is None:
            absolute = self._resolve(url)
            route = (absolute, self._origins.allows(absolute), self._governor(absolute))
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[url] = route
        return route

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
        session = self._session
        slots = self._slots
        if session is None or slots is None or self._closed:
            session = self._client()
            slots = self._slots
            assert slots is not None
        clock = self._clock
        tokens = self.tokens
        stats = self.stats
        base_headers = self._headers  # shared, never changed: copied before any change below
        if headers or json is not None:
            base_headers = {**base_headers, **self._check_headers(headers)}
        body = None if json is None and data is None else self._body(json, data, base_headers)
        attempt_timeout = self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        url, allowed, gov = self._route(url)
        with_token = allowed or self._with_token(url)  # refuses a foreign origin, unless told to go on
        query: Params | None = params
        retrying: Retrying | None = None  # made at the first failure: the happy path reads no clock
        renewals = redirects = 0
        while True:
            if gov.paused_until or gov.interval:
                await gov.wait()
            problem = ""
            token: Token | None = None
            async with slots:
                # The header is taken only now that the request can be sent: a request never
                # waits for a connection while holding a token that may expire meanwhile.
                if with_token:
                    token = await tokens.get()
                    send_headers = {**base_headers, "Authorization": token.authorization}
                else:
                    send_headers = base_headers
                stats.requests += 1
                try:
                    async with session.request(
                        method,
                        url,
                        params=query,
                        data=body,
                        headers=send_headers,
                        allow_redirects=False,
                        timeout=attempt_timeout,
                        ssl=self._ssl,
                    ) as resp:
                        status = resp.status
                        reason = resp.reason
                        resp_headers: Mapping[str, str] = resp.headers
                        content = await resp.read()
                        final_url: object = resp.url
                except aiohttp.ClientConnectorCertificateError as exc:
                    raise CrawlError(
                        f"TLS certificate of {safe_url(url)} was not accepted "
                        f"({type(exc.certificate_error).__name__}); check verify_tls and ca_bundle in the connection"
                    ) from None
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status, reason, content, final_url = 0, None, b"", url
                    resp_headers = {}
                    problem = type(exc).__name__
            verdict = classify_api_response(status, resp_headers, clock.wall())
            action = verdict.action
            if action == "ok":
                self._refused.succeeded()
                return APIResponse(method, final_url, status, reason, resp_headers, content, token)
            if action == "renew" and token is not None:
                # Sent again whatever the method: the server refused the credentials, it did not act.
                stats.unauthorized += 1
                self._refused.refused(token, renewals, url, content)
                renewals += 1
                tokens.invalidate(token)
                continue
            if action == "redirect" and allow_redirects:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise HTTPStatusError(f"more than {MAX_REDIRECTS} redirects", status=status, url=safe_url(url))
                stats.redirects += 1
                url = urljoin(str(final_url), resp_headers.get("Location") or "")
                query = None  # the Location carries its own query
                base_headers = dict(base_headers)
                method, body = self._redirected(status, method, body, base_headers)
                allowed = self._origins.allows(url)
                with_token = self._with_token(url)
                if not allowed:
                    base_headers = {k: v for k, v in base_headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
                gov = self._governor(url)
                continue
            retriable = idempotent if idempotent is not None else method in self._retry_methods
            if action in ("pause", "retry") and retriable:
                if retrying is None:
                    retrying = self._retry.start(clock.monotonic(), self._rng)
                delay = retrying.next_delay(clock.monotonic(), verdict.wait)
                if delay is not None:
                    stats.retries += 1
                    if action == "pause":
                        gov.pause(delay)  # every request to this host waits, not only this one
                        stats.rate_limit_pauses += 1
                        log.info("rate limited by %s (HTTP %d); pausing the host %.2fs", safe_url(url), status, delay)
                    else:
                        log.info("retrying %s %s in %.2fs: %s", method, safe_url(url), delay, problem or status)
                        await clock.sleep(delay)
                    continue
            if status == 0:
                why = retrying.stop_reason if retrying is not None else self._not_retried(method, idempotent)
                raise HTTPStatusError(f"{method} got no answer ({problem}); {why}", status=0, url=safe_url(url))
            response = APIResponse(method, final_url, status, reason, resp_headers, content, token)
            if raise_for_status and status >= 400:
                if retrying is not None:
                    why = retrying.stop_reason
                elif action in ("pause", "retry"):
                    why = self._not_retried(method, idempotent)
                else:
                    why = "not retried"
                raise HTTPStatusError(
                    f"{method} failed ({why})",
                    status=status,
                    url=safe_url(url),
                    excerpt=token_excerpt(content, token),
                )
            return response

    @staticmethod
    def _not_retried(method: str, idempotent: bool | None) -> str:
        if idempotent is False:
            return "not retried (idempotent=False)"
        return f"not retried: {method} may not be safe to repeat (pass idempotent=True if it is)"

    @staticmethod
    def _redirected(
        status: int, method: str, body: bytes | str | Body | None, headers: dict[str, str]
    ) -> tuple[str, bytes | str | Body | None]:
        # RFC 9110 §15.4: 303 turns any method but HEAD into GET; 301/302 turn POST into GET
        # (what every client does); 307/308 keep the method and the body.
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            for k in [k for k in headers if k.lower() in ("content-type", "content-length")]:
                del headers[k]
            return "GET", None
        return method, body
