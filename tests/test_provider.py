"""TokenProvider invariants, each under thousands of tasks with a fake clock, on asyncio and trio."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from oauthpw_async import (
    CredentialsLockedOut,
    FileTokenStore,
    InvalidCredentials,
    MemoryTokenStore,
    PasswordGrantConfig,
    ProviderClosed,
    RefreshPolicy,
    RetryPolicy,
    Token,
    TokenEvent,
    TokenProvider,
    TransientTokenError,
)
from oauthpw_async.testing import AuthServerState, FakeClock, Fault, InMemoryEndpoint, Quirks

pytestmark = pytest.mark.anyio

URL = "https://auth.example.com/oauth/token"
TASKS = 5000


class Harness:
    """A fake clock, an in-memory authorization server on that clock, and a provider."""

    def __init__(
        self,
        lifetime: float = 60.0,
        latency: float = 0.05,
        quirks: Quirks | None = None,
        refresh: RefreshPolicy | None = None,
        retry: RetryPolicy | None = None,
        **kw: Any,
    ) -> None:
        self.clock = FakeClock()
        self.state = AuthServerState(
            token_lifetime=lifetime, latency=latency, quirks=quirks, clock=self.clock.monotonic
        )
        self.endpoint = InMemoryEndpoint(self.state, self.clock)
        self.config = PasswordGrantConfig(
            access_token_url=URL,
            client_id=self.state.client_id,
            client_secret=self.state.client_secret,
            username=self.state.username,
            password=self.state.password,
        )
        self.provider = TokenProvider(
            self.config,
            endpoint=self.endpoint,
            clock=self.clock,
            rng=random.Random(7),
            refresh=refresh,
            retry=retry or RetryPolicy(base_delay=0.1),
            **kw,
        )

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Move time to each sleeper's deadline in turn (or in fixed steps), settling in between."""
        target = self.clock.now + seconds
        if step is not None:
            while self.clock.now + step < target:
                self.clock.advance(step)
                await anyio.wait_all_tasks_blocked()
        while True:
            await anyio.wait_all_tasks_blocked()
            nxt = self.clock.next_deadline()
            if nxt is None or nxt > target:
                break
            self.clock.advance(max(0.0, nxt - self.clock.now))
        self.clock.advance(max(0.0, target - self.clock.now))
        await anyio.wait_all_tasks_blocked()

    async def get(self, advance: float = 0.05) -> Token:
        """One ``get()`` while time moves on by ``advance``; its error is raised as itself."""
        result: dict[str, Any] = {}

        async def call() -> None:
            try:
                result["token"] = await self.provider.get()
            except Exception as exc:
                result["error"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await self.advance(advance)
        if "error" in result:
            raise result["error"]
        return result["token"]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    async with harness.provider:
        yield harness


def completes_without_suspending(make: Callable[[], Any]) -> tuple[bool, Any]:
    """Run a coroutine one step: True if it finished without awaiting anything."""
    coro = make()
    try:
        coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    coro.close()
    return False, None


async def gather(n: int, fn: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        try:
            results[i] = await fn()
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results


# --- single flight and the fast path ---------------------------------------------------------------


async def test_single_flight_thousands_of_callers_one_request(h: Harness) -> None:
    results: list[Any] = []

    async def caller() -> None:
        results.append(await h.provider.get())

    async with anyio.create_task_group() as tg:
        for _ in range(TASKS):
            tg.start_soon(caller)
        await h.advance(0.05)
    assert h.state.token_requests == 1 and len(results) == TASKS
    assert len({id(t) for t in results}) == 1
    assert h.provider.stats.waits == TASKS and h.provider.stats.logins == 1


async def test_fresh_token_returned_without_suspending_or_locking(h: Harness) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.provider.get)
        await h.advance(0.05)
    token = h.provider.token
    waits = h.provider.stats.waits
    for _ in range(TASKS):
        done, value = completes_without_suspending(h.provider.get)
        assert done and value is token
        done, header = completes_without_suspending(h.provider.authorization)
        assert done and header == token.authorization
    assert h.provider.stats.waits == waits and h.state.token_requests == 1


async def test_all_callers_get_the_same_error_from_one_attempt() -> None:
    h = Harness()
    h.state.password = "changed-by-admin"
    async with h.provider:
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def caller() -> None:
                try:
                    await h.provider.get()
                except Exception as exc:
                    results.append(exc)

            for _ in range(TASKS):
                tg.start_soon(caller)
            await h.advance(0.05)
        assert len(results) == TASKS and all(type(e) is InvalidCredentials for e in results)
        assert {e.error_code for e in results} == {"invalid_grant"}
        assert h.state.token_requests == 1


# --- no lockouts ------------------------------------------------------------------------------------


async def test_rejected_password_costs_exactly_one_request_until_reset() -> None:
    h = Harness()
    h.state.password = "rotated"
    async with h.provider:
        with pytest.raises(InvalidCredentials):
            await h.get()
        for _ in range(100):  # callers keep asking: none reaches the server
            with pytest.raises(CredentialsLockedOut, match="no login is attempted until reset"):
                await h.provider.get()
        await h.advance(3600)
        with pytest.raises(CredentialsLockedOut):
            await h.provider.get()
        assert h.state.count("password") == 1 and h.state.failed_logins == 1 and not h.state.locked
        h.state.password = h.config.password.reveal()  # the admin fixes the account, then resets
        h.provider.reset()
        assert await h.get()
        assert h.state.count("password", "ok") == 1


async def test_invalid_client_is_not_retried_either() -> None:
    h = Harness()
    h.state.client_secret = "other"
    async with h.provider:
        for _ in range(3):
            with pytest.raises(Exception, match="Client Id and Client Secret"):
                await h.get()
        assert h.state.token_requests == 1


# --- proactive (stale-while-revalidate) refresh ----------------------------------------------------


async def test_stale_token_served_at_once_while_one_background_refresh_runs() -> None:
    h = Harness(lifetime=1.0)
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        first = h.provider.token
        assert first is not None
        # Into the STALE window: refresh_at has passed, expiry has not.
        await h.advance(h.provider.refresh_at - h.clock.now + 0.001)
        assert h.clock.now < h.provider.expires_at
        for _ in range(TASKS):
            done, value = completes_without_suspending(h.provider.get)
            assert done and value is first  # nobody waits for a routine refresh
        assert h.provider.stats.background_refreshes == 1
        await h.advance(0.05)
        assert h.provider.token is not first
        assert h.state.count("refresh_token", "ok") == 1 and h.state.token_requests == 2
        assert h.provider.stats.waits == 1  # only the very first login was waited for


@pytest.mark.parametrize("lifetime", [1.0, 3600.0])
async def test_margin_suits_short_and_long_tokens(lifetime: float) -> None:
    h = Harness(lifetime=lifetime)
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        tok = h.provider.token
        assert tok is not None
        remaining_fresh = h.provider.refresh_at - tok.issued.monotonic
        # Fresh for most of its life (never "refresh on every request"), refresh well before expiry.
        assert 0.6 * lifetime <= remaining_fresh <= 0.95 * lifetime
        assert h.provider.expires_at - h.provider.refresh_at >= min(0.25 * lifetime, 300)


async def test_fractional_lifetimes_cause_no_extra_refreshes() -> None:
    """1.5-second tokens for 60 simulated seconds, with callers every 10 ms: refreshes match the ideal."""
    h = Harness(lifetime=1.5, latency=0.02, refresh=RefreshPolicy(jitter=0.0))
    async with h.provider:
        served_expired = 0

        async def caller() -> None:
            nonlocal served_expired
            end = h.clock.now + 59.0
            while h.clock.now < end:
                tok = await h.provider.get()
                if h.clock.now >= tok.expires_at:
                    served_expired += 1
                await h.clock.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
            await h.advance(60.0, step=0.02)
        lifetime = 1.5
        interval = lifetime - RefreshPolicy().skew(lifetime) - 0.25 * lifetime
        ideal = 60.0 / interval
        assert served_expired == 0
        assert h.state.token_requests <= ideal + 2
        assert h.state.count(outcome="invalid_grant") == 0


# --- reactive refresh ---------------------------------------------------------------------------------


async def test_thousand_401s_for_one_token_cause_one_refresh(h: Harness) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.provider.get)
        await h.advance(0.05)
    old = h.provider.token
    assert old is not None
    took = [h.provider.invalidate(old) for _ in range(TASKS)]
    assert took.count(True) == 1
    results = []
    async with anyio.create_task_group() as tg:

        async def retry() -> None:
            results.append(await h.provider.get())

        for _ in range(TASKS):
            tg.start_soon(retry)
        await h.advance(0.05)
    assert h.state.token_requests == 2 and h.state.count("refresh_token", "ok") == 1
    assert all(t is h.provider.token and t is not old for t in results)
    assert h.provider.invalidate(old) is False  # a late 401 for the old token changes nothing
    assert h.state.token_requests == 2


# --- refresh strategy -----------------------------------------------------------------------------


async def test_rejected_refresh_token_falls_back_to_one_login() -> None:
    h = Harness(lifetime=10.0)
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        h.state._refresh_tokens.clear()  # the server forgot every refresh token (e.g. a restart)
        h.provider.invalidate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.2)
        assert h.state.count("refresh_token", "invalid_grant") == 1
        assert h.state.count("password", "ok") == 2
        assert h.provider.stats.refresh_rejected == 1


@pytest.mark.parametrize("reuse_detection", [False, True])
async def test_rotating_refresh_tokens_never_reused_under_contention(reuse_detection: bool) -> None:
    """The refresh token is read inside the single flight: zero invalid_grant with single-use tokens."""
    h = Harness(lifetime=1.0, latency=0.03, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=reuse_detection))
    async with h.provider:
        rng = random.Random(3)

        async def worker() -> None:
            for _ in range(40):
                tok = await h.provider.get()
                await h.clock.sleep(rng.uniform(0.01, 0.2))
                if rng.random() < 0.05:
                    h.provider.invalidate(tok)  # a 401 arrives for whatever token was used

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(worker)
            await h.advance(20.0, step=0.02)
        assert h.state.count(outcome="invalid_grant") == 0 and h.state.count(outcome="reuse") == 0
        assert h.state.count("password") == 1  # one login, then refreshes only


async def test_refresh_answer_without_refresh_token_keeps_the_old_one() -> None:
    h = Harness(lifetime=1.0, quirks=Quirks(rotate_refresh_tokens=False, refresh_omits_refresh_token=True))
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        rt = h.provider.token.refresh_token
        for _ in range(5):
            h.provider.invalidate()
            async with anyio.create_task_group() as tg:
                tg.start_soon(h.provider.get)
                await h.advance(0.05)
        assert h.provider.token.refresh_token == rt
        assert h.state.count("refresh_token", "ok") == 5 and h.state.count("password") == 1


async def test_expired_refresh_token_goes_straight_to_login() -> None:
    h = Harness(lifetime=1.0, quirks=Quirks(extra_fields={"refresh_expires_in": 2}))
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        await h.advance(5.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        assert h.state.count("refresh_token") == 0 and h.state.count("password", "ok") == 2


# --- failures while still valid ---------------------------------------------------------------------


async def test_refresh_endpoint_answering_500_is_given_up_for_a_login() -> None:
    h = Harness(lifetime=20.0, retry=RetryPolicy(max_attempts=1))
    async with h.provider:
        await h.get()
        h.state.inject(*[Fault("status", status=500)] * 2)
        for _ in range(3):
            h.provider.invalidate()
            try:
                await h.get(advance=5.0)
            except TransientTokenError:
                pass
        assert h.state.counts["fault:status"] == 2 and h.state.count("password", "ok") == 2


async def test_failed_early_refresh_keeps_serving_valid_token_and_retries() -> None:
    h = Harness(lifetime=20.0, retry=RetryPolicy(max_attempts=1))
    async with h.provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(0.05)
        first = h.provider.token
        h.state.inject(*[Fault("status", status=503)] * 3)
        await h.advance(h.provider.refresh_at - h.clock.now + 0.01)
        served = 0
        while h.state.count("refresh_token", "ok") == 0 and h.clock.now < first.expires_at:
            done, value = completes_without_suspending(h.provider.get)
            assert done and value is first  # callers never see the background failures
            served += 1
            await h.advance(0.05)
        assert h.state.counts["fault:status"] == 3 and h.state.count("refresh_token", "ok") == 1
        assert h.state.count("password") == 1  # an outage is no reason to log in again
        assert h.provider.stats.failures == 3 and h.provider.token is not first
        assert h.clock.now < first.expires_at  # recovered before the old token ran out


async def test_callers_needing_a_token_see_the_transient_error() -> None:
    h = Harness(retry=RetryPolicy(max_attempts=2, base_delay=0.1))
    h.state.inject(*[Fault("status", status=503)] * 2)
    async with h.provider:
        results = []

        async def caller() -> None:
            try:
                await h.provider.get()
            except TransientTokenError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(caller)
            await h.advance(1.0)
        assert len(results) == 100 and h.state.counts["fault:status"] == 2
        # The next caller retries after a backoff and succeeds; no hammering in between.
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.provider.get)
            await h.advance(2.0)
        assert h.state.count("password", "ok") == 1


# --- cancellation and closing --------------------------------------------------------------------


async def test_cancelled_waiters_do_not_cancel_the_shared_request(h: Harness) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(h.provider.get)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert h.provider.token is None
    await h.advance(0.05)  # the request finishes anyway
    assert h.provider.token is not None and h.state.token_requests == 1
    done, tok = completes_without_suspending(h.provider.get)
    assert done and tok is h.provider.token


async def test_closing_the_provider_wakes_waiters_and_cancels_background_work() -> None:
    h = Harness()
    errors = []
    async with anyio.create_task_group() as outer:

        async def caller() -> None:
            try:
                await h.provider.get()
            except ProviderClosed as exc:
                errors.append(exc)

        async with h.provider:
            for _ in range(100):
                outer.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
        # leaving the provider cancelled the request in flight
    assert len(errors) == 100
    with pytest.raises(ProviderClosed):
        await h.provider.get()


async def test_body_exception_is_not_wrapped_in_a_group() -> None:
    h = Harness()
    with pytest.raises(KeyError):
        async with h.provider:
            raise KeyError("mine")


# --- never past expiry -----------------------------------------------------------------------------


async def test_no_token_is_ever_handed_out_past_its_expiry() -> None:
    h = Harness(lifetime=0.5, latency=0.04)
    async with h.provider:
        bad = 0
        calls = 0
        rng = random.Random(11)

        async def worker() -> None:
            nonlocal bad, calls
            end = h.clock.now + 40.0
            while h.clock.now < end:
                tok = await h.provider.get()
                calls += 1
                if h.clock.now >= tok.expires_at:
                    bad += 1
                await h.clock.sleep(rng.choice([0.001, 0.01, 0.1, 0.3]))

        async with anyio.create_task_group() as tg:
            for _ in range(300):
                tg.start_soon(worker)
            await h.advance(45, step=0.02)
        assert calls > 300 * 100 and bad == 0


# --- store and hooks ----------------------------------------------------------------------------------


async def test_file_store_lets_a_restart_skip_the_login(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    h = Harness(lifetime=600.0, store=FileTokenStore(path))
    async with h.provider, anyio.create_task_group() as tg:
        tg.start_soon(h.provider.get)
        await h.advance(0.05)
    # Closing waited for the store write (it runs in a worker thread).
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    raw = path.read_text()
    assert h.state.password not in raw  # the password is never stored

    again = TokenProvider(h.config, endpoint=h.endpoint, clock=h.clock, store=FileTokenStore(path))
    async with again:
        done, tok = completes_without_suspending(again.get)
        assert done and tok.access_token == h.provider.token.access_token
        assert again.stats.restored == 1 and h.state.token_requests == 1

    h.clock.advance(700)  # access token expired; the stored refresh token still works
    third = TokenProvider(h.config, endpoint=h.endpoint, clock=h.clock, store=FileTokenStore(path))
    async with third, anyio.create_task_group() as tg:
        tg.start_soon(third.get)
        await h.advance(0.05)
    assert h.state.count("refresh_token", "ok") == 1 and h.state.count("password") == 1


async def test_on_token_hook_sees_every_new_token_and_its_errors_are_contained(caplog) -> None:
    events: list[TokenEvent] = []

    def hook(event: TokenEvent) -> None:
        events.append(event)
        if len(events) == 1:
            raise RuntimeError("hook bug")

    h = Harness(on_token=hook, store=MemoryTokenStore())
    async with h.provider:
        for _ in range(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(h.provider.get)
                await h.advance(0.05)
            h.provider.invalidate()
        assert [e.source for e in events] == ["password", "refresh_token", "refresh_token"]
    assert "on_token hook failed" in caplog.text


async def test_logs_never_contain_secrets(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="oauthpw_async")
    h = Harness(lifetime=1.0)
    h.state.inject(Fault("status", status=503), Fault("status", status=500))  # an HTML 200 to a login is definitive
    async with h.provider:
        for _ in range(4):
            async with anyio.create_task_group() as tg:

                async def get() -> None:
                    try:
                        await h.provider.get()
                    except Exception:
                        pass

                tg.start_soon(get)
                await h.advance(1.0)
            h.provider.invalidate()
        tok: Token | None = h.provider.token
    assert tok is not None and caplog.records
    for secret in (h.state.password, h.state.client_secret, tok.access_token.reveal(), tok.refresh_token.reveal()):
        assert secret not in caplog.text
    assert "sha256" not in repr(h.provider.stats)


async def test_disabled_tls_verification_is_warned_about_once_per_provider(caplog) -> None:
    h = Harness()
    insecure = PasswordGrantConfig(
        access_token_url=URL, username="u", password="p", client_id="c", client_secret="s", verify_tls=False
    )
    with caplog.at_level(logging.WARNING, logger="oauthpw_async.provider"):
        async with h.provider:
            pass
        assert "verify_tls" not in caplog.text  # verification on: no warning
        tokens = TokenProvider(insecure, endpoint=h.endpoint, clock=h.clock)
        for _ in range(3):
            async with tokens:
                tokens.reset(insecure)
        other = TokenProvider(insecure, endpoint=h.endpoint, clock=h.clock)
        async with other:
            pass
    warnings = [r for r in caplog.records if "verify_tls = false" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert "auth.example.com" in warnings[0].getMessage() and "ca_bundle" in warnings[0].getMessage()
