"""The fleet's login budget counts unconfirmed logins: a token re-arms it for every process (real Redis)."""

from __future__ import annotations

import contextlib

import pytest

from oauthpw_async import LoginBudgetExhausted, RefreshPolicy, RetryPolicy, TokenError, TokenProvider
from oauthpw_async.fleet import Coordinator
from oauthpw_async.testing import AuthServerState, InMemoryEndpoint, Quirks, Reply

from .helpers import TOKEN_KEY, config_for, coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

#: No backoff between failed renewals and no waiting out a spent budget: each get() is one renewal.
NO_WAITS = RefreshPolicy(pause_wait=0.0, backoff=RetryPolicy(max_attempts=1_000_000, base_delay=0.0, max_delay=0.0))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_confirmed_login_re_arms_the_fleets_budget_and_allows_more_for_a_window(
    redis_server: RedisServer, namespace: str
) -> None:
    async with (
        coordinator(redis_server.url, namespace, login_limit=2, login_window=60.0) as a,
        coordinator(redis_server.url, namespace, login_limit=2, login_window=60.0) as b,
    ):
        assert await a.logins.take() == 0.0 and await b.logins.take() == 0.0
        assert await a.logins.take() > 0  # two unconfirmed logins: the strict bound is spent
        await b.logins.confirm()  # one process got a token: every process may log in again
        assert await a.logins.used() == 0
        after = a.logins.rule.max_after_success
        assert after > 2 and await a.logins.current_limit() == after
        assert [await a.logins.take() for _ in range(after)] == [0.0] * after
        assert await b.logins.take() > 0  # still bounded within the window
        await a.logins.reset()
        assert await a.logins.used() == 0 and await a.logins.current_limit() == 2


class LoginsOnly(AuthServerState):
    """No refresh tokens: every renewal is a password login; ``down`` answers them with a 500."""

    down = False

    def _login(self, form: dict[str, str]) -> tuple[Reply, str, str]:  # type: ignore[override]
        if self.down:
            return Reply(500, b"Internal Server Error", {"content-type": "text/plain"}), "password", "down"
        return super()._login(form)


async def test_renewing_by_login_in_a_fleet_never_spends_the_budget_but_failures_do(
    redis_server: RedisServer, namespace: str
) -> None:
    state = LoginsOnly(quirks=Quirks(issue_refresh_token=False))
    config = config_for(state)
    async with contextlib.AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(
            Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace, login_limit=2)
        )
        tokens = await stack.enter_async_context(
            TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet, refresh=NO_WAITS)
        )
        for _ in range(12):  # six times the fleet's limit of 2
            token = await tokens.get()
            tokens.invalidate(token)
        assert state.count("password", "ok") == 12 and await fleet.logins.used() == 0
        state.down = True  # the password changed and the server answers logins like an outage
        sent = 0
        for _ in range(40):
            with contextlib.suppress(TokenError):
                await tokens.get()
            sent = state.count("password", "down")
            if sent >= fleet.logins.rule.max_after_success:
                break
        assert sent == fleet.logins.rule.max_after_success
        with pytest.raises(LoginBudgetExhausted):
            await tokens.get()
    assert state.count("password", "down") == fleet.logins.rule.max_after_success
