"""The fleet's token lifecycle at the edges, over real HTTP and a real Redis: a refresh without an
answer, a refresh answered 503, a shared record that went back in time, a wrong token key, a rejected
password fixed in another process, and Redis out of reach. Each: 0 reuse detections, at most one
extra token request per fault, typed errors, and no long waits for callers."""

from __future__ import annotations

import contextlib
import socket

import anyio
import pytest

from oauthpw_async import (
    CredentialsLockedOut,
    InvalidCredentials,
    TokenProvider,
    TransientTokenError,
    UsageError,
)
from oauthpw_async.fleet import Coordinator, CoordinatorUnavailable, FleetKeyMismatch, generate_key
from oauthpw_async.fleet import renewal as renewal_module
from oauthpw_async.fleet.errors import COORDINATOR_RETRY
from oauthpw_async.testing import AuthServerState, FakeClock, Fault, InMemoryEndpoint, LocalServer, Quirks

from .helpers import TOKEN_KEY, config_for
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

TIMEOUT = 0.3  # seconds a token request may take; a delayed answer comes after LATE
LATE = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the local server runs on aiohttp in this process


def strict() -> AuthServerState:
    return AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))


def no_reuse(state: AuthServerState) -> bool:
    return state.count(outcome="reuse") == 0 and state.count("refresh_token", "invalid_grant") == 0


async def test_a_holders_refresh_without_answer_is_followed_by_a_login_and_the_fleet_adopts_it(
    redis_server: RedisServer, namespace: str
) -> None:
    state = strict()
    async with LocalServer(state) as server:
        config = server.config(timeout=TIMEOUT)
        async with contextlib.AsyncExitStack() as stack:
            fleets = [
                await stack.enter_async_context(
                    Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
                )
                for _ in range(2)
            ]
            a = await stack.enter_async_context(TokenProvider(config, coordinator=fleets[0]))
            b = await stack.enter_async_context(TokenProvider(config, coordinator=fleets[1]))
            first = await a.get()
            assert (await b.get()).access_token.reveal() == first.access_token.reveal()
            state.inject(Fault("delay", delay=LATE))  # the server rotates, its answer comes too late
            a.invalidate(first)
            renewed = await a.get()
            b.invalidate(first)
            assert (await b.get()).access_token.reveal() == renewed.access_token.reveal()
            a.invalidate(renewed)
            await a.get()  # the login's refresh token works: its family was never revoked
    assert state.count(grant="refresh_token") == 2 and state.count("refresh_token", "ok") == 2
    assert state.count("password") == 2  # the first login, and the one that replaced the lost refresh
    assert a.stats.refresh_unconfirmed == 1 and no_reuse(state)


async def test_a_refresh_answered_503_leaves_the_refresh_token_to_the_fleet(
    redis_server: RedisServer, namespace: str
) -> None:
    state = strict()
    async with LocalServer(state) as server:
        config = server.config()
        fleet = Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
        async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
            first = await tokens.get()
            retries = tokens._retry.max_attempts
            state.inject(*[Fault("status", status=503)] * retries)  # every attempt of one renewal
            tokens.invalidate(first)
            with pytest.raises(TransientTokenError) as caught:
                await tokens.get()
            assert caught.value.status == 503
            shared = await fleet.tokens.read()
            assert shared is not None and not shared.refresh_spent  # given back: it was never used
            for _ in range(100):  # the next renewal, after a short backoff, is a refresh again
                with contextlib.suppress(Exception):
                    if (await tokens.get()).access_token.reveal() != first.access_token.reveal():
                        break
                await anyio.sleep(0.1)
    assert state.count("password") == 1 and state.count("refresh_token", "ok") == 1 and no_reuse(state)


async def test_a_shared_record_that_went_back_in_time_is_not_refreshed(
    redis_server: RedisServer, namespace: str
) -> None:
    state = strict()
    async with LocalServer(state) as server:
        config = server.config()
        fleet = Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
        async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
            client = fleet.link.client
            token = await tokens.get()
            snapshot = await client.dump(fleet.tokens.key)  # generation 1, as a backup would keep it
            assert snapshot is not None
            for _ in range(2):  # generations 2 and 3: generation 1's refresh token is used up
                tokens.invalidate(token)
                token = await tokens.get()
            await client.restore(fleet.tokens.key, 0, snapshot, replace=True)  # Redis restored from the backup
            tokens.invalidate(token)
            old = await tokens.get()  # generation 1's access token is still good: taken, no request
            assert state.token_requests == 3
            tokens.invalidate(old)
            await tokens.get()
            after = await fleet.tokens.read()
    assert no_reuse(state) and state.count("password") == 2  # a login, not generation 1's refresh token
    assert after is not None and after.generation > 3  # generations keep rising past every one seen


async def test_a_process_with_another_key_than_the_live_fleet_gets_a_typed_error_naming_both_keys(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renewal_module, "KEY_MAJORITY_WAIT", 0.2)
    state = strict()
    async with LocalServer(state) as server:
        config = server.config()
        right = Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
        wrong = Coordinator.for_config(config, redis_server.url, token_key=generate_key(), namespace=namespace)
        async with right, TokenProvider(config, coordinator=right) as tokens:
            await tokens.get()  # the fleet's record, sealed with the right key; this process stays live
            async with wrong, TokenProvider(config, coordinator=wrong) as other:
                errors = 0
                for _ in range(50):
                    with pytest.raises(FleetKeyMismatch) as caught:
                        await other.get()
                    errors += 1
                    await anyio.sleep(0.01)
                renewals = other.stats.failures
            assert (await right.tokens.read()) is not None  # the fleet's record was left alone
    assert errors == 50 and renewals <= 8  # backed off: not one renewal (and log line) per call
    assert state.count("password") == 1  # never a login that would overwrite the fleet's record
    message = str(caught.value)
    assert right.cipher.key_id in message and wrong.cipher.key_id in message and "like 1 live" in message
    assert TOKEN_KEY not in message and "OAUTHPW_FLEET_KEY" in message and "fleet reset --tokens" in message


async def test_a_record_sealed_with_a_key_no_live_process_holds_is_replaced_with_one_login(
    redis_server: RedisServer, namespace: str
) -> None:
    state = strict()
    async with LocalServer(state) as server:
        config = server.config()
        wrong = Coordinator.for_config(config, redis_server.url, token_key=generate_key(), namespace=namespace)
        async with wrong, TokenProvider(config, coordinator=wrong) as first:
            await first.get()  # sealed with the wrong key, by a process that then exits
        async with contextlib.AsyncExitStack() as stack:
            providers = []
            for _ in range(3):
                fleet = Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
                await stack.enter_async_context(fleet)
                providers.append(await stack.enter_async_context(TokenProvider(config, coordinator=fleet)))
            async with anyio.create_task_group() as tg:  # all at once: one of them replaces it, under the lease
                for p in providers:
                    tg.start_soon(p.get)
            got = {(await p.get()).access_token.reveal() for p in providers}
            shared = await fleet.tokens.read()
    assert len(got) == 1 and shared is not None and shared.token.access_token.reveal() in got
    assert state.count("password") == 2  # the wrong-key login, and one replacement for all three


async def test_a_rejected_password_fixed_in_another_process_unlocks_every_process(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renewal_module, "FLEET_LATCH_RECHECK", 0.05)
    state = strict()
    async with LocalServer(state) as server:
        good = server.config()
        bad = server.config(password="not the password")
        async with contextlib.AsyncExitStack() as stack:
            fa, fb = [
                await stack.enter_async_context(
                    Coordinator.for_config(good, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
                )
                for _ in range(2)
            ]
            a = await stack.enter_async_context(TokenProvider(bad, coordinator=fa))
            b = await stack.enter_async_context(TokenProvider(bad, coordinator=fb))
            with pytest.raises(InvalidCredentials):
                await a.get()
            with pytest.raises(CredentialsLockedOut):  # the fleet's latch: no request of its own
                await b.get()
            a.reset(good)
            fixed = await a.get()
            got = None
            for _ in range(200):  # b learns of it (the publish, or its next look at the latch)
                try:
                    got = await b.get()
                    break
                except CredentialsLockedOut:
                    await anyio.sleep(0.02)
    assert got is not None and got.access_token.reveal() == fixed.access_token.reveal()
    assert state.count("password", "invalid_grant") == 1 and state.count("password", "ok") == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_with_redis_out_of_reach_callers_hear_of_it_within_seconds(anyio_backend: str) -> None:
    with socket.socket() as s:  # nobody listens: every Redis call is refused at once
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    state = strict()
    clock = FakeClock()
    config = config_for(state)
    fleet = Coordinator.for_config(config, url, token_key=TOKEN_KEY, namespace="unreachable")
    provider = TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet, clock=clock)
    async with fleet, provider, clock.autojump():
        start = clock.monotonic()
        for _ in range(10):
            with pytest.raises(CoordinatorUnavailable):
                await provider.get()
        waited = clock.monotonic() - start
    # Each attempt waits at most COORDINATOR_RETRY for the next: not a backoff growing to a minute.
    assert waited <= 10 * COORDINATOR_RETRY + 1
    assert state.token_requests == 0


async def test_a_token_renewed_locally_while_redis_was_away_is_published_when_it_returns(
    private_redis: RedisServer, namespace: str
) -> None:
    state = strict()
    config = config_for(state)
    await anyio.to_thread.run_sync(private_redis.stop)
    options = {"token_key": TOKEN_KEY, "namespace": namespace, "connect_timeout": 0.3, "command_timeout": 0.5}
    local = Coordinator.for_config(config, private_redis.url, on_unavailable="renew_locally", **options)
    async with local, TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=local) as alone:
        mine = await alone.get()  # renewed alone, as chosen
        await anyio.to_thread.run_sync(private_redis.start)
        shared = None
        for _ in range(300):  # the watcher reconnects and publishes what was renewed meanwhile
            with contextlib.suppress(CoordinatorUnavailable):
                shared = await local.tokens.read()
            if shared is not None:
                break
            await anyio.sleep(0.05)
        assert shared is not None and shared.token.access_token.reveal() == mine.access_token.reveal()
        other = Coordinator.for_config(config, private_redis.url, **options)
        async with other, TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=other) as tokens:
            assert (await tokens.get()).access_token.reveal() == mine.access_token.reveal()
    assert state.count("password") == 1 and state.count("refresh_token") == 0


async def test_tokens_of_other_scopes_are_not_shared_but_the_accounts_login_budget_is(
    redis_server: RedisServer, namespace: str
) -> None:
    import attrs

    state = strict()
    base = config_for(state)
    configs = [attrs.evolve(base, body_parameters={"scope": scope}) for scope in ("read", "write")]
    async with contextlib.AsyncExitStack() as stack:
        fleets, providers = [], []
        for config in configs:
            fleet = Coordinator.for_config(
                config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace, login_limit=5
            )
            fleets.append(await stack.enter_async_context(fleet))
            providers.append(
                await stack.enter_async_context(
                    TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet)
                )
            )
        read, write = [await p.get() for p in providers]
        assert read.access_token.reveal() != write.access_token.reveal()  # one login per scope
        assert fleets[0].tokens.key != fleets[1].tokens.key and fleets[0].logins.key == fleets[1].logins.key
        assert await fleets[0].logins.used() == 0  # both charged to the account's one budget, re-armed by tokens
    assert state.count("password", "ok") == 2


async def test_a_rejection_is_not_forgotten_when_redis_loses_the_latch(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renewal_module, "FLEET_LATCH_RECHECK", 0.05)
    state = strict()
    clock = FakeClock()  # the recheck runs on the provider's clock: no real wait for it
    async with LocalServer(state) as server:
        bad = server.config(password="not the password")
        fleet = Coordinator.for_config(bad, redis_server.url, token_key=TOKEN_KEY, namespace=namespace, clock=clock)
        async with fleet, TokenProvider(bad, coordinator=fleet, clock=clock) as tokens:
            with pytest.raises(InvalidCredentials):
                await tokens.get()
            assert await fleet.rejected.state() is not None
            await fleet.rejected.reset()  # as if Redis had lost it (a restart without persistence)
            for _ in range(5):
                clock.advance(0.06)  # past the recheck: the shared state is read again
                with pytest.raises(CredentialsLockedOut):
                    await tokens.get()
            with pytest.raises(UsageError, match="another token or account"):
                tokens.reset(server.config(scope="other"))  # the coordinator is for this token only
    assert state.count("password") == 1  # the wrong password was sent once, never again


def test_a_refusal_worded_without_its_code_is_still_named() -> None:
    import coredis.exceptions

    from oauthpw_async.fleet._redis import error_code

    wording = "The user executing the script can't publish to the channel mentioned in the command"
    assert error_code(coredis.exceptions.ResponseError(wording)) == "NOPERM"
    assert error_code(coredis.exceptions.WrongTypeError("Operation against a key")) == "WRONGTYPE"
    assert error_code(coredis.exceptions.ResponseError("OOM command not allowed")) == "OOM"


async def test_a_reusable_refresh_token_is_given_back_after_a_500(redis_server: RedisServer, namespace: str) -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=False))
    async with LocalServer(state) as server:
        config = server.config()
        fleet = Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace)
        async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
            tokens.invalidate(await tokens.get())
            token = await tokens.get()  # a refresh answered with the same refresh token: reusable
            assert tokens.refresh_reusable
            state.inject(*[Fault("status", status=500)] * tokens._retry.max_attempts)
            tokens.invalidate(token)
            with pytest.raises(TransientTokenError):
                await tokens.get()
            shared = await fleet.tokens.read()
            assert shared is not None and not shared.refresh_spent  # reusable: given back, no login needed
    assert state.count("password") == 1


async def test_a_process_renewing_locally_refreshes_its_own_unshared_token(
    private_redis: RedisServer, namespace: str
) -> None:
    state = strict()
    config = config_for(state)
    await anyio.to_thread.run_sync(private_redis.stop)
    local = Coordinator.for_config(
        config, private_redis.url, token_key=TOKEN_KEY, namespace=namespace, on_unavailable="renew_locally",
        connect_timeout=0.3, command_timeout=0.5,
    )  # fmt: skip
    async with local, TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=local) as alone:
        for _ in range(3):  # its own login's refresh token, never shared: refreshed, not logged in again
            alone.invalidate(await alone.get())
        await alone.get()
    assert state.count("password") == 1 and state.count("refresh_token", "ok") == 3 and no_reuse(state)


async def test_a_redis_stall_after_the_token_arrived_is_named_to_waiting_callers(
    private_redis: RedisServer, namespace: str
) -> None:
    """Not "the token lifetime is shorter than a token request takes": Redis stalled, and that is what to check."""
    state = AuthServerState(token_lifetime=3.0, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    async with LocalServer(state) as server:
        config = server.config(timeout=10.0)
        fleet = Coordinator.for_config(
            config, private_redis.url, token_key=TOKEN_KEY, namespace=namespace, command_timeout=1.0,
            connect_timeout=1.0,
        )  # fmt: skip
        async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
            first = await tokens.get()
            refreshes = state.count("refresh_token")
            state.inject(Fault("delay", delay=2.5))  # the refresh is answered in 2.5 s, of a 3-s lifetime

            async def stall_redis_once_the_refresh_is_sent() -> None:
                while state.count("refresh_token") == refreshes:
                    await anyio.sleep(0.005)
                private_redis.freeze()  # the publish and the release now wait for Redis

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stall_redis_once_the_refresh_is_sent)
                    tokens.invalidate(first)
                    with pytest.raises(CoordinatorUnavailable) as caught:
                        await tokens.get()
            finally:
                private_redis.thaw()
    message = str(caught.value)
    assert "Redis stalled" in message and "expired meanwhile" in message and "latency" in message
    assert "lifetime is shorter" not in message and state.count("refresh_token", "ok") == refreshes + 1
