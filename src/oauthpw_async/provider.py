"""TokenProvider: one credential's token lifecycle, shared by every task in the process.

What the provider holds is a :class:`~oauthpw_async.lifecycle.Lifecycle` (CLOSED, EMPTY, SERVING,
HELD; its transition table is in :mod:`oauthpw_async.lifecycle`), and the class reads in that
order: the public API, then one method per lifecycle event (each calls the table), then the
helpers. What one renewal does is its :class:`~oauthpw_async.renewal.Renewer`'s; the single flight
is :mod:`~oauthpw_async.flight`'s, whether a renewal may start :mod:`~oauthpw_async.gate`'s, the
wait-out of a pause :mod:`~oauthpw_async.pause`'s, the store :mod:`~oauthpw_async.keeper`'s.
A SERVING token, by the provider's monotonic clock:

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
from .errors import OAuthPWError, ProviderClosed, TokenError, TokenRequestsPaused, TransientTokenError
from .exchange import TOKEN_RETRY, exchange
from .flight import Flight, SingleFlight
from .gate import Gate
from .grant import Instant, Token, TokenRequest, TokenResponse, parse_token_response
from .keeper import StoreKeeper
from .lifecycle import Lifecycle
from .login_budget import LoginBudget, LoginLedger, _seconds
from .pause import PauseWait
from .renewal import LocalRenewer, Renewer, RenewerFactory, Rotation, retry_meaning
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .errors import TokenResponseError
    from .store import StoredToken, TokenStore
    from .transport import TokenEndpoint

__all__ = ["LoginBudget", "RefreshPolicy", "TokenEvent", "TokenOrigin", "TokenProvider", "TokenStats"]

log = logging.getLogger("oauthpw_async.provider")

#: Waits between failed renewals: no attempt limit (the provider keeps trying while callers
#: need a token), half the ceiling random so that retries never bunch up at zero.
RENEWAL_BACKOFF = RetryPolicy(max_attempts=1_000_000, base_delay=0.5, max_delay=60.0, jitter=0.5, max_wait=86400.0)

#: Where a new token came from: a login, a refresh, the token store, or another process's renewal.
TokenOrigin = Literal["password", "refresh_token", "store", "shared"]


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
    source: TokenOrigin


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
        self._on_token = on_token
        self._clock = clock
        self._now = clock.monotonic
        self._rng = rng or random.Random()
        self.stats = TokenStats()
        #: The token held and its state (see :mod:`oauthpw_async.lifecycle`).
        self._life = Lifecycle()
        #: The renewal in flight, if any.
        self._flight = SingleFlight()
        #: Failures, backoff, rejections and the server's windows: whether a renewal may start.
        self._gate = Gate(self._policy.backoff)
        #: The pause callers are waiting out now.
        self._pauses = PauseWait(clock, self._policy.pause_wait, self.stats)
        #: Refreshes answered HTTP 500 in a row (enough of them: a password login instead).
        self._refresh_failures = 0
        #: What refresh answers showed about rotation.
        self._rotation = Rotation(self.stats)
        #: The unconfirmed login requests of the current budget window (monotonic).
        self._logins = LoginLedger(self._policy.login_budget)
        #: The token store and the generation of the token held.
        self._keeper = StoreKeeper(store)
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

    @property
    def paused(self) -> TokenRequestsPaused | None:
        """The pause (login budget, rate limit, backoff) callers of :meth:`get` are waiting out now, if any.

        Its :attr:`~TokenRequestsPaused.retry_at` says until when, its message why.
        """
        return self._pauses.current

    @property
    def refresh_reusable(self) -> bool:
        """Whether the server has shown that a refresh token stays valid after use (no rotation).

        ``False`` until a refresh answered with the same refresh token (or none): until then a
        refresh that got no answer is never sent again.
        """
        return self._rotation.reusable

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
        if current is None or not self._life.servable:
            return False
        if token is not None and token is not current and token.access_token != current.access_token:
            return False
        self._invalidate()
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
            self._forget(config)
        self._gate.reset(other_account=config is not None and config.account_key != previous.account_key)
        self._refresh_failures = 0
        if self._renewer is not None:
            self._renewer.reset()

    async def __aenter__(self) -> TokenProvider:
        if self._tg is not None:
            raise RuntimeError("this TokenProvider is already open")
        self._warn_insecure_tls()
        # Read the store first: an unsafe store file is a setup error, raised before anything starts.
        stored = self._keeper.load(self._config.credential_key)
        if self._endpoint is None:
            from .transport import AiohttpTokenEndpoint  # aiohttp only when it is used

            self._endpoint = AiohttpTokenEndpoint(self._config)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._open(stored)
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
        self._close()
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

    # --- lifecycle events: one method each, calling the table (oauthpw_async.lifecycle) ----------
    # open: __aenter__; close: __aexit__; install: a renewal, the store or another process's token;
    # invalidate: invalidate(); expire: a restored token already expired; forget: reset(config).

    def _open(self, stored: StoredToken | None) -> None:
        """open: the state follows from what is held; a stored token is then installed (or held)."""
        self._life.open()
        if stored is None:
            return
        now = self._now()
        token = self._keeper.restore(stored, self._clock)
        if token is None:
            return
        if token.expires_at - self._policy.skew(token.lifetime) > now or token.refresh_token is not None:
            self.stats.restored += 1
            self._install(token, "store")
            if self._life.expires_at <= now:
                self._expire(token)

    def _close(self) -> None:
        """close: nothing is handed out (a renewal still running installs its token late)."""
        self._life.close()

    def _install(self, token: Token, source: TokenOrigin) -> None:
        """install: a new token, handed out until its expiry less the skew, FRESH until its margin."""
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

    def _invalidate(self) -> None:
        """invalidate: the token handed out was refused; held for its refresh token, renewed now if allowed."""
        self.stats.invalidations += 1
        self._life.invalidate()
        log.info("token invalidated after a rejection; renewing")
        if (
            self._gate.fatal is None
            and self._flight.current is None
            and self._tg is not None
            and self._paused(self._now()) is None
        ):
            self._start_renewal()

    def _expire(self, token: Token) -> None:
        """expire: the token just installed had expired already; held for its refresh token (first renewal)."""
        self._life.expire(token)

    def _forget(self, config: PasswordGrantConfig) -> None:
        """forget: another configuration, no token; the login budget follows the account and the password."""
        if config.account_key != self._config.account_key:
            self._logins.clear()
        elif _password(config) != _password(self._config):
            self._logins.password_changed()  # the last success no longer confirms it
        if config.credential_key != self._config.credential_key:
            self._keeper.other_credential()
        self._config = config
        self._life.forget()
        self._warn_insecure_tls()

    # --- helpers --------------------------------------------------------------------------------

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
                if self._flight.current is None and not self._fatal_holds(now) and self._gate.may_start(now):
                    self.stats.background_refreshes += 1
                    self._start_renewal()
                return token
            if self._fatal_holds(now):
                raise self._gate.error()
            flight = self._flight.current
            if flight is None:
                paused = self._paused(now)
                if paused is not None:
                    deadline = await self._wait_out(paused, now, deadline)
                    continue
                flight = self._start_renewal()
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
        return await self._pauses.wait_out(paused, now, deadline, is_open=lambda: self._tg is not None)

    def _fatal_holds(self, now: float) -> bool:
        """Whether callers get the earlier definitive error at once (else a renewal may be tried)."""
        return self._gate.holds(now, renewing=self._flight.current is not None)

    def _paused(self, now: float) -> TokenRequestsPaused | None:
        """Why no renewal may start now, for longer than a caller should wait; ``None`` if one may."""
        gate, max_wait = self._gate, self._retry.max_wait
        limited = gate.paused(now, max_wait=max_wait, clock=self._clock)
        if limited is not None:
            return limited
        if not self._refresh_usable(now) and self._logins.left(now) <= 0:
            return self._logins.exhausted(now, self._clock)
        return gate.backing_off(now, max_wait=max_wait, clock=self._clock)

    def _refresh_usable(self, now: float) -> bool:
        """Whether the next renewal is a refresh grant (otherwise it is a password login)."""
        current = self._life.token
        return (
            current is not None
            and current.refresh_token is not None
            and (current.refresh_expires_at is None or now < current.refresh_expires_at)
            and self._refresh_failures < self._policy.refresh_failures_before_login
        )

    def _start_renewal(self) -> Flight:
        assert self._tg is not None
        return self._flight.start(self._tg, self._renewal, self._save)

    async def _renewal(self) -> Token:
        """The single flight's renewal: the new token installed, or the failure taught to the gate."""
        try:
            token, source = await self._renew_when_allowed()
        except Exception as exc:
            if isinstance(exc, TokenError) or (isinstance(exc, OAuthPWError) and retry_meaning(exc) is not None):
                self._failed(exc)  # typed: backoff, and every waiter gets it
            else:  # a bug or an unexpected failure: waiters get it, the provider lives
                log.exception("unexpected error while renewing the token")
                self.stats.failures += 1
            raise
        self._install(token, source)
        return token

    async def _renew_when_allowed(self) -> tuple[Token, TokenOrigin]:
        """The renewer's renewal, after the backoff or the server's window (raised if longer than ``max_wait``)."""
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
        return token, source

    def _failed(self, exc: OAuthPWError) -> None:
        self.stats.failures += 1
        now = self._now()
        assert self._renewer is not None
        life = self._life
        valid_for = life.expires_at - now if life.token is not None and now < life.expires_at else None
        self._gate.failed(exc, now, self._rng, recheck=self._renewer.rejection_recheck, valid_for=valid_for)

    async def _save(self, token: Token) -> None:
        """Write a renewed token to the store (after its waiters have it)."""
        entry = self._keeper.renewed(token)
        await self._keeper.save(self._config.credential_key, entry)

    async def _exchange(
        self, request: TokenRequest, previous: Token | None, policy: RetryPolicy, *, resend_unanswered: bool = True
    ) -> Token:
        config = self._config
        assert self._endpoint is not None

        def parse(response: TokenResponse, sent: Instant) -> Token:
            return parse_token_response(config, request, response, sent, previous=previous)

        return await exchange(
            self._endpoint,
            request,
            parse,
            policy=policy,
            clock=self._clock,
            rng=self._rng,
            on_send=self._on_send,
            resend_unanswered=resend_unanswered,
        )

    def _on_send(self, request: TokenRequest, attempt: int) -> None:
        """Count a token request about to be sent; a login is charged to the budget (never sent past it)."""
        if request.grant == "password":
            now = self._now()
            self._logins.check(now, self._clock)  # the login policy prevents it; never send past the budget
            self._logins.sent(now)
            self.stats.login_requests += 1
        self.stats.token_requests += 1
        log.debug("token request: grant=%s url=%s attempt=%d", request.grant, safe_url(request.url), attempt + 1)

    def _warn_insecure_tls(self) -> None:
        """Log each setting that weakens transport security, once per provider."""
        if not self._tls_warned:
            self._tls_warned = True
            for warning in self._config.security_warnings:
                log.warning("%s", warning)


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
        return self._p._flight.current is not None

    @property
    def rotation(self) -> Rotation:
        return self._p._rotation

    def usable_until(self, token: Token) -> float:
        return token.expires_at - self._p._policy.skew(token.lifetime)

    def refresh_usable(self) -> bool:
        return self._p._refresh_usable(self._p._now())

    def drop_refresh_token(self, token: Token | None) -> None:
        self._p._life.drop_refresh_token(token)

    def refresh_failed(self, exc: TransientTokenError | TokenResponseError) -> None:
        # A refresh endpoint that keeps answering 500 (e.g. a lost server-side session) is given
        # up for a login; outages (503, 429, no connection) are not.
        if exc.status == 500:
            self._p._refresh_failures += 1

    def login_policy(self) -> RetryPolicy:
        p = self._p
        return p._logins.policy(p._retry, p._now(), p._clock)

    def check_login_budget(self) -> None:
        p = self._p
        p._logins.check(p._now(), p._clock)

    def login_confirmed(self) -> None:
        self._p._logins.confirmed(self._p._now())

    async def exchange(
        self, request: TokenRequest, previous: Token | None, policy: RetryPolicy, *, resend_unanswered: bool = True
    ) -> Token:
        return await self._p._exchange(request, previous, policy, resend_unanswered=resend_unanswered)

    def adopt(self, token: Token) -> None:
        self._p._install(token, "shared")
