"""No account lockout and no request inside a server's rate-limit window, whatever the server answers.

A server that answers a wrong password with a 500, a 429, a 200 HTML page or a 200
``{"success": false}`` cannot be told from an outage: the login budget caps password login
requests per window instead. Fake clock, in-memory server, asyncio and trio.
"""

from __future__ import annotations

import collections
import email.utils
import math
import random
from collections.abc import Mapping
from typing import Any

import anyio
import attrs
import pytest

from oauthpw_async import (
    LoginBudget,
    LoginBudgetExhausted,
    PasswordGrantConfig,
    RefreshPolicy,
    RetryPolicy,
    Token,
    TokenEndpointRateLimited,
    TokenError,
    TokenProvider,
    TokenRequestsPaused,
    TransientTokenError,
    exchange,
)
from oauthpw_async.exchange import TOKEN_RETRY
from oauthpw_async.grant import TokenRequest, TokenResponse, build_password_request, parse_token_response
from oauthpw_async.testing import AuthServerState, FakeClock, InMemoryEndpoint, Quirks, Reply

pytestmark = pytest.mark.anyio

URL = "https://auth.example.com/oauth/token"
WINDOW = 600.0
BUDGET = 3
YEAR = 365 * 86400.0


class HostileLogins(AuthServerState):
    """Answers every password login with one fixed reply; everything else as usual."""

    def __init__(self, reply: Reply, **kw: Any) -> None:
        super().__init__(**kw)
        self.reply = reply

    def _login(self, form: Mapping[str, str]) -> tuple[Reply, str, str]:
        return attrs.evolve(self.reply), "password", "hostile"


class Scripted(AuthServerState):
    """Answers the next token requests with the given replies, then as usual."""

    def __init__(self, *replies: Reply, **kw: Any) -> None:
        super().__init__(**kw)
        self.script = collections.deque(replies)

    def handle_token(self, headers: Mapping[str, str], body: bytes) -> Reply:
        if self.script:
            self.counts["scripted"] += 1
            return attrs.evolve(self.script.popleft())
        return super().handle_token(headers, body)


class Recorder(InMemoryEndpoint):
    """Records when each token request was sent, and its grant."""

    def __init__(self, state: AuthServerState, clock: FakeClock) -> None:
        super().__init__(state, clock)
        self.log: list[tuple[float, str]] = []

    async def send(self, request: TokenRequest) -> TokenResponse:
        self.log.append((self.clock.monotonic(), request.grant))
        return await super().send(request)

    def times(self, grant: str) -> list[float]:
        return [t for t, g in self.log if g == grant]


class Rig:
    def __init__(
        self,
        state: AuthServerState,
        clock: FakeClock,
        *,
        budget: LoginBudget | None = None,
        retry: RetryPolicy = TOKEN_RETRY,
        backoff: RetryPolicy | None = None,
        pause_wait: float = 0.0,
        **kw: Any,
    ) -> None:
        self.clock = clock
        self.state = state
        self.endpoint = Recorder(state, clock)
        self.config = PasswordGrantConfig(
            access_token_url=URL,
            client_id=state.client_id,
            client_secret=state.client_secret,
            username=state.username,
            password=state.password,
        )
        policy = RefreshPolicy(
            login_budget=budget or LoginBudget(max_logins=BUDGET, window=WINDOW), pause_wait=pause_wait
        )
        if backoff is not None:
            policy = attrs.evolve(policy, backoff=backoff)
        self.provider = TokenProvider(
            self.config, endpoint=self.endpoint, clock=clock, rng=random.Random(5), refresh=policy, retry=retry, **kw
        )

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Move the fake clock on, letting every task run until it blocks at each stop."""
        target = self.clock.now + seconds
        if step is not None:
            while self.clock.now + step < target:
                self.clock.advance(step)
                await settle()
        while True:
            await settle()
            nxt = self.clock.next_deadline()
            if nxt is None or nxt > target:
                break
            self.clock.advance(max(0.0, nxt - self.clock.now))
        self.clock.advance(max(0.0, target - self.clock.now))
        await settle()

    async def get(self, advance: float = 0.1) -> Token:
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


async def settle() -> None:
    # A few scheduler turns first: asyncio's wait_all_tasks_blocked sleeps 0.1 s of real time
    # whenever it finds a task that is ready to run.
    for _ in range(10):
        await anyio.lowlevel.checkpoint()
    await anyio.wait_all_tasks_blocked()


def rig(state_cls: type[AuthServerState] = AuthServerState, *args: Any, **kw: Any) -> Rig:
    clock = FakeClock()
    lifetime = kw.pop("lifetime", 60.0)
    quirks = kw.pop("quirks", None)
    state = state_cls(*args, token_lifetime=lifetime, latency=0.05, clock=clock.monotonic, quirks=quirks)
    return Rig(state, clock, **kw)


def raises_at_once(make: Any) -> BaseException:
    """Run a coroutine one step: it must raise without awaiting anything (no request, no wait)."""
    coro = make()
    try:
        coro.send(None)
    except StopIteration:
        pytest.fail("returned a token")
    except Exception as exc:
        return exc
    coro.close()
    pytest.fail("suspended instead of failing at once")


def in_window(times: list[float], start: float, length: float = WINDOW) -> int:
    return sum(1 for t in times if start <= t < start + length)


# --- the login budget -------------------------------------------------------------------------------

HOSTILE = {
    "500": Reply(500, b"Internal Server Error", {"content-type": "text/plain"}),
    "429": Reply(429, b"Too Many Requests", {"content-type": "text/plain"}),
    "drop": Reply(0, drop=True),
    "timeout": Reply(0, drop=True, delay=30.0),  # the answer never comes; the transport times out
}
#: 2xx answers to a login that hold no token: definitive at once, so not even the budget is used.
NO_TOKEN_2XX = {
    "html-200": Reply(200, b"<html><body>Sign in to continue</body></html>", {"content-type": "text/html"}),
    "success-false-200": Reply(200, b'{"success": false}', {"content-type": "application/json"}),
}


@pytest.mark.parametrize("answer", sorted(NO_TOKEN_2XX))
async def test_a_login_answered_2xx_without_a_token_is_sent_once(answer: str) -> None:
    r = rig(HostileLogins, NO_TOKEN_2XX[answer])
    errors: collections.Counter[str] = collections.Counter()
    async with r.provider:
        end = r.clock.now + 2 * WINDOW

        async def caller(seed: int) -> None:
            rng = random.Random(seed)
            while r.clock.now < end:
                try:
                    await r.provider.get()
                except TokenError as exc:
                    errors[type(exc).__name__] += 1
                await r.clock.sleep(rng.uniform(20.0, 60.0))

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(caller, i)
            await r.advance(2 * WINDOW + 60, step=2.0)

    assert len(r.endpoint.times("password")) == 1 == len(r.endpoint.log)
    assert set(errors) == {"LoginResponseError"} and errors["LoginResponseError"] > 1000


@pytest.mark.parametrize("answer", sorted(HOSTILE))
async def test_login_budget_holds_whatever_the_server_answers(answer: str) -> None:
    r = rig(HostileLogins, HOSTILE[answer])
    errors: collections.Counter[str] = collections.Counter()
    first_budget_error: list[tuple[float, LoginBudgetExhausted]] = []
    async with r.provider:
        end = r.clock.now + 2 * WINDOW + 60

        async def caller(seed: int) -> None:
            rng = random.Random(seed)
            while r.clock.now < end:
                try:
                    await r.provider.get()
                except TokenError as exc:
                    errors[type(exc).__name__] += 1
                    if isinstance(exc, LoginBudgetExhausted) and not first_budget_error:
                        first_budget_error.append((r.clock.now, exc))
                await r.clock.sleep(rng.uniform(20.0, 60.0))

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(caller, i)
            await r.advance(2 * WINDOW + 300, step=2.0)

    logins = r.endpoint.times("password")
    assert logins and len(logins) == len(r.endpoint.log)  # nothing but logins was ever sent
    first = logins[0]
    # Every request counts (the token-request retries too): never more than the budget in any window...
    assert all(later - earlier >= WINDOW for earlier, later in zip(logins, logins[BUDGET:], strict=False))
    assert in_window(logins, first) == BUDGET
    # ... and exactly the budget again once the window has passed.
    assert in_window(logins, first + WINDOW) == BUDGET
    # Everyone else was told at once, without a request, when logins resume.
    assert errors["LoginBudgetExhausted"] > 1000
    at, exc = first_budget_error[0]
    assert exc.retry_at == pytest.approx(r.clock.wall() - r.clock.now + first + WINDOW)
    assert exc.resume_in == pytest.approx(first + WINDOW - at)
    assert isinstance(exc, TransientTokenError) and "no login is sent" in str(exc)


async def test_successful_logins_re_arm_the_budget_and_refreshes_are_not_counted() -> None:
    r = rig(quirks=Quirks(issue_refresh_token=False))  # every renewal is a password login
    async with r.provider:
        for _ in range(10 * BUDGET):  # ten times the budget, well inside one window
            await r.get()
            r.provider.invalidate()
        assert r.state.count("password", "ok") == 10 * BUDGET == r.provider.stats.login_requests
        assert r.clock.now - r.endpoint.times("password")[0] < WINDOW

    r = rig()  # with refresh tokens: one login, then any number of refreshes
    async with r.provider:
        await r.get()
        for _ in range(50):
            r.provider.invalidate()
            await r.get()
        assert r.state.count("refresh_token", "ok") == 50 and r.state.count("password") == 1


class TurnsHostile(AuthServerState):
    """Answers password logins as usual until :attr:`hostile` is set, then with that reply."""

    hostile: Reply | None = None

    def _login(self, form: Mapping[str, str]) -> tuple[Reply, str, str]:
        if self.hostile is not None:
            return attrs.evolve(self.hostile), "password", "hostile"
        return super()._login(form)


async def test_a_rejected_refresh_token_falls_back_to_a_login_only_within_the_budget() -> None:
    # The refresh is tried (it is not counted); the login it falls back to is, while unconfirmed.
    r = rig(TurnsHostile, budget=LoginBudget(max_logins=1, window=WINDOW, max_after_success=1))
    assert isinstance(r.state, TurnsHostile)
    async with r.provider:
        await r.get()
        r.state._refresh_tokens.clear()  # the server forgot every refresh token...
        r.state.hostile = HOSTILE["500"]  # ... and answers logins with a 500
        r.provider.invalidate()
        with pytest.raises(TransientTokenError, match="HTTP 500"):
            await r.get()
        assert isinstance(raises_at_once(r.provider.get), LoginBudgetExhausted)  # the dead refresh token is not retried
        assert r.state.count("refresh_token", "invalid_grant") == 1
        assert r.state.count("password", "ok") == 1 and r.state.count("password", "hostile") == 1


def test_login_budget_is_validated() -> None:
    bads = [{"max_logins": 0}, {"max_logins": True}, {"window": -1.0}, {"window": math.inf}, {"max_after_success": 0}]
    for bad in bads:
        with pytest.raises(ValueError, match=r"max_logins|window|max_after_success"):
            LoginBudget(**bad)  # type: ignore[arg-type]


# --- rate-limit windows -----------------------------------------------------------------------------


def rate_limit_headers(kind: str, seconds: float, now_wall: float) -> dict[str, str]:
    if kind == "retry-after-seconds":
        return {"retry-after": str(int(seconds))}
    if kind == "retry-after-date":
        return {"retry-after": email.utils.formatdate(now_wall + seconds, usegmt=True)}
    if kind == "x-ratelimit-reset":
        return {"x-ratelimit-reset": str(int(now_wall + seconds))}
    if kind == "x-rate-limit-reset-ms":
        return {"x-rate-limit-reset": str(int((now_wall + seconds) * 1000))}
    assert kind == "ratelimit-reset"
    return {"ratelimit-reset": str(int(seconds))}


KINDS = ["retry-after-seconds", "retry-after-date", "x-ratelimit-reset", "x-rate-limit-reset-ms", "ratelimit-reset"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_year_long_rate_limit_fails_fast_and_one_login_follows_it(kind: str) -> None:
    clock = FakeClock()
    headers = {"content-type": "text/plain", **rate_limit_headers(kind, YEAR, clock.wall())}
    state = Scripted(Reply(429, b"slow down", headers), clock=clock.monotonic)
    r = Rig(state, clock)
    async with r.provider:
        with pytest.raises(TokenEndpointRateLimited) as info:
            await r.get()
        assert info.value.status == 429 and info.value.resume_in == pytest.approx(YEAR, abs=1.0)
        assert info.value.retry_at == pytest.approx(clock.wall() + YEAR, abs=1.0)
        # Every later call fails at once (no request, no wait) and says when the server accepts requests.
        for _ in range(52):
            for _ in range(20):
                exc = raises_at_once(r.provider.get)
                assert isinstance(exc, TokenEndpointRateLimited)
                assert exc.retry_at == pytest.approx(info.value.retry_at, abs=1.0)
            r.provider.invalidate()
            await r.advance(YEAR / 53)
        assert len(r.endpoint.log) == 1
        await r.advance(YEAR / 53 + 5)
        assert await r.get() and len(r.endpoint.log) == 2 and state.count("password", "ok") == 1


async def test_no_refresh_inside_a_short_rate_limit_window_even_for_an_expiring_token() -> None:
    clock = FakeClock()
    state = Scripted(clock=clock.monotonic, token_lifetime=100.0, latency=0.05)
    r = Rig(state, clock, retry=RetryPolicy(max_attempts=1))
    async with r.provider:
        await r.get()
        state.script.append(Reply(429, b"", {"retry-after": "60"}))
        served: list[tuple[float, Token]] = []

        end = clock.now + 190.0

        async def caller() -> None:
            while clock.now < end:
                token = await r.provider.get()  # an error here fails the test
                served.append((clock.now, token))
                await clock.sleep(1.0)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(caller)
            await r.advance(200.0, step=0.5)
    (refused_at, _), (next_at, grant) = r.endpoint.log[1], r.endpoint.log[2]
    assert state.counts["scripted"] == 1 and grant == "refresh_token"
    # The old token ran out inside the window: callers waited for the window's end (it is
    # shorter than max_wait) instead of getting an error, and no request was sent inside it.
    assert next_at >= refused_at + 60
    assert next_at > r.endpoint.times("password")[0] + 95  # the first token had expired by then
    assert len(served) > 50 * 150 and all(now < token.expires_at for now, token in served)
    assert r.provider.stats.waits > 1 and state.count("password") == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_exchange_waits_at_least_the_servers_window(kind: str) -> None:
    clock = FakeClock()
    state = Scripted(Reply(429, b"", rate_limit_headers(kind, 30, clock.wall())), clock=clock.monotonic)
    r = Rig(state, clock)
    request = build_password_request(r.config)
    result: list[Token] = []

    async def run() -> None:
        result.append(
            await exchange(
                r.endpoint, request, lambda resp, sent: parse_token_response(r.config, request, resp, sent), clock=clock
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await r.advance(60.0)
    (first, _), (second, _) = r.endpoint.log
    assert result and second - first >= 30


async def test_a_renewal_backoff_longer_than_max_wait_fails_fast() -> None:
    clock = FakeClock()
    state = Scripted(Reply(503, b"down"), clock=clock.monotonic)
    slow = RetryPolicy(base_delay=300.0, max_delay=300.0, jitter=0.0)
    r = Rig(state, clock, retry=RetryPolicy(max_attempts=1, max_wait=120.0), backoff=slow)
    async with r.provider:
        with pytest.raises(TransientTokenError, match="HTTP 503"):
            await r.get()
        exc = raises_at_once(r.provider.get)
        assert type(exc) is TokenRequestsPaused and exc.resume_in == pytest.approx(300.0, abs=0.2)
        await r.advance(300.0)
        assert await r.get() and len(r.endpoint.log) == 2
