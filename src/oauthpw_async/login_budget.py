"""The login budget: how many unconfirmed password logins a credential may send per window.

One rule for one process (:class:`LoginLedger`, on the provider's monotonic clock) and for a
budget shared by several processes (kept by a coordinator, on its own clock).

Accounts lock on *failed* logins, and some servers answer a wrong password like an outage (a
5xx, a 429, a timeout), so an answer that is not a usable token cannot be told from a lockout
strike. Those *unconfirmed* login requests are what the budget counts. A token proves the
password: it re-arms the budget (the unconfirmed requests before it are forgotten), so a source
without refresh tokens may renew by login as often as its tokens need. Within one window of such
a success, a transient answer is most likely an outage, and more unconfirmed requests are
allowed (``max_after_success``); a password never confirmed keeps the strict ``max_logins``.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import attrs

from .errors import LoginBudgetExhausted, UsageError

if TYPE_CHECKING:
    from .clock import Clock
    from .retry import RetryPolicy

__all__ = ["LoginBudget", "LoginLedger"]


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    """Validator: a finite number of seconds >= 0."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise UsageError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _whole(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


@attrs.frozen
class LoginBudget:
    """At most ``max_logins`` unconfirmed password-login requests per credential in any ``window`` seconds.

    A login request is unconfirmed until its answer is a usable token: a 5xx, a 429, a timeout or
    a lost connection, a 200 page that is no token all stay counted, retries included. A token
    forgets them (a success re-arms the budget); successful logins are never counted. While the
    last token from this password is less than ``window`` seconds old, ``max_after_success``
    unconfirmed requests are allowed instead (retried with backoff: an outage, most likely).
    When the budget is spent, no login is sent until the window allows one.
    """

    max_logins: int = attrs.field(default=3, validator=_whole)
    window: float = attrs.field(default=600.0, validator=_seconds)
    max_after_success: int = attrs.field(default=10, validator=_whole)

    def limit(self, since_success: float | None) -> int:
        """Unconfirmed login requests allowed in the window, ``since_success`` seconds after the last token.

        ``None``: this password never got a token (or not since it changed): the strict bound.
        """
        if since_success is not None and since_success < self.window:
            return max(self.max_logins, self.max_after_success)
        return self.max_logins


class LoginLedger:
    """One process's unconfirmed login requests of one account, on a monotonic clock."""

    __slots__ = ("_confirmed_at", "_sent", "budget")

    def __init__(self, budget: LoginBudget) -> None:
        self.budget = budget
        self._sent: collections.deque[float] = collections.deque()
        self._confirmed_at: float | None = None

    def _trim(self, now: float) -> None:
        sent, window = self._sent, self.budget.window
        while sent and sent[0] <= now - window:
            sent.popleft()

    def limit(self, now: float) -> int:
        """Unconfirmed requests allowed in the window ending ``now``."""
        since = None if self._confirmed_at is None else now - self._confirmed_at
        return self.budget.limit(since)

    def left(self, now: float) -> int:
        """Login requests that may still be sent now."""
        self._trim(now)
        return self.limit(now) - len(self._sent)

    def resume_in(self, now: float) -> float:
        """Seconds until a login request may be sent (0 if one may now)."""
        if self.left(now) > 0:
            return 0.0
        window = self.budget.window
        # The count falls as requests age out; the limit falls when the last success grows old.
        moments = [t + window for t in self._sent]
        if self._confirmed_at is not None:
            moments.append(self._confirmed_at + window)
        for at in sorted(m for m in moments if m > now):
            if sum(1 for t in self._sent if t > at - window) < self.limit(at):
                return at - now
        return window  # not reached: every request has aged out by the last moment

    def sent(self, now: float) -> None:
        """A login request is being sent: it counts until its answer is a token."""
        self._sent.append(now)

    def confirmed(self, now: float) -> None:
        """A login answered with a usable token: the password works, the budget is re-armed."""
        self._sent.clear()
        self._confirmed_at = now

    def password_changed(self) -> None:
        """The password changed: the last success no longer confirms it (the requests sent stay counted)."""
        self._confirmed_at = None

    def clear(self) -> None:
        """Another account: nothing sent for it yet."""
        self._sent.clear()
        self._confirmed_at = None

    @property
    def unconfirmed(self) -> int:
        """Unconfirmed requests currently remembered (some may be older than the window)."""
        return len(self._sent)

    def exhausted(self, now: float, clock: Clock) -> LoginBudgetExhausted:
        """The error of a login the spent budget forbids at ``now`` (naming, on ``clock``, when one may go)."""
        resume_in = self.resume_in(now)
        return LoginBudgetExhausted(
            f"the login budget is spent: {self.limit(now)} unconfirmed password login request(s) (answers that "
            f"were no token) in {self.budget.window:g}s; no login is sent before the window allows one, to keep "
            "the account from being locked",
            retry_at=clock.wall() + resume_in,
            retry_after=resume_in,
        )

    def check(self, now: float, clock: Clock) -> None:
        """Raise :meth:`exhausted` if no login request may be sent at ``now``."""
        if self.left(now) <= 0:
            raise self.exhausted(now, clock)

    def policy(self, retry: RetryPolicy, now: float, clock: Clock) -> RetryPolicy:
        """The retries one password login may use at ``now``; raises :meth:`exhausted` when the budget is spent."""
        left = self.left(now)
        if left <= 0:
            raise self.exhausted(now, clock)
        if self.unconfirmed:
            # An earlier login got no token: one request per renewal, so that the next ones follow
            # the renewal backoff (growing waits), not the quick retries of one token request.
            left = 1
        # Retries of a login are logins too: never more attempts than the budget has left.
        return retry.at_most(left)
