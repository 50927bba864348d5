"""One credential's fleet coordination through one Redis connection."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import anyio

from ..clock import SYSTEM_CLOCK, Clock
from ..config import PasswordGrantConfig
from ..errors import UsageError
from ._redis import RedisLink
from .cipher import TokenCipher
from .lease import Lease
from .logins import CredentialsLatch, LoginBudget
from .partitions import PartitionQueue
from .ratelimit import HostRateLimiter
from .tokens import SharedTokenState

if TYPE_CHECKING:
    from ..renewal import RenewalContext
    from .renewal import FleetRenewal

__all__ = ["Coordinator", "lease_ttl_for"]

OnUnavailable = Literal["fail", "renew_locally"]


def lease_ttl_for(command_timeout: float, request_timeout: float | None = None) -> float:
    """The renewal lease's default ttl: how long a dead or frozen holder keeps the fleet waiting.

    A live holder renews the lease every third of its ttl, whatever its token request takes, so
    the ttl needs room for two Redis round trips only: ``3 * command_timeout``. And a holder silent
    for longer than one token request may take (``request_timeout``, the connection's Timeout) is
    dead or frozen, not slow: the ttl is never longer than that.
    """
    ttl = 3 * command_timeout
    if request_timeout is not None:
        ttl = min(ttl, request_timeout)
    return max(ttl, 0.1)


class Coordinator:
    """Shares one credential's token lifecycle, login budget, rate limits and crawl partitions through Redis.

    Use it as ``async with Coordinator.for_config(config, "redis://127.0.0.1:6379/0", token_key=KEY) as fleet:``.
    Entering does not contact Redis; every operation raises :class:`CoordinatorUnavailable` while
    Redis cannot be reached.

    Args:
        url: the Redis URL (``redis://[user:password@]host:port/db``, ``rediss://`` for TLS).
        credential_key: :attr:`PasswordGrantConfig.credential_key` (a digest; never the password):
            whose token, lease and renewals are shared.
        account_key: :attr:`PasswordGrantConfig.account_key`: whose login budget and "password
            rejected" state are shared (by every token of the same user); default ``credential_key``.
        token_key: the key sealing tokens at rest (:func:`generate_key`), or several (newest first).
        namespace: prefix of every Redis key (several fleets may share one Redis).
        lease_ttl: seconds a renewing process keeps the lease without renewing it, i.e. how long a dead
            or frozen holder keeps callers without a valid token waiting. Default
            :func:`lease_ttl_for` (``min(3 * command_timeout, request_timeout)``: 6 s by default).
        request_timeout: the token request timeout (:meth:`for_config` takes the connection's).
        login_limit, login_window: password logins allowed per window, fleet-wide.
        on_unavailable: ``"fail"`` (default): with Redis unreachable, a process serves its valid
            token and then fails with :class:`CoordinatorUnavailable`; ``"renew_locally"``: it
            renews on its own instead (safe only when refresh tokens are not single-use).
        connect_timeout, command_timeout: seconds before Redis counts as unreachable.
        clock: the clock every wait of the fleet's loops is on (heartbeats, lease renewals and
            polls, rate-limit waits, partition keep-alives); tests pass a fake one.
    """

    def __init__(
        self,
        url: str,
        *,
        credential_key: str,
        token_key: str | bytes | Sequence[str | bytes] | TokenCipher,
        account_key: str | None = None,
        namespace: str = "oauthpw",
        lease_ttl: float | None = None,
        request_timeout: float | None = None,
        login_limit: int = 5,
        login_window: float = 900.0,
        on_unavailable: OnUnavailable = "fail",
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        account_key = account_key or credential_key
        for key in (credential_key, account_key):
            if not key or "{" in key or "}" in key:
                raise UsageError("credential_key and account_key come from PasswordGrantConfig (no braces)")
        if on_unavailable not in ("fail", "renew_locally"):
            raise UsageError('on_unavailable must be "fail" or "renew_locally"')
        self.link = RedisLink(
            url, namespace=namespace, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
        self.credential_key = credential_key
        self.account_key = account_key
        self.on_unavailable: OnUnavailable = on_unavailable
        #: The clock the fleet's loops wait on.
        self.clock = clock
        cipher = token_key if isinstance(token_key, TokenCipher) else TokenCipher(token_key)
        #: Seals the shared token and the crawl positions at rest.
        self.cipher = cipher
        scope = f"cred:{credential_key}"
        #: The shared token record (read, compare-and-set publish, watch).
        self.tokens = SharedTokenState(self.link, credential_key, cipher, clock=clock)
        #: Who may renew the token right now.
        self.lease = Lease(
            self.link,
            scope,
            ttl=lease_ttl if lease_ttl is not None else lease_ttl_for(command_timeout, request_timeout),
            clock=clock,
        )
        account = f"acct:{account_key}"
        #: Password logins per window, fleet-wide, for every token of the account.
        self.logins = LoginBudget(self.link, account, limit=login_limit, window=login_window)
        #: Closed after a rejected password; only an explicit reset reopens it.
        self.rejected = CredentialsLatch(self.link, account, channel=self.tokens.channel)

    @classmethod
    def for_config(
        cls,
        config: PasswordGrantConfig,
        url: str,
        *,
        token_key: str | bytes | Sequence[str | bytes] | TokenCipher,
        **options: object,
    ) -> Coordinator:
        """A coordinator for the token and account of ``config`` (keyed by their digests).

        The lease ttl derives from the connection's Timeout unless ``lease_ttl`` is given.
        """
        options.setdefault("request_timeout", config.timeout)
        return cls(
            url,
            credential_key=config.credential_key,
            account_key=config.account_key,
            token_key=token_key,
            **options,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"Coordinator(redis={self.link.where!r}, credential_key={self.credential_key!r})"

    async def __aenter__(self) -> Coordinator:
        await self.link.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.link.__aexit__(exc_type, exc, tb)

    async def ping(self) -> float:
        """Seconds one round trip to Redis takes; raises :class:`CoordinatorUnavailable` if it cannot."""
        start = anyio.current_time()
        await self.link.call(self.link.client.ping())
        return anyio.current_time() - start

    def renewer(self, context: RenewalContext) -> FleetRenewal:
        """The renewer of a :class:`~oauthpw_async.provider.TokenProvider` given this coordinator.

        The provider calls it when it opens; it renews under the fleet's lease and adopts the
        tokens other processes publish (:class:`~oauthpw_async.fleet.renewal.FleetRenewal`).
        """
        from .renewal import FleetRenewal

        return FleetRenewal(context, self)

    def check_reset(self, current: PasswordGrantConfig, new: PasswordGrantConfig) -> None:
        """Raise :class:`UsageError` if a provider reset from ``current`` to ``new`` cannot keep this coordinator.

        It shares one token and one account: a configuration for another needs its own coordinator.
        """
        if (new.credential_key, new.account_key) != (current.credential_key, current.account_key):
            raise UsageError(
                "reset() with a configuration for another token or account cannot keep this provider's "
                "fleet coordinator: make a Coordinator.for_config(new_config, ...) and a new TokenProvider"
            )

    def rate_limiter(self, *, rate: float, burst: int = 1, max_wait: float = 60.0) -> HostRateLimiter:
        """A per-host request rate shared by every worker (GCRA) plus the shared 429/503 pause."""
        return HostRateLimiter(self.link, rate=rate, burst=burst, max_wait=max_wait, clock=self.clock)

    def partitions(
        self, crawl: str, *, consumer: str | None = None, idle_timeout: float = 60.0, max_claims: int = 5
    ) -> PartitionQueue:
        """The shared partition queue of the crawl named ``crawl`` (positions sealed with the token key)."""
        return PartitionQueue(
            self.link,
            crawl,
            consumer=consumer,
            idle_timeout=idle_timeout,
            max_claims=max_claims,
            cipher=self.cipher,
            clock=self.clock,
        )
