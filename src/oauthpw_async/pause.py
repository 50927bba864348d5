"""Callers of :meth:`TokenProvider.get` waiting out a pause of token requests (``RefreshPolicy.pause_wait``).

A pause (the login budget spent, the token endpoint's rate-limit window, a long backoff) is
waited out when it ends within the caller's own deadline, set at the first pause it meets;
otherwise the caller gets the :class:`~oauthpw_async.errors.TokenRequestsPaused` at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ProviderClosed, TokenRequestsPaused

if TYPE_CHECKING:
    from .clock import Clock
    from .provider import TokenStats

__all__ = ["PauseWait"]

log = logging.getLogger("oauthpw_async.provider")


class PauseWait:
    """The pause callers are waiting out now (:attr:`current`), and each caller's wait."""

    __slots__ = ("_clock", "_limit", "_stats", "current")

    def __init__(self, clock: Clock, limit: float, stats: TokenStats) -> None:
        self._clock = clock
        #: The longest one caller waits (``RefreshPolicy.pause_wait``).
        self._limit = limit
        self._stats = stats
        #: The pause callers are waiting out now (``None``: none).
        self.current: TokenRequestsPaused | None = None

    async def wait_out(
        self, paused: TokenRequestsPaused, now: float, deadline: float | None, *, is_open: Callable[[], bool]
    ) -> float:
        """Sleep until ``paused`` ends if that is within this call's deadline, else raise it; the deadline.

        ``deadline`` is ``None`` at a caller's first pause (it is set then); ``is_open`` says
        whether the provider is still open (a closed one raises instead of waiting).
        """
        if deadline is None:
            deadline = now + self._limit
        resume_in = paused.resume_in
        if now + resume_in > deadline or not is_open():
            raise paused
        if self.current is None or abs(self.current.retry_at - paused.retry_at) > 1.0:
            log.warning("token requests are paused: %s; waiting (RefreshPolicy.pause_wait)", paused.detail)
        self.current = paused
        self._stats.pause_waits += 1
        try:
            await self._clock.sleep(max(resume_in, 0.001))
        finally:
            if self.current is paused:
                self.current = None
        if not is_open():
            raise ProviderClosed("the token provider closed while token requests were paused")
        return deadline
