"""TokenProvider: one credential's token lifecycle, shared by every task in the process.

What the provider holds is a :class:`~oauthpw_async.lifecycle.Lifecycle` (CLOSED, EMPTY, SERVING,
HELD; its transition table is in :mod:`oauthpw_async.lifecycle`); what one renewal does is its
:class:`~oauthpw_async.renewal.Renewer`'s. A SERVING token, by the provider's monotonic clock:

* FRESH (before ``refresh_at``): ``get()`` returns the token without awaiting anything.
* STALE (between ``refresh_at`` and expiry): callers still get the token at once; one
  background refresh starts (stale-while-revalidate).
* EXPIRED (past expiry; or HELD, EMPTY): callers wait for the single token
  request in flight (single flight), which runs in the provider's own task group so a
  cancelled caller never cancels it.

Two things stop a renewal before any request is sent: the server asked to wait longer than
``RetryPolicy.max_wait`` (``Retry-After`` or a rate-limit reset header), or the credential's
:class:`LoginBudget` of unconfirmed logins is spent. Callers then wait for requests to resume
(logged once, naming when and why) up to ``RefreshPolicy.pause_wait``; past it they get a
:class:`~oauthpw_async.errors.TokenRequestsPaused` naming when requests resume.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import anyio
import attrs

from ._httputil import safe_url
from .clock import SYSTEM_CLOCK, Clock
from .config import PasswordGrantConfig
from .errors import (
    ConfigError,
    LoginBudgetExhausted,
    OAuthPWError,
    ProviderClosed,
    TokenError,
    TokenRequestsPaused,
    TokenResponseError,
    TransientTokenError,
)
from .exchange import TOKEN_RETRY, exchange
from .gate import Gate
from .grant import (
    Instant,
    Token,
    TokenRequest,
    TokenResponse,
    parse_token_response,
)
from .lifecycle import NEVER, Lifecycle
from .login_budget import LoginBudget, LoginLedger, _seconds
from .renewal import LocalRenewer, Renewer, RenewerFactory, retry_meaning
from .retry import RetryPolicy
from .store import MemoryTokenStore, StoredToken, TokenStore

if TYPE_CHECKING:
    from .transport import TokenEndpoint

__all__ = ["LoginBudget", "RefreshPolicy", "TokenEvent", "TokenProvider", "TokenStats"]

log = logging.getLogger("oauthpw_async.provider")

#: Waits between failed renewals: no attempt limit (the provider keeps trying while callers
#: need a token), half the ceiling random so that retries never bunch up at zero.
RENEWAL_BACKOFF = RetryPolicy(max_attempts=1_000_000, base_delay=0.5, max_delay=60.0, jitter=0.5, max_wait=86400.0)

#: A stored token issued further ahead than this on the wall clock is not trusted (a clock
#: that jumped back, or a forged file); a smaller lead is clamped to "issued now".
STORE_FUTURE_TOLERANCE = 3600.0


def _password(config: PasswordGrantConfig) -> str | None:
    return None if config.password is None else config.password.reveal()


@attrs.frozen
class RefreshPolicy:
    """When to renew. Defaults suit a 1-hour token and a 1-second token alike.

    The early-refresh margin is ``min(max_margin, margin_fraction * lifetime)``, grown by
    up to ``jitter`` (a fraction of itself) at random so many processes spread out. The
    skew allowance is ``min(max_skew, skew_fraction * lifetime)``, taken off the expiry.
    """

    margin_fraction: float = 0.25
    max_margin: float = 300.0
    jitter: float = 0.2
    max_skew: float = 10.0
    skew_fraction: float = 0.05
    #: Waits between failed renewals (the one retry primitive; its ``max_attempts`` is not used).
    backoff: RetryPolicy = RENEWAL_BACKOFF
    #: Consecutive HTTP 500 answers to a refresh after which a password login is tried instead.
    refresh_failures_before_login: int = 2
    #: How many unconfirmed password logins (answers that were no token) may be sent per window.
    login_budget: LoginBudget = attrs.field(factory=LoginBudget)
    #: Longest ``get()`` waits, in seconds, while token requests are paused (the login budget, a
    #: rate-limit window, a long backoff) before it raises the :class:`TokenRequestsPaused`; 0: at once.
    pause_wait: float = attrs.field(default=900.0, validator=_seconds)

    def margin(self, lifetime: float, rng: random.Random) -> float:
        """Seconds before expiry at which a refresh starts."""
        return min(self.max_margin, self.margin_fraction * lifetime) * (1 + self.jitter * rng.random())

    def skew(self, lifetime: float) -> float:
        """Seconds taken off a token's lifetime for clock and network skew."""
        return min(self.max_skew, self.skew_fraction * lifetime)


@attrs.define
class TokenStats:
    """Counters a caller can read at any time (plain ints; reading is free)."""

    #: Password logins attempted (one per renewal, whatever the retries).
    logins: int = 0
    #: Password login requests sent, retries included (the unconfirmed ones are what the :class:`LoginBudget` counts).
    login_requests: int = 0
    #: ``get()`` calls that waited for paused token requests to resume (``RefreshPolicy.pause_wait``).
    pause_waits: int = 0
    #: Refresh-token grants attempted.
    refreshes: int = 0
    #: HTTP token requests sent, retries included.
    token_requests: int = 0
    #: Renewals that failed.
    failures: int = 0
    #: ``get()`` calls that had to wait for a token (none was valid).
    waits: int = 0
    #: Renewals started in the background while the old token was still served.
    background_refreshes: int = 0
    #: ``invalidate()`` calls that took effect (the rejected token was the current one).
    invalidations: int = 0
    #: Refresh tokens the server rejected (each followed by one password login).
    refresh_rejected: int = 0
    #: Refreshes the server may have used without a usable answer (a timeout, a lost connection, a
    #: 500/502/504, a page that is no token): not sent again while the server may rotate refresh tokens.
    refresh_unconfirmed: int = 0
    #: Tokens taken from the token store instead of a login.
    restored: int = 0
    #: Tokens another process renewed, taken from the coordinator (a shared renewer).
    adopted: int = 0


@attrs.frozen
class TokenEvent:
    """Passed to the ``on_token`` hook for every new token (the token masks its secrets)."""

    token: Token
    source: Literal["password", "refresh_token", "store", "shared"]


class _Flight:
    """One token request in flight and everyone waiting for it."""

    __slots__ = ("done", "error", "token")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.token: Token | None = None
        self.error: BaseException | None = ProviderClosed("the token provider closed")

    async def wait(self) -> Token:
        await self.done.wait()
        if self.token is not None:
            return self.token
        assert self.error is not None
        # Each waiter raises its own copy: one shared exception object raised by thousands of
        # tasks would pile every waiter's traceback onto it.
        err = copy.copy(self.error)
        err.__traceback__ = None
        raise err


class TokenProvider:
    """Gets, caches and renews the access token of one credential.

    Use it as ``async with TokenProvider(config) as tokens:``; share one per credential
    between every task and crawler. ``await tokens.get()`` is lock-free and allocation-free
    while the token is fresh.

    Args:
        config: the connection.
        endpoint: how token requests are sent; default :class:`AiohttpTokenEndpoint` (asyncio).
        refresh: when to renew, and the login budget (:class:`RefreshPolicy`).
        retry: retries of one token request on transient failures (:class:`RetryPolicy`); its
            ``max_wait`` is also the longest a caller waits for a server's rate-limit window.
        store: where tokens persist across restarts (default: in memory only). A file store
            that is unsafe (symlink, open to group or others) makes entering the provider
            raise :class:`~oauthpw_async.errors.UnsafeTokenStore`.
        on_token: called with a :class:`TokenEvent` for every new token.
        clock: time source (tests pass :class:`oauthpw_async.testing.FakeClock`).
        rng: random source for jitter (seed it for reproducible tests).
        coordinator: share this credential's renewals with other processes: an open
            :class:`~oauthpw_async.renewal.RenewerFactory` (a coordinator that makes the
            provider's renewer, a shared one).
    """

    def __init__(
        self,
        config: PasswordGrantConfig,
        *,
        endpoint: TokenEndpoint | None = None,
        refresh: RefreshPolicy | None = None,
        retry: RetryPolicy | None = None,
        store: TokenStore | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        coordinator: RenewerFactory | None = None,
    ) -> None:
        self._config = config
        self._endpoint = endpoint
        self._owns_endpoint = endpoint is None
        self._policy = refresh or RefreshPolicy()
        self._retry = retry or TOKEN_RETRY
        self._store: TokenStore = store or MemoryTokenStore()
        self._on_token = on_token
        self._clock = clock
        self._now = clock.monotonic
        self._rng = rng or random.Random()
        self.stats = TokenStats()
        #: The token held and its state (see :mod:`oauthpw_async.lifecycle`).
        self._life = Lifecycle()
        self._flight: _Flight | None = None
        #: Failures, backoff, rejections and the server's windows: whether a renewal may start.
        self._gate = Gate(self._policy.backoff)
        self._refresh_failures = 0
        #: Whether refresh answers carried a new refresh token (``None``: no refresh answered yet).
        self._refresh_rotates: bool | None = None
        #: The unconfirmed login requests of the current budget window (monotonic).
        self._logins = LoginLedger(self._policy.login_budget)
        #: The pause callers are waiting out now (``None``: none).
        self._waiting_out: TokenRequestsPaused | None = None
        #: Generation of the current token in the store: one more per renewal.
        self._generation = 0
        self._tls_warned = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._coordinator = coordinator
        self._renewer: Renewer | None = None

    # --- public API -----------------------------------------------------------------------------

    @property
    def config(self) -> PasswordGrantConfig:
        """The connection this provider logs in to."""
        return self._config

    @property
    def refresh_policy(self) -> RefreshPolicy:
        """When this provider renews, its login budget and how long callers wait out a pause."""
        return self._policy

    @property
    def clock(self) -> Clock:
        """The clock this provider (and a crawler using it) measures time with."""
        return self._clock

    @property
    def token(self) -> Token | None:
        """The current token (possibly stale or expired), without any renewal."""
        return self._life.token

    @property
    def refresh_at(self) -> float:
        """Monotonic time at which the current token turns STALE."""
        return self._life.refresh_at

    @property
    def expires_at(self) -> float:
        """Monotonic time after which the current token is never handed out."""
        return self._life.expires_at

    async def get(self) -> Token:
        """The current valid token, logging in or refreshing first if none is valid.

        Raises:
            TokenError: the renewal this call waited for failed (a :class:`CredentialsLockedOut`
                at once, without a request, after a rejected password; a
                :class:`~oauthpw_async.errors.TokenRequestsPaused` at once while the server's
                rate-limit window or the spent login budget forbids a request).
        """
        life = self._life
        if self._now() < life.refresh_at:
            return life.token  # type: ignore[return-value]
        return await self._get_slow()

    async def authorization(self) -> str:
        """The ready ``Authorization`` header value for the current valid token."""
        life = self._life
        if self._now() < life.refresh_at:
            return life.token.authorization  # type: ignore[union-attr]
        return (await self._get_slow()).authorization

    def invalidate(self, token: Token | None = None) -> bool:
        """Report that ``token`` was refused (a 401); renew only if it is still the current one.

        A thousand 401s for the same old token cause one renewal. Returns whether this call
        took effect. ``None`` invalidates whatever token is current.
        """
        current = self._life.token
        if current is None or self._life.expires_at == NEVER:
            return False
        if token is not None and token is not current and token.access_token != current.access_token:
            return False
        self.stats.invalidations += 1
        self._life.invalidate()
        log.info("token invalidated after a rejection; renewing")
        if (
            self._gate.fatal is None
            and self._flight is None
            and self._tg is not None
            and self._paused(self._now()) is None
        ):
            self._start_flight()
        return True

    def reset(self, config: PasswordGrantConfig | None = None) -> None:
        """Allow logins again after a rejected password, optionally with a new configuration.

        The login budget and the server's rate-limit window stay as they are (they are about
        requests already sent), unless ``config`` is another account.
        """
        previous = self._config
        if config is not None and self._coordinator is not None:
            self._coordinator.check_reset(previous, config)
        if config is not None:
            if config.account_key != self._config.account_key:
                self._logins.clear()
            elif _password(config) != _password(self._config):
                self._logins.password_changed()  # the last success no longer confirms it
            if config.credential_key != self._config.credential_key:
                self._generation = 0
            self._config = config
            self._life.forget()
            self._warn_insecure_tls()
        self._gate.reset(other_account=config is not None and config.account_key != previous.account_key)
        self._refresh_failures = 0
        if self._renewer is not None:
            self._renewer.reset()

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> TokenProvider:
        if self._tg is not None:
            raise RuntimeError("this TokenProvider is already open")
        self._warn_insecure_tls()
        # Read the store first: an unsafe store file is a setup error, raised before anything starts.
        try:
            stored = self._store.load(self._config.credential_key)
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("token store could not be read, logging in instead: %s", type(exc).__name__)
            stored = None
        if self._endpoint is None:
            from .transport import AiohttpTokenEndpoint  # aiohttp only when it is used

            self._endpoint = AiohttpTokenEndpoint(self._config)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._life.open()
        if stored is not None:
            self._restore(stored)
        context = _Context(self)
        if self._coordinator is not None:
            self._renewer = self._coordinator.renewer(context)
            tg.start_soon(self._renewer.watch)
        else:
            self._renewer = LocalRenewer(context)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        self._life.close()
        try:
            if tg is not None:
                # Background renewals never raise, so the group exits cleanly; an exception from
                # the body propagates as itself, not wrapped in an ExceptionGroup. Store writes
                # are shielded: closing waits for them, so a restart finds the newest token.
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
            return None
        finally:
            if self._owns_endpoint and self._endpoint is not None:
                aclose = getattr(self._endpoint, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
                self._endpoint = None

    # --- internals ------------------------------------------------------------------------------

    def _warn_insecure_tls(self) -> None:
        """Log each setting that weakens transport security, once per provider."""
        if not self._tls_warned:
            self._tls_warned = True
            for warning in self._config.security_warnings:
                log.warning("%s", warning)

    async def _get_slow(self) -> Token:
        if self._tg is None:
            raise ProviderClosed("use the provider inside 'async with TokenProvider(...)'")
        deadline: float | None = None  # set at the first pause met: this call waits no longer
        stale = 0
        for _ in range(10_000):  # each turn waits for a renewal or a pause: bounded by the deadline too
            now = self._now()
            token = self._life.token
            if token is not None and now < self._life.expires_at:
                # STALE: serve the still-valid token; renew in the background.
                if self._flight is None and not self._fatal_holds(now) and self._gate.may_start(now):
                    self.stats.background_refreshes += 1
                    self._start_flight()
                return token
            if self._fatal_holds(now):
                raise self._fatal_error()
            flight = self._flight
            if flight is None:
                paused = self._paused(now)
                if paused is not None:
                    deadline = await self._wait_out(paused, now, deadline)
                    continue
                flight = self._start_flight()
            self.stats.waits += 1
            try:
                token = await flight.wait()
            except TokenRequestsPaused as exc:
                deadline = await self._wait_out(exc, self._now(), deadline)
                continue
            if self._life.token is token and self._now() < self._life.expires_at:
                return token
            # Invalidated, replaced or already expired by the time this task resumed: look again.
            stale += 1
            if stale >= 3:
                break
        raise TransientTokenError(
            "no valid token after three renewals: the token lifetime is shorter than a token request takes",
            hint="raise the token lifetime on the server or lower the latency to it",
        )

    async def _wait_out(self, paused: TokenRequestsPaused, now: float, deadline: float | None) -> float:
        """Sleep until ``paused`` ends if that is within this call's deadline, else raise it; the deadline."""
        if deadline is None:
            deadline = now + self._policy.pause_wait
        resume_in = paused.resume_in
        if now + resume_in > deadline or self._tg is None:
            raise paused
        if self._waiting_out is None or abs(self._waiting_out.retry_at - paused.retry_at) > 1.0:
            log.warning("token requests are paused: %s; waiting (RefreshPolicy.pause_wait)", paused.detail)
        self._waiting_out = paused
        self.stats.pause_waits += 1
        try:
            await self._clock.sleep(max(resume_in, 0.001))
        finally:
            if self._waiting_out is paused:
                self._waiting_out = None
        if self._tg is None:
            raise ProviderClosed("the token provider closed while token requests were paused")
        return deadline

    @property
    def paused(self) -> TokenRequestsPaused | None:
        """The pause (login budget, rate limit, backoff) callers of :meth:`get` are waiting out now, if any.

        Its :attr:`~TokenRequestsPaused.retry_at` says until when, its message why.
        """
        return self._waiting_out

    def _fatal_holds(self, now: float) -> bool:
        """Whether callers get the earlier definitive error at once (else a renewal may be tried)."""
        return self._gate.holds(now, renewing=self._flight is not None)

    def _fatal_error(self) -> OAuthPWError:
        return self._gate.error()

    def _refresh_usable(self, now: float) -> bool:
        """Whether the next renewal is a refresh grant (otherwise it is a password login)."""
        current = self._life.token
        return (
            current is not None
            and current.refresh_token is not None
            and (current.refresh_expires_at is None or now < current.refresh_expires_at)
            and self._refresh_failures < self._policy.refresh_failures_before_login
        )

    def _logins_left(self, now: float) -> int:
        return self._logins.left(now)

    def _budget_error(self, now: float) -> LoginBudgetExhausted:
        ledger = self._logins
        resume_in = ledger.resume_in(now)
        return LoginBudgetExhausted(
            f"the login budget is spent: {ledger.limit(now)} unconfirmed password login request(s) (answers that "
            f"were no token) in {ledger.budget.window:g}s; no login is sent before the window allows one, to keep "
            "the account from being locked",
            retry_at=self._clock.wall() + resume_in,
            retry_after=resume_in,
        )

    def _paused(self, now: float) -> TokenRequestsPaused | None:
        """Why no renewal may start now, for longer than a caller should wait; ``None`` if one may."""
        gate, max_wait = self._gate, self._retry.max_wait
        limited = gate.paused(now, max_wait=max_wait, clock=self._clock)
        if limited is not None:
            return limited
        if not self._refresh_usable(now) and self._logins_left(now) <= 0:
            return self._budget_error(now)
        return gate.backing_off(now, max_wait=max_wait, clock=self._clock)

    def _start_flight(self) -> _Flight:
        assert self._tg is not None
        flight = _Flight()
        self._flight = flight
        self._tg.start_soon(self._run_flight, flight)
        return flight

    async def _run_flight(self, flight: _Flight) -> None:
        entry: StoredToken | None = None
        try:
            now = self._now()
            delay = self._gate.delay(now)
            if delay > self._retry.max_wait:
                paused = self._paused(now)
                assert paused is not None
                raise paused
            if delay > 0:
                await self._clock.sleep(delay)
            assert self._renewer is not None
            token, source = await self._renewer.renew()
            if token.expires_at - self._policy.skew(token.lifetime) <= self._now():
                raise TransientTokenError(
                    f"the token expired before it arrived (lifetime {token.lifetime:.3f}s)",
                    hint="the token lifetime is shorter than a token request takes",
                )
        except Exception as exc:
            if isinstance(exc, TokenError) or (isinstance(exc, OAuthPWError) and retry_meaning(exc) is not None):
                self._on_failure(exc)  # typed: backoff, and every waiter gets it
            else:  # a bug or an unexpected failure: waiters get it, the provider lives
                log.exception("unexpected error while renewing the token")
                self.stats.failures += 1
            flight.error = exc
        else:
            self._install(token, source)
            self._generation += 1
            entry = StoredToken(token, self._generation)
            flight.token = token
            flight.error = None
        finally:
            if self._flight is flight:
                self._flight = None
            flight.done.set()
        if entry is not None:
            await self._persist(entry)

    @property
    def refresh_reusable(self) -> bool:
        """Whether the server has shown that a refresh token stays valid after use (no rotation).

        ``False`` until a refresh answered with the same refresh token (or none): until then a
        refresh that got no answer is never sent again.
        """
        return self._refresh_rotates is False

    def _refresh_maybe_spent(self, exc: TransientTokenError | TokenResponseError) -> bool:
        """Whether a failed refresh may have used its refresh token up, so that it is never sent again.

        No usable answer (none at all, a 500/502/504, a page that is no token) while the server may
        rotate refresh tokens: sent again, a used one looks like theft and revokes the whole token
        family (Okta, Auth0), so a password login follows instead.
        """
        maybe_used = isinstance(exc, TokenResponseError) or exc.may_have_been_processed
        if not maybe_used or self.refresh_reusable:
            return False
        self.stats.refresh_unconfirmed += 1
        log.warning("refresh may have been used without an answer (%s); logging in instead", exc.detail)
        return True

    def _drop_refresh_token(self, token: Token | None) -> None:
        """Never present ``token``'s refresh token again (if it is still the current token)."""
        self._life.drop_refresh_token(token)

    def _learn_rotation(self, previous: Token, renewed: Token) -> None:
        """Note whether the server rotates refresh tokens (RFC 6749 6: it MAY issue a new one)."""
        old, new = previous.refresh_token, renewed.refresh_token
        if old is not None and new is not None:
            self._refresh_rotates = new.reveal() != old.reveal()

    def _login_policy(self) -> RetryPolicy:
        """The retries one password login may use; raises when the login budget is spent."""
        left = self._logins.left(self._now())
        if left <= 0:
            raise self._budget_error(self._now())
        if self._logins.unconfirmed:
            # An earlier login got no token: one request per renewal, so that the next ones follow
            # the renewal backoff (growing waits), not the quick retries of one token request.
            left = 1
        # Retries of a login are logins too: never more attempts than the budget has left.
        return self._retry if left >= self._retry.max_attempts else attrs.evolve(self._retry, max_attempts=left)

    async def _exchange(
        self, request: TokenRequest, previous: Token | None, policy: RetryPolicy, *, resend_unanswered: bool = True
    ) -> Token:
        config = self._config
        assert self._endpoint is not None

        def parse(response: TokenResponse, sent: Instant) -> Token:
            return parse_token_response(config, request, response, sent, previous=previous)

        def on_send(req: TokenRequest, attempt: int) -> None:
            if req.grant == "password":
                now = self._now()
                if self._logins.left(now) <= 0:  # the policy above prevents it; never send past the budget
                    raise self._budget_error(now)
                self._logins.sent(now)
                self.stats.login_requests += 1
            self.stats.token_requests += 1
            log.debug("token request: grant=%s url=%s attempt=%d", req.grant, safe_url(req.url), attempt + 1)

        return await exchange(
            self._endpoint,
            request,
            parse,
            policy=policy,
            clock=self._clock,
            rng=self._rng,
            on_send=on_send,
            resend_unanswered=resend_unanswered,
        )

    def _install(self, token: Token, source: Literal["password", "refresh_token", "store", "shared"]) -> None:
        policy = self._policy
        expires_at = token.expires_at - policy.skew(token.lifetime)
        refresh_at = max(token.issued.monotonic, expires_at - policy.margin(token.lifetime, self._rng))
        self._life.install(token, refresh_at=refresh_at, expires_at=expires_at)
        self._gate.opened()  # a working token: what failed or was rejected before is fixed
        self._refresh_failures = 0
        log.info(
            "new token from %s: expires in %.3fs (%s), refresh in %.3fs",
            source,
            expires_at - self._now(),
            token.lifetime_source,
            refresh_at - self._now(),
        )
        if self._on_token is not None:
            try:
                self._on_token(TokenEvent(token, source))
            except Exception:
                log.exception("on_token hook failed")

    def _on_failure(self, exc: OAuthPWError) -> None:
        self.stats.failures += 1
        now = self._now()
        assert self._renewer is not None
        life = self._life
        valid_for = life.expires_at - now if life.token is not None and now < life.expires_at else None
        self._gate.failed(exc, now, self._rng, recheck=self._renewer.rejection_recheck, valid_for=valid_for)

    def _restore(self, stored: StoredToken) -> None:
        now_mono, now_wall = self._now(), self._clock.wall()
        issued_wall = stored.token.issued.wall
        if issued_wall > now_wall + STORE_FUTURE_TOLERANCE:
            log.warning(
                "the stored token claims to be issued %.0fs in the future (a clock change or a damaged "
                "store); ignored, logging in instead",
                issued_wall - now_wall,
            )
            return
        # A token from slightly ahead (a clock step) counts as issued now: never longer than its lifetime.
        issued_wall = min(issued_wall, now_wall)
        # The store keeps wall-clock times; move them onto this process's monotonic clock.
        rexp = stored.token.refresh_expires_at
        token = attrs.evolve(
            stored.token,
            issued=Instant(now_mono - (now_wall - issued_wall), issued_wall),
            refresh_expires_at=None if rexp is None else now_mono + (rexp - now_wall),
        )
        self._generation = max(self._generation, stored.generation)
        if token.expires_at - self._policy.skew(token.lifetime) > now_mono or token.refresh_token is not None:
            self.stats.restored += 1
            self._install(token, "store")
            if self._life.expires_at <= now_mono:
                self._life.expire(token)  # keep its refresh token for the first renewal

    async def _persist(self, entry: StoredToken) -> None:
        key, store = self._config.credential_key, self._store
        try:
            if isinstance(store, MemoryTokenStore):  # no I/O: no worker thread
                saved = store.save(key, entry)
            else:
                # Shielded: closing the provider waits for the write instead of losing the newest token.
                with anyio.CancelScope(shield=True):
                    saved = await anyio.to_thread.run_sync(store.save, key, entry)
        except Exception as exc:
            log.warning(
                "token store could not be written: %s", exc if isinstance(exc, OAuthPWError) else type(exc).__name__
            )
        else:
            if not saved:
                log.info("token store holds a newer token (another process renewed); kept it")


class _Context:
    """What the provider's renewer sees of it (:class:`~oauthpw_async.renewal.RenewalContext`)."""

    __slots__ = ("_p",)

    def __init__(self, provider: TokenProvider) -> None:
        self._p = provider

    @property
    def config(self) -> PasswordGrantConfig:
        return self._p._config

    @property
    def clock(self) -> Clock:
        return self._p._clock

    @property
    def retry(self) -> RetryPolicy:
        return self._p._retry

    @property
    def stats(self) -> TokenStats:
        return self._p.stats

    @property
    def token(self) -> Token | None:
        return self._p._life.token

    @property
    def renewing(self) -> bool:
        return self._p._flight is not None

    @property
    def refresh_reusable(self) -> bool:
        return self._p.refresh_reusable

    def usable_until(self, token: Token) -> float:
        return token.expires_at - self._p._policy.skew(token.lifetime)

    def refresh_usable(self) -> bool:
        return self._p._refresh_usable(self._p._now())

    def drop_refresh_token(self, token: Token | None) -> None:
        self._p._drop_refresh_token(token)

    def refresh_maybe_spent(self, exc: TransientTokenError | TokenResponseError) -> bool:
        return self._p._refresh_maybe_spent(exc)

    def refresh_failed(self, exc: TransientTokenError | TokenResponseError) -> None:
        # A refresh endpoint that keeps answering 500 (e.g. a lost server-side session) is given
        # up for a login; outages (503, 429, no connection) are not.
        if exc.status == 500:
            self._p._refresh_failures += 1

    def learn_rotation(self, previous: Token, renewed: Token) -> None:
        self._p._learn_rotation(previous, renewed)

    def login_policy(self) -> RetryPolicy:
        return self._p._login_policy()

    def check_login_budget(self) -> None:
        now = self._p._now()
        if self._p._logins_left(now) <= 0:
            raise self._p._budget_error(now)

    def login_confirmed(self) -> None:
        self._p._logins.confirmed(self._p._now())

    async def exchange(
        self, request: TokenRequest, previous: Token | None, policy: RetryPolicy, *, resend_unanswered: bool = True
    ) -> Token:
        return await self._p._exchange(request, previous, policy, resend_unanswered=resend_unanswered)

    def adopt(self, token: Token) -> None:
        self._p._install(token, "shared")
