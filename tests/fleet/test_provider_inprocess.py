"""TokenProvider with a coordinator, several providers in one process (asyncio and trio): the same
rules as across processes, with an in-memory authorization server and a real Redis."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from oauthpw_async import CredentialsLockedOut, InvalidCredentials, PasswordGrantConfig, TokenProvider
from oauthpw_async.fleet import Coordinator, CoordinatorUnavailable
from oauthpw_async.testing import AuthServerState, InMemoryEndpoint, Quirks

from .helpers import config_for, coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

N = 5


def strict_state() -> AuthServerState:
    return AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))


def fleet_for(url: str, namespace: str, config: PasswordGrantConfig, **options: object) -> Coordinator:
    return coordinator(url, namespace, credential_key=config.credential_key, **options)


async def test_providers_of_a_fleet_share_one_login_and_one_refresh(redis_server: RedisServer, namespace: str) -> None:
    state = strict_state()
    config = config_for(state)
    async with contextlib.AsyncExitStack() as stack:
        providers = []
        for _ in range(N):
            fleet = await stack.enter_async_context(fleet_for(redis_server.url, namespace, config))
            providers.append(
                await stack.enter_async_context(
                    TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet)
                )
            )
        tokens = []
        async with anyio.create_task_group() as tg:
            for p in providers:
                for _ in range(20):

                    async def get(p: TokenProvider = p) -> None:
                        tokens.append((await p.get()).access_token.reveal())

                    tg.start_soon(get)
        assert len(set(tokens)) == 1 and state.count("password") == 1
        # A 401 in every process for the same token: one refresh for the fleet, nobody reuses anything.
        for p in providers:
            p.invalidate(p.token)
        renewed = [(await p.get()).access_token.reveal() for p in providers]
        assert len(set(renewed)) == 1 and renewed[0] != tokens[0]
        assert state.count("refresh_token", "ok") == 1 and state.count("refresh_token", "reuse") == 0
        assert sum(p.stats.token_requests for p in providers) == 2
        assert sum(p.stats.adopted for p in providers) >= 2 * (N - 1)


async def test_a_rejected_password_stops_every_provider_until_one_is_reset(
    redis_server: RedisServer, namespace: str
) -> None:
    state = strict_state()
    bad = config_for(state, password="wrong password")
    async with (
        fleet_for(redis_server.url, namespace, bad) as fa,
        fleet_for(redis_server.url, namespace, bad) as fb,
        TokenProvider(bad, endpoint=InMemoryEndpoint(state), coordinator=fa) as a,
        TokenProvider(bad, endpoint=InMemoryEndpoint(state), coordinator=fb) as b,
    ):
        with pytest.raises(InvalidCredentials):
            await a.get()
        with pytest.raises(CredentialsLockedOut, match="rejected in the fleet"):
            await b.get()  # no request: the other process's rejection counts
        assert state.count("password") == 1
        b.reset(config_for(state))  # the admin fixed the password
        assert (await b.get()).access_token.reveal()
        assert await fb.rejected.state() is None
        assert state.count("password") == 2


async def test_without_redis_a_provider_fails_typed_and_sends_nothing(
    private_redis: RedisServer, namespace: str
) -> None:
    state = strict_state()
    config = config_for(state)
    await anyio.to_thread.run_sync(private_redis.stop)
    async with (
        fleet_for(private_redis.url, namespace, config, connect_timeout=0.3) as fleet,
        TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet) as tokens,
    ):
        with pytest.raises(CoordinatorUnavailable, match="does not renew tokens without it"):
            await tokens.get()
    assert state.token_requests == 0
    async with (
        fleet_for(private_redis.url, namespace, config, connect_timeout=0.3, on_unavailable="renew_locally") as fleet,
        TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet) as tokens,
    ):
        assert (await tokens.get()).access_token.reveal()  # chosen explicitly: renewed alone
    assert state.count("password", "ok") == 1
