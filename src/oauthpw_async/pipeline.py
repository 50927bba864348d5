"""The one way an API request is sent, for the crawler and the authorized session alike.

Layered the way httpx's client is, outermost first; each rule lives here once:

1. **Redirects** (:meth:`RequestPipeline.send`): every hop is followed by hand. Before a hop is
   sent its origin is checked (:class:`~oauthpw_async._api.Origins`): the token goes only to
   the configured origins. A foreign hop is refused (:class:`ForeignOriginError`) or, in
   ``follow_without_token`` mode, sent with nothing credential-like: no ``Authorization``, no
   cookie from any jar (foreign hops go through a cookie-less client on the same connection
   pool), and of the request's headers only :data:`~oauthpw_async.headers.FORWARDABLE_HEADERS`.
   The method rules of RFC 9110 §15.4 apply (303, and 301/302 after a POST, become a GET
   without a body). A URL with ``user:password@`` in it is refused: the SDK sends the token only.
2. **Retries**: what an answer means is :func:`~oauthpw_async.responses.classify_api_response`;
   how long to wait is the one :class:`~oauthpw_async.retry.RetryPolicy`. A 429/503 pauses every
   request to the host (its governor), other transient failures back off this request only.
   A request the caller did not mark retriable is not sent again after a transient failure.
3. **Auth**: a request first waits for its host's governor and a slot, *then* takes the token, so
   no request queues while holding a token that may expire meanwhile. A 401 renews the refused
   token and sends again, within the bounds of :class:`~oauthpw_async._api.RefusedTokens`.
4. **One send**: aiohttp, with the connection's TLS settings; every aiohttp exception maps to
   either "no answer" (retried as above) or a typed error here, never a builtin.

What the callers keep is theirs alone: the engine decodes pages and keeps positions, the session
builds bodies and response objects.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from random import Random
from typing import Any
from urllib.parse import urljoin

import aiohttp
import anyio
import attrs

from ._api import MAX_REDIRECTS, Governor, HostGovernor, Origins, RefusedTokens, RequestStats, token_excerpt
from ._httputil import origin, safe_url
from .clock import Clock
from .errors import CrawlError, ForeignOriginError, HTTPStatusError
from .grant import Token
from .headers import foreign_hop_headers
from .responses import classify_api_response
from .retry import Retrying, RetryPolicy
from .sources import TokenSource
from .transport import ssl_context

__all__ = ["Answer", "RequestPipeline", "redirected_method", "tls_of"]

_log = logging.getLogger("oauthpw_async.requests")

Query = Any  # what aiohttp accepts as params (a mapping, pairs or a string)
Body = Any  # bytes, str or a form (mapping or pairs): replayable

#: Routes (scheme://host:port prefix -> decisions) remembered per pipeline before starting over.
_ROUTES_MAX = 4096
#: The headers of no answer (a request that got none).
_NO_HEADERS: Mapping[str, str] = {}
#: What may follow an origin in a URL (``""``: the URL is the origin alone).
_PATH_START = ("/", "?", "#", "")


@attrs.define(slots=True)
class Answer:
    """The last answer of one request, after redirects, renewals and retries.

    ``why`` is empty for a success or a definitive failure; for a transient failure that was not
    sent again it says why (retries ran out, or the request was not retriable).
    """

    method: str
    url: Any  # aiohttp's URL object (or the URL text): made a string only when asked for
    status: int
    reason: str | None
    headers: Mapping[str, str]
    body: bytes
    token: Token | None
    why: str = ""

    def error(self, message: str, *, data: object = None) -> HTTPStatusError:
        """An :class:`HTTPStatusError` for this answer; the body excerpt never holds the token."""
        if self.why:
            message = f"{message} ({self.why})"
        return HTTPStatusError(
            message,
            status=self.status,
            url=safe_url(str(self.url)),
            excerpt=token_excerpt(self.body, self.token),
            data=data,
        )


@attrs.define(slots=True)
class _Route:
    """What is decided once per origin: may it have the token, and its host's governor."""

    allowed: bool
    governor: Governor


def tls_of(tokens: TokenSource) -> ssl.SSLContext | bool:
    """The TLS settings of API requests: the connection's (``verify_tls``, ``ca_bundle``), else the default.

    Raises :class:`~oauthpw_async.errors.ConfigError` for an unusable CA bundle.
    """
    config = getattr(tokens, "config", None)
    return ssl_context(config) if config is not None else True


def redirected_method(status: int, method: str) -> bool:
    """Whether a redirect with ``status`` turns ``method`` into a GET without a body (RFC 9110 §15.4).

    303 turns any method but HEAD into GET; 301/302 turn POST into GET (what every client does);
    307/308 keep the method and the body.
    """
    return (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST")


@attrs.define(slots=True)
class _Hop:
    """Where one request stands in its redirect chain: what is sent next, and through which client."""

    method: str
    url: str
    query: Query | None
    body: Body | None
    headers: Mapping[str, str]
    route: _Route
    session: aiohttp.ClientSession
    client: aiohttp.ClientSession  # the session, or the cookie-less one after a foreign hop
    redirects: int = 0
    renewals: int = 0  # 401s answered with a renewed token
    retrying: Retrying | None = None  # the retry policy's state, from the first transient failure


def _transport_problem(exc: BaseException, method: str, url: str) -> str:
    """What a send that got no answer is called, for the retry log; raises for what is no transient."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        raise CrawlError(
            f"TLS certificate of {safe_url(url)} was not accepted "
            f"({type(exc.certificate_error).__name__}); check verify_tls and ca_bundle in the connection"
        ) from None
    if isinstance(exc, aiohttp.InvalidURL):
        raise CrawlError(f"{safe_url(url)} is not a URL that can be requested") from None
    if isinstance(exc, (TimeoutError, aiohttp.ClientError)):
        return type(exc).__name__
    raise CrawlError(  # aiohttp refuses what it cannot put on the wire with a ValueError
        f"{method} {safe_url(url)} could not be sent ({type(exc).__name__}): a header, the "
        "query or the body holds something HTTP cannot carry"
    ) from None


def _why_not_sent_again(action: str, retrying: Retrying | None, not_retried: Callable[[], str] | None) -> str:
    """Why a transient failure is the last answer ("" for a definitive one)."""
    if action not in ("pause", "retry"):
        return ""
    if retrying is not None:
        return retrying.stop_reason
    return not_retried() if not_retried is not None else "not retried"


class RequestPipeline:
    """Sends API requests with a token source's token, by the rules in this module's docstring.

    One per crawl or session: it owns the host governors, the 401 bookkeeping and a cookie-less
    client for foreign hops (closed by :meth:`aclose`). The caller owns the aiohttp session.

    Args:
        tokens: where the token comes from.
        origins: the origins that may receive the token.
        foreign_origins: ``"fail"`` or ``"follow_without_token"``.
        slots: requests in flight at once (a FIFO semaphore).
        retry: the retry policy of one request.
        timeout: the default time one attempt may take.
        clock: time for backoff and pauses.
        governor: a new governor for a host (``"host:port"``).
        stats: counters to keep (requests, retries, 401s, pauses, redirects).
        fix_hint: how the user lets a foreign origin through, for :class:`ForeignOriginError`.
        sensitive_headers: headers never sent to a foreign origin, beyond the ones that are not
            forwardable anyway.
        tls: the TLS settings (default: :func:`tls_of` the token source).
    """

    def __init__(
        self,
        tokens: TokenSource,
        *,
        origins: Origins,
        foreign_origins: str,
        slots: anyio.Semaphore,
        retry: RetryPolicy,
        timeout: aiohttp.ClientTimeout,
        clock: Clock,
        governor: Callable[[str], Governor],
        stats: RequestStats,
        fix_hint: str,
        sensitive_headers: Sequence[str] = (),
        tls: ssl.SSLContext | bool | None = None,
    ) -> None:
        self.tokens = tokens
        self.origins = origins
        self.stats = stats
        self._follow_foreign = foreign_origins == "follow_without_token"
        self._slots = slots
        self._retry = retry
        self._timeout = timeout
        self._clock = clock
        self._new_governor = governor
        self._fix_hint = fix_hint
        self._sensitive = tuple(sensitive_headers)
        self._rng = Random()
        self._refused = RefusedTokens()
        self._routes: dict[str, _Route] = {}  # by scheme://host:port as written
        self._by_url: dict[str, _Route] = {}  # by whole URL, for URLs called again and again
        self._last: tuple[str, _Route] | None = None  # the allowed origin routed last, as written
        self._hosts: dict[str, Governor] = {}
        self._bare: aiohttp.ClientSession | None = None  # cookie-less, for foreign hops
        self._ssl = tls_of(tokens) if tls is None else tls
        # The last headers with a token: reused while the token and the base headers are the same.
        self._auth_cache: tuple[Mapping[str, str] | None, Token | None, dict[str, str]] = (None, None, {})

    async def aclose(self) -> None:
        """Close the cookie-less client of foreign hops (the shared connection pool stays open)."""
        if self._bare is not None:
            bare, self._bare = self._bare, None
            await bare.close()

    # --- per origin ----------------------------------------------------------------------------------

    def route(self, url: str) -> _Route:
        """The decisions for ``url``'s origin; refuses a foreign origin unless told to follow it."""
        # Most URLs (a record's detail, a next page) are under the allowed origin routed last.
        last = self._last
        if last is not None and url.startswith(last[0]) and url[len(last[0]) : len(last[0]) + 1] in _PATH_START:
            return last[1]
        route = self._by_url.get(url)  # and many programs call a handful of URLs many times
        if route is not None and route.allowed:
            return route
        route = self._origin_route(url)
        if len(self._by_url) >= _ROUTES_MAX:
            self._by_url.clear()
        self._by_url[url] = route
        return route

    def _origin_route(self, url: str) -> _Route:
        scheme_end = url.find("://")
        netloc_end = len(url)
        if scheme_end > 0:
            for mark in "/?#":
                at = url.find(mark, scheme_end + 3)
                if 0 <= at < netloc_end:
                    netloc_end = at
        prefix = url[:netloc_end]
        route = self._routes.get(prefix)
        if route is None:
            route = self._new_route(url, prefix)
        elif not route.allowed and not self._follow_foreign:
            self._refuse(url)
        if route.allowed:
            self._last = (prefix, route)
        return route

    def _new_route(self, url: str, prefix: str) -> _Route:
        netloc = prefix.partition("://")[2]
        if "@" in netloc:
            raise CrawlError(
                f"{safe_url(url)} carries a user name or password in its address (user:password@host); "
                "the SDK authenticates with the token alone and never sends such a URL: fix the link "
                "or the base URL"
            )
        if origin(url) == "null":
            raise CrawlError(f"{safe_url(url)} is not an absolute http(s) URL that can be requested")
        allowed = self.origins.allows(url)
        if not allowed and not self._follow_foreign:
            self._refuse(url)
        host = netloc.lower()
        gov = self._hosts.get(host)
        if gov is None:
            gov = self._hosts[host] = self._new_governor(host)
        route = _Route(allowed, gov)
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        self._routes[prefix] = route
        return route

    def _refuse(self, url: str) -> None:
        foreign = origin(url)
        raise ForeignOriginError(
            f"{safe_url(url)} is on {foreign}, not an origin the token may be sent to; "
            f"add {foreign!r} to allowed_origins if it is yours, or {self._fix_hint} to read it without credentials",
            origin=foreign,
        )

    def _foreign_client(self, session: aiohttp.ClientSession) -> aiohttp.ClientSession:
        # Same pool, no cookie jar: a foreign origin gets no cookie of the API's (aiohttp's jar
        # ignores ports and follows https -> http), and what it sets is not kept.
        if self._bare is None or self._bare.connector is not session.connector:
            self._bare = aiohttp.ClientSession(
                connector=session.connector, connector_owner=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._bare

    def _with_token(self, headers: Mapping[str, str], token: Token) -> dict[str, str]:
        base, cached_token, cached = self._auth_cache
        if base is headers and cached_token is token:
            return cached
        out = {**headers, "Authorization": token.authorization}
        self._auth_cache = (headers, token, out)
        return out

    # --- one request ---------------------------------------------------------------------------------

    async def send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Query | None = None,
        body: Body | None = None,
        allow_redirects: bool = True,
        retriable: bool = True,
        not_retried: Callable[[], str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Answer:
        """Send one request through redirects, 401 renewals and retries; the last answer.

        ``headers`` are checked already (:func:`~oauthpw_async.headers.checked_headers`); ``url`` is
        absolute; ``not_retried`` says why a transient failure was not sent again (``retriable`` false).
        Raises :class:`HTTPStatusError` (no answer), :class:`ForeignOriginError`, :class:`UnauthorizedError`,
        :class:`CrawlError` (TLS, unusable URLs) and what the token source raises.
        """
        slots, attempt_timeout = self._slots, timeout or self._timeout
        hop = _Hop(method, url, params, body, headers, self.route(url), session, session)
        if not hop.route.allowed:
            self._go_foreign(hop)
        while True:  # one attempt a turn, inline: each coroutine between the caller and aiohttp costs every wake-up
            if type(gov := hop.route.governor) is not HostGovernor or not gov.idle:
                await gov.wait()  # an idle local governor has nothing to wait for
            try:  # a free slot is taken at once, without a coroutine of its own
                slots.acquire_nowait()
            except anyio.WouldBlock:
                await slots.acquire()
            try:
                token = await self.tokens.get() if hop.route.allowed else None  # now that it can be sent
                send_headers = dict(hop.headers) if token is None else self._with_token(hop.headers, token)
                self.stats.requests += 1
                try:
                    async with hop.client.request(
                        hop.method,
                        hop.url,
                        params=hop.query,
                        data=hop.body,
                        headers=send_headers,
                        allow_redirects=False,
                        timeout=attempt_timeout,
                        ssl=self._ssl,
                    ) as resp:
                        content = await resp.read()
                        answer = Answer(hop.method, resp.url, resp.status, resp.reason, resp.headers, content, token)
                    problem = ""
                except (TimeoutError, ValueError, aiohttp.ClientError) as exc:
                    problem = _transport_problem(exc, hop.method, hop.url)  # raises for what is no transient
                    answer = Answer(hop.method, hop.url, 0, None, _NO_HEADERS, b"", token)
            finally:
                slots.release()
            if 200 <= answer.status < 300:  # the verdict of every success, without a call or a clock read
                self._refused.succeeded()
                return answer
            if not await self._send_again(hop, answer, problem, allow_redirects, retriable, not_retried):
                return answer

    async def _send_again(
        self,
        hop: _Hop,
        answer: Answer,
        problem: str,
        allow_redirects: bool,
        retriable: bool,
        not_retried: Callable[[], str] | None,
    ) -> bool:
        """After an answer that is no success: whether the request goes out again, else why not (``answer.why``).

        It goes out again with a renewed token after a 401, to a redirect's target, or after the
        retry policy's wait for a transient failure. Raises :class:`HTTPStatusError` when no answer
        came and none is sent again.
        """
        verdict = classify_api_response(answer.status, answer.headers, self._clock.wall())
        action = verdict.action
        if action == "renew" and answer.token is not None:
            # Sent again whatever the method: the server refused the credentials, it did not act.
            self.stats.unauthorized += 1
            self._refused.refused(answer.token, hop.renewals, hop.url, answer.body)
            hop.renewals += 1
            self.tokens.invalidate(answer.token)
            return True
        if action == "redirect" and allow_redirects:
            self._redirect(hop, answer.status, answer.url, answer.headers)
            return True
        if action in ("pause", "retry") and retriable:
            if hop.retrying is None:  # made at the first failure: the happy path reads no clock
                hop.retrying = self._retry.start(self._clock.monotonic(), self._rng)
            if await self._wait_to_retry(hop, hop.retrying, action, verdict.wait, problem or f"HTTP {answer.status}"):
                return True
        answer.why = _why_not_sent_again(action, hop.retrying, not_retried)
        if answer.status == 0:
            raise HTTPStatusError(
                f"{hop.method} got no answer ({problem}); {answer.why}", status=0, url=safe_url(hop.url)
            )
        return False

    # --- what only a redirect, a failure or a foreign hop needs ----------------------------------------

    def _go_foreign(self, hop: _Hop) -> None:
        """From here on the chain is on a foreign origin: nothing credential-like, no cookie jar."""
        hop.headers = foreign_hop_headers(hop.headers, self._sensitive)
        hop.client = self._foreign_client(hop.client)

    def _redirect(self, hop: _Hop, status: int, final_url: Any, resp_headers: Mapping[str, str]) -> None:
        """Point ``hop`` at the redirect's target: the method rules, the origin check, the foreign-hop rule."""
        hop.redirects += 1
        if hop.redirects > MAX_REDIRECTS:
            raise HTTPStatusError(f"more than {MAX_REDIRECTS} redirects", status=status, url=safe_url(hop.url))
        self.stats.redirects += 1
        try:
            hop.url = urljoin(str(final_url), resp_headers.get("Location") or "")
        except ValueError:  # "http://[::1": not a URL (the Location itself may hold anything)
            raise HTTPStatusError(
                "the redirect's Location is not a valid URL", status=status, url=safe_url(str(final_url))
            ) from None
        hop.query = None  # the Location carries its own query
        if redirected_method(status, hop.method):
            hop.method, hop.body = "GET", None
            hop.headers = {k: v for k, v in hop.headers.items() if k.lower() not in ("content-type", "content-length")}
        hop.route = self.route(hop.url)
        if not hop.route.allowed:  # and it stays that way for the rest of the chain
            self._go_foreign(hop)
        else:
            hop.client = hop.session  # the API's own origin: its cookies may go along

    async def _wait_to_retry(self, hop: _Hop, retrying: Retrying, action: str, wait: float | None, what: str) -> bool:
        """Wait before sending again (a host-wide pause for a rate limit); ``False`` when retries ran out."""
        delay = retrying.next_delay(self._clock.monotonic(), wait)
        if delay is None:
            return False
        self.stats.retries += 1
        if action == "pause":
            hop.route.governor.pause(delay)  # every request to this host waits, not only this one
            self.stats.rate_limit_pauses += 1
            _log.info("rate limited by %s (%s); pausing the host %.2fs", safe_url(hop.url), what, delay)
        else:
            _log.info("retrying %s %s in %.2fs: %s", hop.method, safe_url(hop.url), delay, what)
            await self._clock.sleep(delay)
        return True
