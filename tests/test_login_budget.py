"""The login budget counts unconfirmed logins, never a healthy crawl's renewals, and callers wait out a pause.

A source without refresh tokens renews every token by a password login: those logins answer
with a token, so they never spend the budget, however short the tokens. What the budget bounds
is logins whose answer was no token (a 5xx, a 429, a lost connection, a sign-in page): a wrong
password answered like an outage. Fake clock throughout; the crawl goes over real HTTP.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
from collections.abc import Mapping
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import (
    LoginBudget,
    LoginBudgetExhausted,
    RefreshPolicy,
    TokenEndpointRateLimited,
    TokenError,
    TokenProvider,
)
from oauthpw_async.crawler import Crawler, Cursor, ListSink, Partition
from oauthpw_async.login_budget import LoginLedger
from oauthpw_async.retry import RetryPolicy
from oauthpw_async.testing import AuthServerState, FakeClock, LocalServer, Quirks, Reply
from oauthpw_async.testing.api import DemoAPI

from .test_lockout import WINDOW, Rig, raises_at_once

pytestmark = pytest.mark.anyio

NO_REFRESH = Quirks(issue_refresh_token=False)


# --- a 20-minute crawl with 30-second tokens, no refresh tokens, and a flaky token endpoint --------------------


class Flaky(AuthServerState):
    """Answers every third token request with a 503, as a token endpoint in a bad patch does."""

    calls = 0

    def handle_token(self, headers: Mapping[str, str], body: bytes) -> Reply:
        self.calls += 1
        if self.calls % 3 == 0:
            self.counts["injected:503"] += 1
            return Reply(503, b"Service Unavailable", {"content-type": "text/plain"})
        return super().handle_token(headers, body)


class Items(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self) -> list[Partition]:
        return [Partition(p, {"project": p, "limit": "5"}) for p in ("alpha", "beta", "gamma")]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_long_crawl_with_short_tokens_and_no_refresh_token_never_fails() -> None:
    clock = FakeClock()
    api = DemoAPI(per_project=2000, max_page_size=5)  # 1,200 pages at 1 request/s: a 20-minute crawl
    state = Flaky(token_lifetime=30.0, clock=clock.monotonic, quirks=NO_REFRESH)
    async with clock.autojump(), LocalServer(state, api=api) as server:
        started = clock.now
        async with TokenProvider(server.config(), clock=clock, rng=random.Random(1)) as tokens:
            sink = ListSink()
            stats = await Items(base_url=server.base_url).crawl(tokens, sink, concurrency=4, rate=1.0)
    assert clock.now - started >= 1199  # 1,200 requests, one a second
    assert stats.complete and {r["id"] for r in sink.records} == api.expected_ids()
    assert stats.retries == 0 and stats.unauthorized == 0  # no API request failed, none was refused
    # Every renewal was a password login, far more than the strict budget, and the endpoint kept failing.
    assert tokens.stats.refreshes == 0 and state.count("password", "ok") >= 40
    assert state.counts["injected:503"] >= 20 and tokens.stats.login_requests > state.count("password", "ok")


# --- a server that answers logins with anything: never more unconfirmed logins than documented --------------

ANSWERS: dict[str, Reply | None] = {
    "ok": None,
    "500": Reply(500, b"Internal Server Error", {"content-type": "text/plain"}),
    "503": Reply(503, b"Service Unavailable", {"content-type": "text/plain"}),
    "429": Reply(429, b"Too Many Requests", {"content-type": "text/plain", "retry-after": "5"}),
    "drop": Reply(0, drop=True),
    "429-long": Reply(429, b"slow down", {"content-type": "text/plain", "retry-after": "400"}),
    "sign-in-page": Reply(200, b"<html><body>Sign in</body></html>", {"content-type": "text/html"}),
}


class Answers(AuthServerState):
    """Answers password logins in the given order; once they run out, a 500 to each (a wrong password)."""

    def __init__(self, answers: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.answers = collections.deque(answers)
        self.answered: list[str] = []

    def _login(self, form: Mapping[str, str]) -> tuple[Reply, str, str]:
        name = self.answers.popleft() if self.answers else "500"
        self.answered.append(name)
        reply = ANSWERS[name]
        if reply is None:
            return super()._login(form)
        return attrs.evolve(reply), "password", name


def unconfirmed_in_windows(times: list[float], answers: list[str], since: float) -> int:
    """The most unconfirmed login requests sent at or after ``since`` and after the last success, in any window."""
    worst = 0
    for i, (t, _) in enumerate(zip(times, answers, strict=True)):
        last_ok = max((times[j] for j in range(i) if answers[j] == "ok"), default=-1.0)
        n = sum(
            1
            for j in range(i + 1)
            if answers[j] != "ok" and times[j] >= since and times[j] > last_ok and times[j] > t - WINDOW
        )
        worst = max(worst, n)
    return worst


@pytest.mark.parametrize("anyio_backend", ["trio"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=st.lists(st.sampled_from(sorted(ANSWERS)), max_size=30))
async def test_unconfirmed_logins_stay_within_the_documented_bound(answers: list[str]) -> None:
    clock = FakeClock()
    state = Answers(answers, token_lifetime=30.0, latency=0.05, clock=clock.monotonic, quirks=NO_REFRESH)
    budget = LoginBudget(max_logins=3, window=WINDOW, max_after_success=8)
    r = Rig(state, clock, budget=budget, pause_wait=0.0)
    async with r.provider:
        finished = 0

        async def caller(seed: int) -> None:
            nonlocal finished
            rng = random.Random(seed)
            while clock.now < 1000.0 + 2 * WINDOW:
                try:
                    await r.provider.get()
                except TokenError:
                    pass
                await clock.sleep(rng.uniform(5.0, 40.0))
            finished += 1

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(caller, i)
            await r.advance(2 * WINDOW + 60)
            # A get() may still wait out a backoff (up to the retry policy's max_wait) that began
            # near the end: the clock goes on until every caller is back, within a bound.
            for _ in range(20):
                if finished == 3:
                    break
                await r.advance(60)
            assert finished == 3, "a get() was still waiting 20 minutes after the last call began"
    times = r.endpoint.times("password")
    assert len(times) == len(state.answered) == r.provider.stats.login_requests
    oks = [t for t, a in zip(times, state.answered, strict=True) if a == "ok"]
    if not oks:  # a password never confirmed: the strict bound, every window
        assert unconfirmed_in_windows(times, state.answered, since=-1.0) <= budget.max_logins
    else:  # after a success, more; a window past the last success: the strict bound again
        assert unconfirmed_in_windows(times, state.answered, since=-1.0) <= budget.max_after_success
        assert unconfirmed_in_windows(times, state.answered, since=oks[-1] + WINDOW) <= budget.max_logins
    if "sign-in-page" in state.answered:  # a 2xx that is no token is definitive: nothing is sent after it
        assert state.answered[-1] == "sign-in-page"


@pytest.mark.parametrize("anyio_backend", ["trio"])  # many fake-clock steps: trio settles them fastest
async def test_a_wrong_password_answered_like_an_outage_costs_at_most_the_budget_after_a_success() -> None:
    clock = FakeClock()
    state = Answers(["ok"], token_lifetime=30.0, latency=0.05, clock=clock.monotonic, quirks=NO_REFRESH)
    budget = LoginBudget(max_logins=3, window=WINDOW, max_after_success=8)
    r = Rig(state, clock, budget=budget, pause_wait=0.0)
    async with r.provider:
        await r.get()
        r.provider.invalidate()  # the password was changed on the server; it answers 500 from now on

        async def caller() -> None:
            for pause in [1.0] * 60 + [40.0] * 40:  # calls often at first, then now and then
                try:
                    await r.provider.get()
                except TokenError:
                    pass
                await clock.sleep(pause)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await r.advance(2000.0)
    assert state.answered.count("ok") == 1
    times = r.endpoint.times("password")
    assert unconfirmed_in_windows(times, state.answered, since=-1.0) == budget.max_after_success
    # The first renewal retries quickly (a blip); after it, one request per renewal, with growing waits.
    gaps = [b - a for a, b in itertools.pairwise(times[4 : budget.max_after_success + 1])]
    assert len(gaps) == 4 and gaps[-1] > 2 * gaps[0] and gaps[-1] >= 2.0


# --- callers wait out a pause instead of failing ----------------------------------------------------------------


async def test_callers_wait_out_a_spent_budget_and_get_a_token(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    state = Answers(["500"] * 3 + ["ok"] * 5, token_lifetime=300.0, latency=0.05, clock=clock.monotonic)
    r = Rig(state, clock, pause_wait=WINDOW + 60)
    caplog.set_level(logging.WARNING, "oauthpw_async.provider")
    async with r.provider:
        with pytest.raises(TokenError, match="HTTP 500"):  # the caller of the failed login hears of it
            await r.get(advance=5.0)
        got: list[float] = []
        failed: list[BaseException] = []

        async def caller() -> None:
            try:
                await r.provider.get()
            except Exception as exc:
                failed.append(exc)
            got.append(clock.now)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
            await r.advance(60.0)
            paused = r.provider.paused
            assert isinstance(paused, LoginBudgetExhausted) and not got  # waiting, and why
            await r.advance(WINDOW)
    assert not failed and len(got) == 20 and min(got) >= r.endpoint.times("password")[0] + WINDOW
    assert state.answered == ["500"] * 3 + ["ok"] and r.provider.paused is None
    waits = [m.getMessage() for m in caplog.records if "waiting" in m.getMessage()]
    assert len(waits) == 1 and "login budget is spent" in waits[0] and "next attempt at" in waits[0]


async def test_past_its_deadline_a_caller_gets_the_typed_error_at_once() -> None:
    clock = FakeClock()
    state = Answers(["500"] * 3 + ["ok"], token_lifetime=300.0, latency=0.05, clock=clock.monotonic)
    r = Rig(state, clock, pause_wait=60.0)  # shorter than what the budget needs
    async with r.provider:
        with pytest.raises(TokenError, match="HTTP 500"):
            await r.get(advance=60.0)
        exc = raises_at_once(r.provider.get)
        assert isinstance(exc, LoginBudgetExhausted) and exc.resume_in > 60.0


async def test_callers_wait_out_a_long_rate_limit_of_the_token_endpoint() -> None:
    clock = FakeClock()
    state = Answers(["429-long", "ok"], token_lifetime=300.0, latency=0.05, clock=clock.monotonic)
    r = Rig(state, clock, pause_wait=900.0)
    async with r.provider:
        result: list[Any] = []

        async def caller() -> None:
            result.append(await r.provider.get())

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await r.advance(10.0)
            assert isinstance(r.provider.paused, TokenEndpointRateLimited) and not result
            await r.advance(400.0)
    assert result and state.answered == ["429-long", "ok"]
    (first, _), (second, _) = r.endpoint.log
    assert second - first >= 400


def test_pause_wait_is_validated() -> None:
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(ValueError, match="pause_wait"):
            RefreshPolicy(pause_wait=bad)  # type: ignore[arg-type]


def test_a_logins_retries_never_pass_the_budget_and_after_a_failure_are_one_request() -> None:
    clock = FakeClock()
    ledger = LoginLedger(LoginBudget(max_logins=3, window=WINDOW, max_after_success=3))
    retry = RetryPolicy(max_attempts=4)
    assert ledger.policy(retry, clock.now, clock).max_attempts == 3  # no more attempts than the budget has left
    ledger.sent(clock.now)
    # An earlier login got no token: one request, the next one after the renewal backoff.
    assert ledger.policy(retry, clock.now, clock).max_attempts == 1
    ledger.sent(clock.now)
    ledger.sent(clock.now)
    with pytest.raises(LoginBudgetExhausted) as spent:
        ledger.policy(retry, clock.now, clock)
    assert spent.value.retry_after == WINDOW and spent.value.retry_at == clock.wall() + WINDOW
    with pytest.raises(LoginBudgetExhausted):
        ledger.check(clock.now, clock)
    ledger.confirmed(clock.now)  # a token: the budget is re-armed
    ledger.check(clock.now, clock)
    assert ledger.policy(retry, clock.now, clock).max_attempts == 3
    assert ledger.policy(RetryPolicy(max_attempts=2), clock.now, clock).max_attempts == 2
