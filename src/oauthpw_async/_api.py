"""What the crawler and the authorized session share about sending API requests.

Where a token may go (:class:`Origins`), how a path resolves under a base URL
(:func:`resolve_url`), how every request to one host waits after a 429 or under a rate
(:class:`HostGovernor`), and the bounds on redirects and renewals. What an answer *means* is
:mod:`oauthpw_async.responses`; how long to wait, :mod:`oauthpw_async.retry`.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from ._httputil import excerpt, origin, safe_url
from .clock import Clock
from .errors import UnauthorizedError
from .grant import Token

__all__ = [
    "MAX_REDIRECTS",
    "MAX_RENEWALS_PER_REQUEST",
    "REFUSED_TOKENS_BREAKER",
    "Governor",
    "HostGovernor",
    "Origins",
    "RefusedTokens",
    "RequestStats",
    "resolve_url",
    "token_excerpt",
]

#: Redirects followed for one request before giving up.
MAX_REDIRECTS = 10
#: Renewals one request may cause, each for a different rejected token.
MAX_RENEWALS_PER_REQUEST = 3
#: Distinct tokens refused in a row, with no success between, after which the crawl stops.
REFUSED_TOKENS_BREAKER = 3


class Governor(Protocol):
    """What the engine asks of a host's governor: wait for a turn, and pause the host after a 429/503.

    :class:`HostGovernor` governs within one process; a shared governor (kept by a coordinator)
    shares the rate and the pause with every process.
    """

    async def wait(self) -> None:
        """Return when a request to the host may be sent."""
        ...

    def pause(self, seconds: float) -> None:
        """Hold every request to the host back for ``seconds`` (a server's ``Retry-After``)."""
        ...


class HostGovernor:
    """Per-host pause (shared by every task) and an optional request rate, on the caller's clock."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self.clock = clock
        self.paused_until = 0.0
        self.interval = 1.0 / rate if rate else 0.0
        self.next_slot = 0.0

    async def wait(self) -> None:
        clock = self.clock
        while self.paused_until and (delay := self.paused_until - clock.monotonic()) > 0:
            await clock.sleep(delay)
        if self.interval:
            now = clock.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
            if slot > now:
                await clock.sleep(slot - now)

    @property
    def idle(self) -> bool:
        """Nothing to wait for: no pause was ever set and no rate applies."""
        return not self.paused_until and not self.interval

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock.monotonic() + seconds)


class Origins:
    """The origins the token may be sent to, with a prefix test that avoids parsing most URLs."""

    def __init__(self, origins: list[str]) -> None:
        self.allowed = frozenset(origin(o) for o in origins) - {"null"}
        prefixes: list[str] = []
        for o in self.allowed:
            scheme, _, hostport = o.partition("://")
            prefixes.append(f"{o}/")
            host, _, port = hostport.rpartition(":")
            if {"http": "80", "https": "443"}.get(scheme) == port:
                prefixes.append(f"{scheme}://{host}/")
        self._prefixes = tuple(prefixes)

    def allows(self, url: str) -> bool:
        """Whether the token may go to ``url``."""
        return url.startswith(self._prefixes) or origin(url) in self.allowed


def resolve_url(base: str, target: str) -> str:
    """``target`` as an absolute URL: as is when absolute, else joined *under* ``base``.

    Like httpx's ``base_url``: ``base="https://h/servicenow"`` with ``"/api/now/table/x"`` or
    ``"api/now/table/x"`` gives ``https://h/servicenow/api/now/table/x``.
    """
    if "://" in target[:16]:
        return target  # absolute; another scheme than http(s) is refused by the origin check, never joined
    return base.rstrip("/") + "/" + target.lstrip("/")


@attrs.define
class RequestStats:
    """Counters of API requests, kept by the crawler and the session alike (plain ints; reading is free)."""

    #: HTTP requests sent, retries, renewals and redirect hops included.
    requests: int = 0
    #: Requests sent again after a transient failure or a rate-limit pause.
    retries: int = 0
    #: Answers with HTTP 401.
    unauthorized: int = 0
    #: Times a 429/503 paused every request to a host.
    rate_limit_pauses: int = 0
    #: Redirect hops followed.
    redirects: int = 0


def token_excerpt(body: bytes, token: Token | None) -> str:
    """A short excerpt of an API answer for an error message, with the request's token removed.

    Servers echo request headers back in error pages, raw, JSON-escaped, HTML-escaped or
    percent-encoded; :func:`~oauthpw_async._httputil.excerpt` scrubs every such spelling of the
    token and of the whole ``Authorization`` value before it cuts the text.
    """
    if token is None:
        return excerpt(body)
    return excerpt(body, (token.authorization, token.access_token.reveal()))


class RefusedTokens:
    """The 401 rule, one place for the crawler and the session.

    Each rejected token gets its own renewal (the caller calls ``invalidate(token)`` and
    retries); a request may cause at most :data:`MAX_RENEWALS_PER_REQUEST`, and when
    :data:`REFUSED_TOKENS_BREAKER` different tokens in a row are refused with no success
    between, the account has lost access: :class:`UnauthorizedError`, not a renewal storm.
    """

    __slots__ = ("_refused",)

    def __init__(self) -> None:
        self._refused: set[str] = set()

    def succeeded(self) -> None:
        """A request succeeded: the tokens refused so far no longer count."""
        if self._refused:
            self._refused.clear()

    def refused(self, token: Token, renewals: int, url: str, body: bytes) -> None:
        """A 401 with ``token`` after ``renewals`` renewals of this request; raises when it must stop."""
        self._refused.add(token.access_token.reveal())
        why = ""
        if len(self._refused) >= REFUSED_TOKENS_BREAKER:
            why = f"{len(self._refused)} different tokens were refused in a row with no success between"
        elif renewals >= MAX_RENEWALS_PER_REQUEST:
            why = f"refused {renewals + 1} times, with a renewed token each time"
        if why:
            raise UnauthorizedError(
                f"{why}: the account has lost access to this API (permissions, a revoked grant or a "
                "changed password); fix the account, then run again",
                status=401,
                url=safe_url(url),
                excerpt=token_excerpt(body, token),
            )
