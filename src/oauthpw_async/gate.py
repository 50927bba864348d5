"""Whether a :class:`~oauthpw_async.provider.TokenProvider` may start a renewal now: one object.

A :class:`Gate` remembers what failed renewals taught: a definitive rejection (callers get it at
once), the backoff before the next attempt, and the token endpoint's own rate-limit window
(nothing is sent inside it). A token closes nothing: :meth:`Gate.opened` forgets the failures,
never the server's window.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING

from .errors import (
    DefinitiveTokenError,
    OAuthPWError,
    RefreshTokenRejected,
    TokenEndpointRateLimited,
    TokenRequestsPaused,
)
from .renewal import ONLY_AFTER_RESET, locked_out, retry_meaning
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["NO_WAIT", "Gate"]

log = logging.getLogger("oauthpw_async.provider")

#: A "not before" time that has always passed: no backoff, no server window.
NO_WAIT = -math.inf


class Gate:
    """The failure and pause state of one provider's renewals (monotonic times)."""

    __slots__ = ("backoff", "failures", "fatal", "fatal_recheck_at", "rate_limited_until", "retry_not_before")

    def __init__(self, backoff: RetryPolicy) -> None:
        #: Waits between failed renewals.
        self.backoff = backoff
        #: The error callers get at once instead of a renewal (``None``: none).
        self.fatal: OAuthPWError | None = None
        #: When the renewer is asked again despite :attr:`fatal` (:data:`ONLY_AFTER_RESET`: only then).
        self.fatal_recheck_at = ONLY_AFTER_RESET
        #: Failed renewals in a row.
        self.failures = 0
        #: No renewal starts before this (backoff after failures, and the server's windows).
        self.retry_not_before = NO_WAIT
        #: The end of the server's last rate-limit window (kept across a reset).
        self.rate_limited_until = NO_WAIT

    def holds(self, now: float, *, renewing: bool) -> bool:
        """Whether callers get :attr:`fatal` at once (else a renewal may be tried).

        Past its recheck time (with no renewal in flight) it is forgotten: the renewer is asked
        again (a shared renewer reads state another process may have fixed; it does not log in
        while a rejection stands).
        """
        if self.fatal is not None and now >= self.fatal_recheck_at and not renewing:
            self.fatal = None
        return self.fatal is not None

    def error(self) -> OAuthPWError:
        """The error callers get while :meth:`holds` (a fresh copy)."""
        assert self.fatal is not None
        return locked_out(self.fatal)

    def may_start(self, now: float) -> bool:
        """Whether the backoff allows a renewal now."""
        return now >= self.retry_not_before

    def delay(self, now: float) -> float:
        """Seconds a renewal starting now sleeps first (the backoff or the server's window)."""
        return max(self.retry_not_before, self.rate_limited_until) - now

    def paused(self, now: float, *, max_wait: float, clock: Clock) -> TokenRequestsPaused | None:
        """The server's window or the backoff, if it forbids a request for longer than ``max_wait``."""
        limited = self.rate_limited_until - now
        if limited > max_wait:
            return TokenEndpointRateLimited(
                f"the token endpoint asked for a pause of {limited:.0f}s, longer than max_wait "
                f"({max_wait:g}s); no token request is sent before it ends",
                retry_at=clock.wall() + limited,
                retry_after=limited,
            )
        return None

    def backing_off(self, now: float, *, max_wait: float, clock: Clock) -> TokenRequestsPaused | None:
        """The backoff after failures, if it forbids a renewal for longer than ``max_wait``."""
        backoff = self.retry_not_before - now
        if backoff > max_wait:
            return TokenRequestsPaused(
                f"token renewals failed {self.failures} time(s) in a row and are backing off",
                retry_at=clock.wall() + backoff,
                retry_after=backoff,
            )
        return None

    def failed(
        self, exc: OAuthPWError, now: float, rng: random.Random, *, recheck: float, valid_for: float | None
    ) -> None:
        """A renewal failed with ``exc``: note what it teaches (a rejection, a backoff step, a window).

        ``recheck`` is the renewer's wait after a rejected login, ``valid_for`` the seconds the
        current token is still handed out (``None``: none is).
        """
        meaning = retry_meaning(exc)
        if isinstance(exc, DefinitiveTokenError) and not isinstance(exc, RefreshTokenRejected):
            self.fatal = exc
            # A shared renewer may see the password fixed elsewhere: it is asked again now and then
            # (it never logs in while the rejection stands here); a local one only after reset().
            self.fatal_recheck_at = now + recheck
            log.error("token request rejected, no automatic retry: %s", exc)
            return
        if meaning is not None and meaning.latch:
            # A set-up to fix (e.g. a coordinator refusing this process): callers hear of it at once,
            # and the renewer is asked again after a growing pause.
            self.failures += 1
            self.fatal = exc
            self.fatal_recheck_at = now + self.backoff.backoff(self.failures - 1, rng)
            log.error("the token cannot be renewed: %s", exc)
            return
        retry_after: float | None = getattr(exc, "retry_after", None)
        if retry_after is not None and getattr(exc, "status", None) is not None:
            # The server's own window (Retry-After, a rate-limit reset): nothing is sent inside it.
            self.rate_limited_until = max(self.rate_limited_until, now + retry_after)
        if isinstance(exc, TokenRequestsPaused):
            # Nothing new was learnt about the server: no backoff step, just no attempt before then.
            self.retry_not_before = max(self.retry_not_before, now + exc.resume_in)
            log.warning("token renewal paused: %s", exc)
            return
        self.failures += 1
        delay = self.backoff.backoff(self.failures - 1, rng)
        if valid_for is not None:
            delay = min(delay, valid_for / 2)  # try again before the token runs out
        if meaning is not None and meaning.max_delay is not None:
            # Not the token endpoint: cheap to ask again, and callers learn of the failure (or of
            # its end) within seconds instead of after a long backoff.
            delay = min(delay, meaning.max_delay)
        delay = max(delay, self.rate_limited_until - now)
        self.retry_not_before = now + delay
        log.warning("token renewal failed, next attempt in %.2fs: %s", delay, exc)

    def opened(self) -> None:
        """A working token: what failed or was rejected before is fixed (the server's window stays)."""
        self.failures = 0
        self.retry_not_before = NO_WAIT
        self.fatal = None

    def reset(self, *, other_account: bool) -> None:
        """Logins are allowed again; another account also forgets the server's window."""
        if other_account:
            self.rate_limited_until = NO_WAIT
        self.fatal = None
        self.failures = 0
        self.retry_not_before = self.rate_limited_until
