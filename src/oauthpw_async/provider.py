"""TokenProvider: one credential's token lifecycle, shared by every task in the process.

States by the provider's monotonic clock:

* FRESH (before ``refresh_at``): ``get()`` returns the token without awaiting anything.
* STALE (between ``refresh_at`` and expiry): callers still get the token at once; one
  background refresh starts (stale-while-revalidate).
* EXPIRED (past expiry, invalidated, or none yet): callers wait for the single token
  request in flight (single flight), which runs in the provider's own task group so a
  cancelled caller never cancels it.
"""

from __future__ import annotations

import copy
import logging
import math
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
    CredentialsLockedOut,
    DefinitiveTokenError,
    InvalidCredentials,
    ProviderClosed,
    RefreshTokenRejected,
    TokenError,
    TransientTokenError,
)
from .exchange import TOKEN_RETRY, exchange
from .fleet.errors import CoordinatorUnavailable
from .grant import (
    Instant,
    Token,
    TokenRequest,
    TokenResponse,
    build_password_request,
    build_refresh_request,
    parse_token_response,
)
from .retry import RetryPolicy
from .store import MemoryTokenStore, TokenStore

if TYPE_CHECKING:
    from .fleet.coordinator import Coordinator
    from .fleet.renewal import FleetRenewal
    from .transport import TokenEndpoint

__all__ = ["RefreshPolicy", "TokenEvent", "TokenProvider", "TokenStats"]

log = logging.getLogger("oauthpw_async.provider")

#: Waits between failed renewals: no attempt limit (the provider keeps trying while callers
#: need a token), half the ceiling random so that retries never bunch up at zero.
RENEWAL_BACKOFF = RetryPolicy(max_attempts=1_000_000, base_delay=0.5, max_delay=60.0, jitter=0.5, max_wait=86400.0)

_NEVER = -math.inf


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
    #: Tokens taken from the token store instead of a login.
    restored: int = 0
    #: Tokens another process of the fleet renewed, taken from the coordinator.
    fleet_adopted: int = 0


@attrs.frozen
class TokenEvent:
    """Passed to the ``on_token`` hook for every new token (the token masks its secrets)."""

    token: Token
    source: Literal["password", "refresh_token", "store", "fleet"]


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
        refresh: when to renew (:class:`RefreshPolicy`).
        retry: retries of one token request on transient failures (:class:`RetryPolicy`).
        store: where tokens persist across restarts (default: in memory only).
        on_token: called with a :class:`TokenEvent` for every new token.
        clock: time source (tests pass :class:`oauthpw_async.testing.FakeClock`).
        rng: random source for jitter (seed it for reproducible tests).
        coordinator: share this credential's token with a fleet of processes through Redis
            (an open :class:`oauthpw_async.fleet.Coordinator`): one renews, all use the result.
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
        coordinator: Coordinator | None = None,
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
        self._token: Token | None = None
        self._refresh_at = _NEVER
        self._expires_at = _NEVER
        self._flight: _Flight | None = None
        self._fatal: TokenError | None = None
        self._failures = 0
        self._refresh_failures = 0
        self._retry_not_before = _NEVER
        self._tg: anyio.abc.TaskGroup | None = None
        self._coordinator = coordinator
        self._fleet: FleetRenewal | None = None

    # --- public API -----------------------------------------------------------------------------

    @property
    def config(self) -> PasswordGrantConfig:
        """The connection this provider logs in to."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock this provider (and a crawler using it) measures time with."""
        return self._clock

    @property
    def token(self) -> Token | None:
        """The current token (possibly stale or expired), without any renewal."""
        return self._token

    @property
    def refresh_at(self) -> float:
        """Monotonic time at which the current token turns STALE."""
        return self._refresh_at

    @property
    def expires_at(self) -> float:
        """Monotonic time after which the current token is never handed out."""
        return self._expires_at

    async def get(self) -> Token:
        """The current valid token, logging in or refreshing first if none is valid.

        Raises:
            TokenError: the renewal this call waited for failed (a :class:`CredentialsLockedOut`
                at once, without a request, after a rejected password).
        """
        if self._now() < self._refresh_at:
            return self._token  # type: ignore[return-value]
        return await self._get_slow()

    async def authorization(self) -> str:
        """The ready ``Authorization`` header value for the current valid token."""
        if self._now() < self._refresh_at:
            return self._token.authorization  # type: ignore[union-attr]
        return (await self._get_slow()).authorization

    def invalidate(self, token: Token | None = None) -> bool:
        """Report that ``token`` was refused (a 401); renew only if it is still the current one.

        A thousand 401s for the same old token cause one renewal. Returns whether this call
        took effect. ``None`` invalidates whatever token is current.
        """
        current = self._token
        if current is None or self._expires_at == _NEVER:
            return False
        if token is not None and token is not current and token.access_token != current.access_token:
            return False
        self.stats.invalidations += 1
        self._refresh_at = self._expires_at = _NEVER
        log.info("token invalidated after a rejection; renewing")
        if self._fatal is None and self._flight is None and self._tg is not None:
            self._start_flight()
        return True

    def reset(self, config: PasswordGrantConfig | None = None) -> None:
        """Allow logins again after a rejected password, optionally with a new configuration."""
        if config is not None:
            self._config = config
            self._token = None
            self._refresh_at = self._expires_at = _NEVER
        self._fatal = None
        self._failures = self._refresh_failures = 0
        self._retry_not_before = _NEVER
        if self._fleet is not None:
            self._fleet.reset()

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> TokenProvider:
        if self._tg is not None:
            raise RuntimeError("this TokenProvider is already open")
        if self._endpoint is None:
            from .transport import AiohttpTokenEndpoint  # aiohttp only when it is used

            self._endpoint = AiohttpTokenEndpoint(self._config)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._restore()
        if self._coordinator is not None:
            from .fleet.renewal import FleetRenewal  # the fleet extra only when it is used

            self._fleet = FleetRenewal(self, self._coordinator)
            tg.start_soon(self._fleet.watch)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        self._refresh_at = self._expires_at = _NEVER
        try:
            if tg is not None:
                # Background renewals never raise, so the group exits cleanly; an exception from
                # the body propagates as itself, not wrapped in an ExceptionGroup.
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

    async def _get_slow(self) -> Token:
        if self._tg is None:
            raise ProviderClosed("use the provider inside 'async with TokenProvider(...)'")
        for _ in range(3):
            now = self._now()
            token = self._token
            if token is not None and now < self._expires_at:
                # STALE: serve the still-valid token; renew in the background.
                if self._flight is None and self._fatal is None and now >= self._retry_not_before:
                    self.stats.background_refreshes += 1
                    self._start_flight()
                return token
            if self._fatal is not None:
                raise self._fatal_error()
            self.stats.waits += 1
            flight = self._flight or self._start_flight()
            token = await flight.wait()
            if self._token is token and self._now() < self._expires_at:
                return token
            # Invalidated, replaced or already expired by the time this task resumed: look again.
        raise TransientTokenError(
            "no valid token after three renewals: the token lifetime is shorter than a token request takes",
            hint="raise the token lifetime on the server or lower the latency to it",
        )

    def _fatal_error(self) -> TokenError:
        fatal = self._fatal
        assert fatal is not None
        if isinstance(fatal, InvalidCredentials):
            return CredentialsLockedOut(
                "an earlier login was rejected; no login is attempted until reset()",
                status=fatal.status,
                error_code=fatal.error_code,
            )
        err = copy.copy(fatal)
        err.__traceback__ = None
        return err

    def _start_flight(self) -> _Flight:
        assert self._tg is not None
        flight = _Flight()
        self._flight = flight
        self._tg.start_soon(self._run_flight, flight)
        return flight

    async def _run_flight(self, flight: _Flight) -> None:
        try:
            delay = self._retry_not_before - self._now()
            if delay > 0:
                await self._clock.sleep(delay)
            token, source = await (self._fleet.renew() if self._fleet is not None else self._renew())
            if token.expires_at - self._policy.skew(token.lifetime) <= self._now():
                raise TransientTokenError(
                    f"the token expired before it arrived (lifetime {token.lifetime:.3f}s)",
                    hint="the token lifetime is shorter than a token request takes",
                )
        except (TokenError, CoordinatorUnavailable) as exc:
            self._on_failure(exc)
            flight.error = exc
        except Exception as exc:  # a bug or an unexpected failure: waiters get it, the provider lives
            log.exception("unexpected error while renewing the token")
            self.stats.failures += 1
            flight.error = exc
        else:
            self._install(token, source)
            flight.token = token
            flight.error = None
        finally:
            if self._flight is flight:
                self._flight = None
            flight.done.set()
        if flight.token is not None:
            await self._persist(flight.token)

    async def _renew(self) -> tuple[Token, Literal["password", "refresh_token"]]:
        # Read the refresh token now, inside the single flight, never before it: with
        # rotating refresh tokens a value read earlier may already have been used.
        current = self._token
        rt = current.refresh_token if current is not None else None
        now = self._now()
        usable = (
            rt is not None
            and current is not None
            and (current.refresh_expires_at is None or now < current.refresh_expires_at)
            and self._refresh_failures < self._policy.refresh_failures_before_login
        )
        if usable:
            assert rt is not None
            self.stats.refreshes += 1
            try:
                return await self._exchange(build_refresh_request(self._config, rt), current), "refresh_token"
            except RefreshTokenRejected as exc:
                self.stats.refresh_rejected += 1
                log.info("refresh token rejected (%s); logging in with the password once", exc.error_code)
            except TransientTokenError as exc:
                # A refresh endpoint that keeps answering 500 (e.g. a lost server-side session)
                # is given up for a login; outages (503, 429, no connection) are not.
                if exc.status == 500:
                    self._refresh_failures += 1
                raise
        self.stats.logins += 1
        return await self._exchange(build_password_request(self._config), None), "password"

    async def _exchange(self, request: TokenRequest, previous: Token | None) -> Token:
        config = self._config
        assert self._endpoint is not None

        def parse(response: TokenResponse, sent: Instant) -> Token:
            return parse_token_response(config, request, response, sent, previous=previous)

        def on_send(req: TokenRequest, attempt: int) -> None:
            self.stats.token_requests += 1
            log.debug("token request: grant=%s url=%s attempt=%d", req.grant, safe_url(req.url), attempt + 1)

        return await exchange(
            self._endpoint, request, parse, policy=self._retry, clock=self._clock, rng=self._rng, on_send=on_send
        )

    def _install(self, token: Token, source: Literal["password", "refresh_token", "store", "fleet"]) -> None:
        policy = self._policy
        expires_at = token.expires_at - policy.skew(token.lifetime)
        refresh_at = max(token.issued.monotonic, expires_at - policy.margin(token.lifetime, self._rng))
        self._token = token
        self._expires_at = expires_at
        self._refresh_at = refresh_at if self._tg is not None else _NEVER
        self._failures = self._refresh_failures = 0
        self._retry_not_before = _NEVER
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

    def _on_failure(self, exc: TokenError | CoordinatorUnavailable) -> None:
        self.stats.failures += 1
        now = self._now()
        if isinstance(exc, DefinitiveTokenError) and not isinstance(exc, RefreshTokenRejected):
            self._fatal = exc
            log.error("token request rejected, no automatic retry: %s", exc)
            return
        self._failures += 1
        delay = self._policy.backoff.backoff(self._failures - 1, self._rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        if self._token is not None and now < self._expires_at:
            delay = min(delay, (self._expires_at - now) / 2)  # try again before the token runs out
        self._retry_not_before = now + delay
        log.warning("token renewal failed, next attempt in %.2fs: %s", delay, exc)

    def _restore(self) -> None:
        try:
            stored = self._store.load(self._config.credential_key)
        except Exception as exc:
            log.warning("token store could not be read, logging in instead: %s", type(exc).__name__)
            return
        if stored is None:
            return
        now_mono, now_wall = self._now(), self._clock.wall()
        # The store keeps wall-clock times; move them onto this process's monotonic clock.
        rexp = stored.refresh_expires_at
        token = attrs.evolve(
            stored,
            issued=Instant(now_mono - (now_wall - stored.issued.wall), stored.issued.wall),
            refresh_expires_at=None if rexp is None else now_mono + (rexp - now_wall),
        )
        if token.expires_at - self._policy.skew(token.lifetime) > now_mono or token.refresh_token is not None:
            self.stats.restored += 1
            self._install(token, "store")
            if self._expires_at <= now_mono:
                self._refresh_at = self._expires_at = _NEVER
                self._token = token  # keep its refresh token for the first renewal

    async def _persist(self, token: Token) -> None:
        try:
            await anyio.to_thread.run_sync(self._store.save, self._config.credential_key, token)
        except Exception as exc:
            log.warning("token store could not be written: %s", type(exc).__name__)
