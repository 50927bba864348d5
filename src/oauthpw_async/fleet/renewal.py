"""How a :class:`TokenProvider` renews when it is part of a fleet (``TokenProvider(..., coordinator=...)``).

The provider keeps its single flight, its states and its fast path; only what one renewal does
changes:

1. a newer token published by another process is adopted, no request sent;
2. otherwise the fleet's lease is taken (waiting for a holder's publish meanwhile), the shared
   record read again under it, and the holder renews: with the shared refresh token if it is
   unspent (marked spent first, fenced by the lease), else with the password, charged to the
   fleet-wide login budget and stopped by the fleet-wide "password rejected" latch;
3. the new token is published by compare-and-set; when another process won, its token is used.

A shared record sealed with another key (a worker given the wrong ``OAUTHPW_FLEET_KEY``) is
replaced the same way, with one login under the lease, by the processes whose key more live
processes hold; a process in the minority gets :class:`FleetKeyMismatch` and sends nothing.
A token that arrived usable but expired while Redis stalled the publish is reported as that
stall (:class:`CoordinatorUnavailable`), not as a lifetime shorter than a request.

A watcher task installs every newer generation as soon as it is published. With Redis out
of reach the provider serves its valid token and then fails with
:class:`CoordinatorUnavailable`; it never renews without the lease unless the coordinator says
``on_unavailable="renew_locally"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ..errors import (
    CredentialsLockedOut,
    DefinitiveTokenError,
    LoginBudgetExhausted,
    RefreshTokenRejected,
    TokenError,
    TokenResponseError,
    TransientTokenError,
)
from ..grant import Token, build_password_request, build_refresh_request
from ..renewal import LocalRenewer, RenewalContext, RenewalSource, locked_out
from ..retry import RetryPolicy, attempts
from .errors import CoordinatorRefused, CoordinatorUnavailable, FleetKeyMismatch
from .tokens import RefreshPermit, SharedToken

if TYPE_CHECKING:
    from ..clock import Clock
    from .coordinator import Coordinator
    from .lease import LeaseHandle

__all__ = [
    "FLEET_LATCH_RECHECK",
    "KEY_MAJORITY_WAIT",
    "LEASE_POLL",
    "LEASE_POLL_MAX",
    "WATCH_RECONNECT",
    "FleetRenewal",
]

log = logging.getLogger("oauthpw_async.fleet")

Source = RenewalSource

#: Longest step (seconds) between two looks at a lease held by another process, when no publish wakes us.
LEASE_POLL_MAX = 0.5
#: How a renewal polls a lease held by another process: a step doubling from 20 ms, bounded by its wait.
LEASE_POLL = RetryPolicy(max_attempts=1_000_000, base_delay=0.02, max_delay=LEASE_POLL_MAX, jitter=0.0)
#: How the watcher waits for Redis to answer again: doubling from 100 ms up to 5 s (no jitter).
WATCH_RECONNECT = RetryPolicy(max_attempts=1_000_000, base_delay=0.1, max_delay=5.0, jitter=0.0)
_NO_JITTER = random.Random(0)  # WATCH_RECONNECT has no jitter: its draws change nothing
#: Seconds a process finding the shared record sealed with another key waits for its own key to be held
#: by more live processes than that key (workers of one fleet start at about the same time), before it
#: calls itself the one with the wrong key.
KEY_MAJORITY_WAIT = 10.0
#: Seconds between looks at the fleet's "password rejected" state after a rejection (one Redis read each).
FLEET_LATCH_RECHECK = 5.0


class FleetRenewal:
    """The fleet side of one provider: renewal under the lease, adoption of published tokens.

    A :class:`~oauthpw_async.renewal.Renewer`, made by :meth:`Coordinator.renewer`; it sees its
    provider through the :class:`~oauthpw_async.renewal.RenewalContext` only.
    """

    def __init__(self, context: RenewalContext, coordinator: Coordinator) -> None:
        self._p = context
        self._fleet = coordinator
        #: What this process renews with when Redis is away and local renewal was chosen.
        self._local_renewer = LocalRenewer(context)
        #: A definitive rejection of a login here: no login until reset() here or a token from another process.
        self._rejected: TokenError | None = None
        #: Generation and id of the token this process holds (0 / "" before the first one).
        self.generation = 0
        self.token_id = ""
        #: The highest generation this process has seen: a shared record below it (or at it with
        #: another token) means Redis went back in time (a restored snapshot, a lost AOF second,
        #: a failover to a lagging replica), and its refresh token may already be used.
        self.high_water = 0
        #: A renewed token Redis did not take (it was unreachable), and the generation it renewed.
        self._unpublished: tuple[Token, int] | None = None
        self._published = anyio.Event()
        self._reset_latch = False
        self._me = f"{socket.gethostname()} pid {os.getpid()}"
        #: Set once this process's watcher is subscribed (and so counted as a holder of its key).
        self._subscribed = anyio.Event()
        #: The generation of a record sealed with another key that this process replaces (0: none).
        self._replacing = 0
        #: When this renewal's token request was answered (``None``: no request, e.g. an adopted token).
        self._arrived: float | None = None

    # --- hooks called by the provider -----------------------------------------------------------

    @property
    def rejection_recheck(self) -> float:
        """Seconds after a rejected login before the shared state is read again (another process may fix it)."""
        return FLEET_LATCH_RECHECK

    def reset(self) -> None:
        """The provider was reset: reopen the fleet's latch before the next login."""
        self._rejected = None
        self._reset_latch = True

    async def renew(self) -> tuple[Token, Source]:
        """One renewal for the provider's single flight."""
        try:
            token, source = await self._renew_or_fall_back()
        except DefinitiveTokenError as exc:
            if not isinstance(exc, RefreshTokenRejected):
                self._rejected = exc
            raise
        self._rejected = None  # a working token: what was rejected before is fixed
        return token, source

    async def _renew_or_fall_back(self) -> tuple[Token, Source]:
        self._arrived = None
        try:
            token, source = await self._renew()
        except CoordinatorUnavailable:
            if self._fleet.on_unavailable == "renew_locally":
                log.warning("Redis unreachable: renewing locally, as configured")
                p = self._p
                own = self._unpublished is not None and self._unpublished[0] is p.token  # never shared
                if not own and not p.rotation.reusable:
                    # The fleet may have spent this refresh token already (sent by a holder without an
                    # answer): while rotation is possible, the local renewal is a password login.
                    p.drop_refresh_token(p.token)
                token, source = await self._local_renewer.renew()
                # Published once Redis answers, so that no process presents the refresh token used here.
                self._unpublished = (token, self.generation)
                self.token_id = ""
                return token, source
            raise
        self._check_not_stalled(token)
        return token, source

    def _check_not_stalled(self, token: Token) -> None:
        """Name Redis when a token that arrived usable expired while the fleet's writes waited for Redis."""
        p, arrived = self._p, self._arrived
        usable_until = p.usable_until(token)
        if arrived is None or usable_until > p.clock.monotonic() or usable_until <= arrived:
            return  # usable, or no request of ours, or already too late on arrival (the server's or the network's)
        raise CoordinatorUnavailable(
            f"Redis stalled for {p.clock.monotonic() - arrived:.1f}s after the new token arrived (its publish and the "
            f"lease's release waited for Redis), and the token (lifetime {token.lifetime:g}s) expired meanwhile; "
            "check Redis's latency (redis-cli --latency, SLOWLOG GET, LATENCY DOCTOR), the load of its host and "
            "the network to it",
            where=self._fleet.link.where,
        )

    async def watch(self) -> None:
        """Install every newer published token at once; runs in the provider's task group."""
        unreachable = 0
        clock = self._fleet.clock  # the fleet's waits are on the coordinator's clock
        while True:
            try:
                await self._fleet.tokens.watch(self._on_published)
            except CoordinatorUnavailable:
                await clock.sleep(WATCH_RECONNECT.backoff(unreachable, _NO_JITTER))
                unreachable += 1
            except CoordinatorRefused as exc:  # a set-up to fix: say so, now and then
                log.warning("fleet watcher: %s", exc)
                await clock.sleep(30.0)
            except Exception:  # never let the watcher take the provider down; the slow path still reads
                log.exception("fleet watcher failed; retrying")
                await clock.sleep(5.0)

    # --- internals ------------------------------------------------------------------------------

    async def _on_published(self, generation: int | None) -> None:
        if generation is None:
            self._subscribed.set()
        self._published.set()
        self._published = anyio.Event()
        if generation is not None and generation == self.generation:
            return
        try:
            if self._unpublished is not None:
                await self._publish_pending()
            if self._p.renewing:
                return  # the flight in progress reads the record itself
            shared = await self._fleet.tokens.read()
        except Exception as exc:
            log.debug("fleet watcher could not read the shared token: %s", type(exc).__name__)
            return
        if shared is not None and self._adoptable(shared) and not self._p.renewing:
            self._adopt(shared)

    def _local(self, shared: SharedToken) -> Token:
        """The shared token on this process's monotonic clock."""
        return shared.record.token(self._p.clock)

    def _adoptable(self, shared: SharedToken) -> bool:
        """A token this process does not have yet and that is still worth using."""
        if shared.token_id == self.token_id:
            return False
        return self._p.usable_until(self._local(shared)) > self._p.clock.monotonic()

    def _learn_from(self, adopted: Token) -> None:
        """A published token with the refresh token this process held: the server does not rotate."""
        held = self._p.token
        old = held.refresh_token if held is not None else None
        new = adopted.refresh_token
        if held is not None and old is not None and new is not None and old.reveal() == new.reveal():
            self._p.rotation.learn(held, adopted)

    def _adopt(self, shared: SharedToken) -> Token:
        """Install a token another process published, outside a renewal (the watcher heard it)."""
        token, _ = self._adopted(shared)
        self._rejected = None  # a working token: what was rejected before is fixed
        self._p.adopt(token)
        return token

    def _wait_bound(self) -> float:
        """Seconds a caller without a token waits for another holder: as long as a live holder may take.

        A live holder renews the lease while its request runs, for at most one request's retries
        (:meth:`_renew` shields it that long); a dead or frozen one loses it within the lease ttl.
        """
        return self._request_bound() + self._fleet.lease.ttl

    def _request_bound(self) -> float:
        """Seconds one token request may take with its retries (a holder's renewal under the lease)."""
        p = self._p
        return p.retry.deadline + 2 * p.config.timeout

    async def _renew(self) -> tuple[Token, Source]:
        fleet = self._fleet
        if self._unpublished is not None:
            await self._publish_pending()
        # Wake up on the holder's publish, or poll: a message can be missed across reconnects.
        tries = attempts(LEASE_POLL, _WokenByPublish(fleet.clock, lambda: self._published), deadline=self._wait_bound())
        async for _ in tries:
            shared = await self._read()
            if shared is not None and self._adoptable(shared):
                return self._adopted(shared)
            handle, remaining = await fleet.lease.try_acquire()
            if handle is not None:
                break
            # A dead or frozen holder's lease runs out after `remaining`: look again right then.
            tries.cap(max(remaining, 0.005))
        else:
            raise TransientTokenError(
                "another process of the fleet holds the renewal lease and has published no token",
                hint="check the other workers (a stalled one keeps the lease until it expires)",
            )
        # A holder whose provider closes mid-renewal still finishes it and publishes: a rotating
        # refresh token sent and never published would cost the fleet a password login. Bounded
        # by what one token request may take with its retries; never reached otherwise.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._request_bound()
            async with fleet.lease.keep(handle):
                return await self._renew_holding(handle)
        raise TransientTokenError("the renewal under the fleet's lease did not finish in time")

    async def _read(self) -> SharedToken | None:
        """The shared record; one sealed with another key reads as none once this process may replace it."""
        try:
            return await self._fleet.tokens.read()
        except FleetKeyMismatch as exc:
            if exc.generation != self._replacing:
                await self._claim_majority(exc)
                self._replacing = exc.generation  # what the replacement renews from
            return None

    async def _claim_majority(self, exc: FleetKeyMismatch) -> None:
        """Return if this process's key is held by more live processes than the key that sealed the record.

        Raises:
            FleetKeyMismatch: it is not, within :data:`KEY_MAJORITY_WAIT` seconds: this process (or the
                other one) has the wrong key; the message names both keys by id and who sealed the record.
        """
        tokens = self._fleet.tokens
        with anyio.move_on_after(self._fleet.link.command_timeout):
            await self._subscribed.wait()  # counted as a holder of our key
        clock = self._fleet.clock
        deadline = clock.monotonic() + KEY_MAJORITY_WAIT
        ours_id, theirs_id = tokens.key_id, exc.record_key_id
        while True:
            counts = await tokens.key_holders(ours_id, *([theirs_id] if theirs_id else []))
            ours, theirs = max(1, counts.get(ours_id, 0)), counts.get(theirs_id, 0)
            if ours > theirs:
                log.warning(
                    "the shared token record (generation %d) is sealed with fleet key id %s by %s, held by %d live "
                    "process(es) against %d holding this process's key id %s: replacing it with one login; "
                    "give %s the fleet's OAUTHPW_FLEET_KEY",
                    exc.generation,
                    theirs_id or "unknown",
                    exc.sealed_by or "an unknown process",
                    theirs,
                    ours,
                    ours_id,
                    exc.sealed_by or "every process holding that key",
                )
                return
            if clock.monotonic() >= deadline:
                raise FleetKeyMismatch(
                    f"this process ({tokens.writer}) holds fleet key id {ours_id}, like {ours} live process(es); "
                    f"the shared token record (generation {exc.generation}) is sealed with key id "
                    f"{theirs_id or 'unknown'} by {exc.sealed_by or 'an unknown process'}, held by {theirs} live "
                    "process(es): give this process the fleet's OAUTHPW_FLEET_KEY (if it is the other key that is "
                    "wrong, stop or fix the processes holding it and run `oauthpw-async fleet reset --tokens`)",
                    key_id=ours_id,
                    record_key_id=theirs_id,
                    sealed_by=exc.sealed_by,
                    generation=exc.generation,
                )
            await clock.sleep(0.25)

    def _adopted(self, shared: SharedToken) -> tuple[Token, Source]:
        """A token another process published, as this renewal's result (counted, its generation held)."""
        token = self._local(shared)
        self._learn_from(token)
        self._hold(shared.generation, shared.token_id)
        self._unpublished = None
        self._p.stats.adopted += 1
        return token, "shared"

    def _hold(self, generation: int, token_id: str) -> None:
        self.generation, self.token_id = generation, token_id
        self.high_water = max(self.high_water, generation)

    def _went_back(self, shared: SharedToken) -> bool:
        """Whether the shared record is older than one this process already saw."""
        if shared.generation < self.high_water:
            return True
        return shared.generation == self.generation and bool(self.token_id) and shared.token_id != self.token_id

    async def _renew_holding(self, handle: LeaseHandle) -> tuple[Token, Source]:
        fleet, p = self._fleet, self._p
        shared = await self._read()
        if shared is not None and self._adoptable(shared):  # a valid token, even from an older state
            return self._adopted(shared)
        base = shared.generation if shared is not None else max(self.generation, self._replacing)
        token: Token | None = None
        source: Source = "refresh_token"
        rt_usable = (
            shared is not None
            and shared.record.refresh_token is not None
            and not shared.refresh_spent
            and (shared.record.refresh_expires_wall is None or shared.record.refresh_expires_wall > p.clock.wall())
        )
        if rt_usable and shared is not None and self._went_back(shared):
            log.warning(
                "the shared token record went back from generation %d to %d (Redis restored or failed over): "
                "its refresh token may be used already, so this process logs in instead",
                self.high_water,
                shared.generation,
            )
            rt_usable = False
        if rt_usable:
            assert shared is not None
            permit = await fleet.tokens.claim_refresh(shared.generation, fleet.lease, handle)
            if permit is RefreshPermit.GRANTED:
                token = await self._refresh(shared, handle)
                self._arrived = p.clock.monotonic()
                if token is None:  # rejected: another process may have rotated it meanwhile
                    again = await fleet.tokens.read()
                    if again is not None and again.generation != shared.generation and self._adoptable(again):
                        return self._adopted(again)
            elif permit is RefreshPermit.NOT_HOLDER:
                raise TransientTokenError("the renewal lease expired before the refresh was sent")
            elif permit is RefreshPermit.CHANGED:  # published meanwhile (a holder without lease): take it
                again = await fleet.tokens.read()
                if again is not None and self._adoptable(again):
                    return self._adopted(again)
        if token is None:
            source = "password"
            if not handle.valid:  # a stalled holder: its successor renews
                raise TransientTokenError("the renewal lease expired before the login was sent")
            token = await self._login()
            self._arrived = p.clock.monotonic()
        await self._publish(token, base)
        return token, source

    async def _refresh(self, shared: SharedToken, handle: LeaseHandle) -> Token | None:
        """Send the shared refresh token (marked spent); ``None`` when it is used up (log in instead).

        The mark is undone when the server said it did not use it (408, 429, 503, or no connection
        at all), so a passing outage does not turn into password logins; it stays when the refresh
        may have been processed without a usable answer, as a rotated token may then be gone.
        """
        fleet, p = self._fleet, self._p
        previous = self._local(shared)
        assert previous.refresh_token is not None
        p.stats.refreshes += 1
        request = build_refresh_request(p.config, previous.refresh_token)
        try:
            token = await p.exchange(request, previous, p.retry, resend_unanswered=p.rotation.reusable)
        except RefreshTokenRejected as exc:
            p.stats.refresh_rejected += 1
            log.info("refresh token rejected (%s); reading the shared state again", exc.error_code)
            return None
        except (TransientTokenError, TokenResponseError) as exc:
            if p.rotation.maybe_spent(exc):
                return None  # stays marked spent: the holder logs in
            # Not used, or reusable anyway: give it back to the fleet (else it stays spent: one login).
            with contextlib.suppress(CoordinatorUnavailable, CoordinatorRefused):
                await fleet.tokens.unspend(shared.generation, fleet.lease, handle)
            raise
        p.rotation.learn(previous, token)
        return token

    async def _login(self) -> Token:
        fleet, p = self._fleet, self._p
        if self._rejected is not None:
            # Rejected before, and not reset() here: only a token another process published (read
            # above) ends it. Not the latch's absence alone: Redis may have lost it.
            raise locked_out(self._rejected)
        if self._reset_latch:
            await fleet.rejected.reset()
            self._reset_latch = False
        latch = await fleet.rejected.state()
        if latch is not None:
            raise CredentialsLockedOut(
                f"a login of this credential was rejected in the fleet ({latch.by}); "
                "no process logs in until reset() is called after the credentials were fixed",
                status=latch.status,
                error_code=latch.error_code,
            )
        p.check_login_budget()  # this process's own budget still holds
        wait = await fleet.logins.take()
        if wait > 0:
            raise LoginBudgetExhausted(
                f"the fleet's login budget is spent: {fleet.logins.limit} unconfirmed password login request(s) "
                f"(answers that were no token) in {fleet.logins.window:g}s across every process of this credential",
                retry_at=p.clock.wall() + wait,
                retry_after=wait,
            )
        p.stats.logins += 1
        # One request per charge of the fleet's budget: a failed login is retried by a later renewal.
        once = p.retry.at_most(1)
        try:
            token = await p.exchange(build_password_request(p.config), None, once)
        except DefinitiveTokenError as exc:
            if not isinstance(exc, RefreshTokenRejected):
                await fleet.rejected.trip(status=exc.status, error_code=exc.error_code, by=self._me)
            raise
        p.login_confirmed()  # a token: the login budget is re-armed, here and fleet-wide
        try:
            await fleet.logins.confirm()
        except (CoordinatorUnavailable, CoordinatorRefused):
            log.warning("Redis unreachable: the fleet's login budget is re-armed by the next login instead")
        return token

    async def _publish(self, token: Token, base: int) -> None:
        try:
            result = await self._fleet.tokens.publish(
                token, renewed_from=base, now_wall=self._p.clock.wall(), at_least=self.high_water
            )
        except (CoordinatorUnavailable, CoordinatorRefused):
            # The token is good: use it here, and publish it once Redis answers (or allows it) again.
            self._unpublished = (token, base)
            self.token_id = ""
            log.warning("Redis unreachable: the new token is used locally and published later")
            return
        if result.published:
            self._hold(result.generation, result.token_id)
            self._replacing = 0
        else:
            # Another process published first (possible only after our lease ran out): ours is
            # valid too, and the next renewal reads theirs.
            self.token_id = ""
            log.info("another process published generation %d first", result.generation)

    async def _publish_pending(self) -> None:
        pending = self._unpublished
        if pending is None:
            return
        token, base = pending
        if token.expires_at <= self._p.clock.monotonic():
            self._unpublished = None
            return
        result = await self._fleet.tokens.publish(
            token, renewed_from=base, now_wall=self._p.clock.wall(), at_least=self.high_water
        )
        self._unpublished = None
        if result.published:
            self._hold(result.generation, result.token_id)


class _WokenByPublish:
    """The fleet's clock, whose sleeps also end as soon as the watcher hears a publish."""

    __slots__ = ("_clock", "_event")

    def __init__(self, clock: Clock, event: Callable[[], anyio.Event]) -> None:
        self._clock, self._event = clock, event

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def wall(self) -> float:
        return self._clock.wall()

    async def sleep(self, seconds: float) -> None:
        published = self._event()  # replaced at each publish: the one current now
        async with anyio.create_task_group() as tg:

            async def wake() -> None:
                await published.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wake)
            await self._clock.sleep(seconds)
            tg.cancel_scope.cancel()
