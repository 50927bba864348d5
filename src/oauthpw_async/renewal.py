"""One renewal step of a :class:`~oauthpw_async.provider.TokenProvider`, behind a small protocol.

The provider owns the lifecycle (single flight, backoff, pauses, the states); what one renewal
*does* is a :class:`Renewer`'s job. :class:`LocalRenewer` refreshes or logs in by itself; a
renewal shared with other processes is another renewer, made by the object passed as the
provider's ``coordinator`` (a :class:`RenewerFactory`). A renewer sees the provider only through
a :class:`RenewalContext`: public attributes and methods, no private state.

Errors a renewer raises that are not a :class:`~oauthpw_async.errors.TokenError` say how the
provider retries them with a ``renewal_retry`` attribute (a :class:`RetryMeaning`).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Literal, Protocol

import attrs

from .errors import (
    CredentialsLockedOut,
    InvalidCredentials,
    OAuthPWError,
    RefreshTokenRejected,
    TokenResponseError,
    TransientTokenError,
)
from .grant import Token, TokenRequest, build_password_request, build_refresh_request

if TYPE_CHECKING:
    from .clock import Clock
    from .config import PasswordGrantConfig
    from .provider import TokenStats
    from .retry import RetryPolicy

__all__ = [
    "ONLY_AFTER_RESET",
    "LocalRenewer",
    "RenewalContext",
    "RenewalSource",
    "Renewer",
    "RenewerFactory",
    "RetryMeaning",
    "Rotation",
    "locked_out",
    "retry_meaning",
]

log = logging.getLogger("oauthpw_async.provider")

#: Where a renewed token came from (a :class:`~oauthpw_async.provider.TokenEvent`'s ``source``).
RenewalSource = Literal["password", "refresh_token", "shared"]

#: A :attr:`Renewer.rejection_recheck` for a rejection that nothing but ``reset()`` lifts.
ONLY_AFTER_RESET = math.inf


@attrs.define
class Rotation:
    """What the server has shown about refresh-token rotation (RFC 6749 6: it MAY issue a new one).

    Until a refresh answered with the same refresh token (or none) it may rotate them: then a
    refresh that got no usable answer is never sent again (sent again, a used refresh token looks
    like theft and revokes the whole token family: Okta, Auth0), and a password login follows.
    """

    #: Counts the refreshes given up that way (``refresh_unconfirmed``).
    stats: TokenStats
    #: Whether refresh answers carried a new refresh token (``None``: no refresh answered yet).
    rotates: bool | None = None

    @property
    def reusable(self) -> bool:
        """Whether the server has shown that a refresh token stays valid after use (no rotation)."""
        return self.rotates is False

    def learn(self, previous: Token, renewed: Token) -> None:
        """Note whether the server rotates refresh tokens, from a renewal of ``previous`` into ``renewed``."""
        old, new = previous.refresh_token, renewed.refresh_token
        if old is not None and new is not None:
            self.rotates = new.reveal() != old.reveal()

    def maybe_spent(self, exc: TransientTokenError | TokenResponseError) -> bool:
        """Whether a failed refresh may have used its refresh token up, so that it is never sent again.

        No usable answer (none at all, a 500/502/504, a page that is no token) while the server may
        rotate refresh tokens.
        """
        maybe_used = isinstance(exc, TokenResponseError) or exc.may_have_been_processed
        if not maybe_used or self.reusable:
            return False
        self.stats.refresh_unconfirmed += 1
        log.warning("refresh may have been used without an answer (%s); logging in instead", exc.detail)
        return True


@attrs.frozen
class RetryMeaning:
    """How the provider retries a renewal that failed with an error carrying it (``renewal_retry``).

    The default is the renewal backoff, as for any transient failure.
    """

    #: Callers get the error at once, without a renewal, until a growing pause has passed (a set-up
    #: to fix, not a passing outage).
    latch: bool = False
    #: The longest wait before the next attempt (cheap to ask again), ``None``: the backoff's own.
    max_delay: float | None = None


def retry_meaning(exc: BaseException) -> RetryMeaning | None:
    """The :class:`RetryMeaning` an error carries, ``None`` if it carries none."""
    meaning = getattr(exc, "renewal_retry", None)
    return meaning if isinstance(meaning, RetryMeaning) else None


def locked_out(fatal: OAuthPWError) -> OAuthPWError:
    """The error callers get again after ``fatal`` stopped renewals (a fresh copy, no traceback)."""
    if isinstance(fatal, InvalidCredentials):
        return CredentialsLockedOut(
            "an earlier login was rejected; no login is attempted until reset()",
            status=fatal.status,
            error_code=fatal.error_code,
        )
    err = copy.copy(fatal)
    err.__traceback__ = None
    return err


class RenewalContext(Protocol):
    """What a :class:`Renewer` may see and do of its provider."""

    @property
    def config(self) -> PasswordGrantConfig:
        """The connection."""

    @property
    def clock(self) -> Clock:
        """The provider's clock."""

    @property
    def retry(self) -> RetryPolicy:
        """The retries of one token request."""

    @property
    def stats(self) -> TokenStats:
        """The provider's counters (a renewer counts its refreshes, logins and adoptions)."""

    @property
    def token(self) -> Token | None:
        """The current token (possibly expired), read inside the renewal."""

    @property
    def renewing(self) -> bool:
        """Whether a renewal is in flight."""

    @property
    def rotation(self) -> Rotation:
        """What the server has shown about refresh-token rotation (learnt from every renewal)."""

    def usable_until(self, token: Token) -> float:
        """Monotonic time after which ``token`` is never handed out (its expiry less the skew)."""

    def refresh_usable(self) -> bool:
        """Whether the next renewal is a refresh grant (otherwise a password login)."""

    def drop_refresh_token(self, token: Token | None) -> None:
        """Never present ``token``'s refresh token again (if it is still the current token)."""

    def refresh_failed(self, exc: TransientTokenError | TokenResponseError) -> None:
        """A refresh failed without spending its refresh token (repeated 500s lead to a login)."""

    def login_policy(self) -> RetryPolicy:
        """The retries one password login may use; raises when the login budget is spent."""

    def check_login_budget(self) -> None:
        """Raise :class:`~oauthpw_async.errors.LoginBudgetExhausted` if no login may be sent now."""

    def login_confirmed(self) -> None:
        """A login answered with a token: the password works, the login budget is re-armed."""

    async def exchange(
        self, request: TokenRequest, previous: Token | None, policy: RetryPolicy, *, resend_unanswered: bool = True
    ) -> Token:
        """Send ``request`` (with ``policy``'s retries) and parse the answer into a token."""

    def adopt(self, token: Token) -> None:
        """Install a token renewed elsewhere (outside a renewal of this provider)."""


class Renewer(Protocol):
    """One renewal for the provider's single flight, and what goes with it."""

    @property
    def rejection_recheck(self) -> float:
        """Seconds after a rejected login before the renewer is asked again (``inf``: only after reset())."""

    async def renew(self) -> tuple[Token, RenewalSource]:
        """Renew the token (raises a typed error on failure)."""

    def reset(self) -> None:
        """The provider was reset: logins are allowed again."""

    async def watch(self) -> None:
        """Background work for the provider's lifetime (runs in its task group)."""


class RenewerFactory(Protocol):
    """What a provider's ``coordinator`` is: the maker of a shared :class:`Renewer`."""

    def renewer(self, context: RenewalContext) -> Renewer:
        """A renewer for the provider behind ``context``."""

    def check_reset(self, current: PasswordGrantConfig, new: PasswordGrantConfig) -> None:
        """Raise :class:`~oauthpw_async.errors.UsageError` if a reset from ``current`` to ``new`` cannot keep it."""


class LocalRenewer:
    """Renews by this process alone: the refresh grant when it may be used, else one password login."""

    __slots__ = ("_ctx",)

    #: A rejected login stays rejected until reset(): nothing else here can fix it.
    rejection_recheck = ONLY_AFTER_RESET

    def __init__(self, context: RenewalContext) -> None:
        self._ctx = context

    def reset(self) -> None:
        """Nothing to reopen."""

    async def watch(self) -> None:
        """No background work."""

    async def renew(self) -> tuple[Token, RenewalSource]:
        """A refresh (if usable), or a password login after a refusal or instead of one."""
        ctx = self._ctx
        # Read the refresh token now, inside the single flight, never before it: with
        # rotating refresh tokens a value read earlier may already have been used.
        current = ctx.token
        if ctx.refresh_usable():
            assert current is not None and current.refresh_token is not None
            ctx.stats.refreshes += 1
            request = build_refresh_request(ctx.config, current.refresh_token)
            try:
                token = await ctx.exchange(request, current, ctx.retry, resend_unanswered=ctx.rotation.reusable)
            except RefreshTokenRejected as exc:
                ctx.stats.refresh_rejected += 1
                ctx.drop_refresh_token(current)  # never present a rejected refresh token again
                log.info("refresh token rejected (%s); logging in with the password once", exc.error_code)
            except (TransientTokenError, TokenResponseError) as exc:
                if not ctx.rotation.maybe_spent(exc):
                    ctx.refresh_failed(exc)
                    raise
                ctx.drop_refresh_token(current)
            else:
                ctx.rotation.learn(current, token)
                return token, "refresh_token"
        policy = ctx.login_policy()
        ctx.stats.logins += 1
        token = await ctx.exchange(build_password_request(ctx.config), None, policy)
        ctx.login_confirmed()  # a token: the password works, the budget is re-armed
        return token, "password"
