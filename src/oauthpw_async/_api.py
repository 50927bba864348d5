"""What the crawler and the authorized session share about sending API requests.

Where a token may go (:class:`Origins`), how a path resolves under a base URL
(:func:`resolve_url`), how every request to one host waits after a 429 or under a rate
(:class:`HostGovernor`), and the bounds on redirects and renewals. What an answer *means* is
:mod:`oauthpw_async.responses`; how long to wait, :mod:`oauthpw_async.retry`.
"""

from __future__ import annotations

from typing import Protocol

from ._httputil import origin
from .clock import Clock

__all__ = [
    "MAX_REDIRECTS",
    "MAX_RENEWALS_PER_REQUEST",
    "REFUSED_TOKENS_BREAKER",
    "Governor",
    "HostGovernor",
    "Origins",
    "resolve_url",
]

#: Redirects followed for one request before giving up.
MAX_REDIRECTS = 10
#: Renewals one request may cause, each for a different rejected token.
MAX_RENEWALS_PER_REQUEST = 3
#: Distinct tokens refused in a row, with no success between, after which the crawl stops.
REFUSED_TOKENS_BREAKER = 3


class Governor(Protocol):
    """What the engine asks of a host's governor: wait for a turn, and pause the host after a 429/503.

    :class:`HostGovernor` governs within one process; a fleet's governor
    (:mod:`oauthpw_async.fleet.crawl`) shares the rate and the pause with every worker.
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
    if target.startswith(("https://", "http://")):
        return target
    if "://" in target[:16]:
        return target  # another scheme: refused by the origin check, never joined
    return base.rstrip("/") + "/" + target.lstrip("/")
