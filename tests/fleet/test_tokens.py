"""The shared token record: encrypted at rest, compare-and-set by generation, fenced refresh, notifications."""

from __future__ import annotations

import base64
import functools

import anyio
import pytest

from oauthpw_async.fleet import (
    CoordinatorUnavailable,
    FleetKeyMismatch,
    RefreshPermit,
    SharedStateUnreadable,
    TokenCipher,
    generate_key,
)

from .helpers import CREDENTIAL, coordinator, make_token
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

BOUND = 60.0  # seconds: only a hang reaches it


async def test_a_published_token_reads_back_whole(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        assert await fleet.tokens.read() is None
        token = make_token(1)
        result = await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        assert result.published and result.generation == 1 and result.token_id
        shared = await fleet.tokens.read()
        assert shared is not None
        assert shared.generation == 1 and shared.token_id == result.token_id and not shared.refresh_spent
        got = shared.token
        assert got.access_token.reveal() == token.access_token.reveal()
        assert got.refresh_token is not None and token.refresh_token is not None
        assert got.refresh_token.reveal() == token.refresh_token.reveal()
        assert got.authorization == token.authorization
        assert got.issued.wall == token.issued.wall and got.lifetime == token.lifetime
        assert got.scope == "read" and dict(got.extra) == {"instance_url": "https://api.example.com"}


async def test_tokens_at_rest_are_encrypted(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        token = make_token(7)
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        raw = b""
        for key in await fleet.link.client.keys(f"{namespace}:*"):
            if await fleet.link.client.type(key) == b"hash":
                raw += b"".join(v for v in (await fleet.link.client.hgetall(key)).values())
            elif await fleet.link.client.type(key) == b"string":
                raw += await fleet.link.client.get(key) or b""
        assert raw
        for secret in (token.access_token.reveal(), token.refresh_token.reveal()):  # type: ignore[union-attr]
            for form in (secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()):
                assert form not in raw


async def test_a_stale_writer_never_overwrites_a_newer_token(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        now = make_token().issued.wall
        assert (await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=now)).generation == 1
        second = await fleet.tokens.publish(make_token(2), renewed_from=1, now_wall=now)
        assert second.published and second.generation == 2
        stale = await fleet.tokens.publish(make_token(3), renewed_from=1, now_wall=now)
        assert not stale.published and stale.generation == 2
        fresh_start = await fleet.tokens.publish(make_token(4), renewed_from=0, now_wall=now)
        assert not fresh_start.published and fresh_start.generation == 2
        shared = await fleet.tokens.read()
        assert shared is not None and shared.token.access_token.reveal().startswith("at-2-")


async def test_after_redis_lost_its_data_the_next_publish_continues_the_numbering(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        now = make_token().issued.wall
        await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=now)
        await fleet.tokens.clear()  # what a restart without persistence does
        result = await fleet.tokens.publish(make_token(2), renewed_from=5, now_wall=now)
        assert result.published and result.generation == 6
        shared = await fleet.tokens.read()
        assert shared is not None and shared.generation == 6


async def test_a_record_opens_only_with_its_key_credential_and_generation(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        now = make_token().issued.wall
        await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=now)
        async with coordinator(redis_server.url, namespace, token_key=generate_key()) as other:
            with pytest.raises(FleetKeyMismatch, match="needs the same OAUTHPW_FLEET_KEY") as caught:
                await other.tokens.read()
            assert caught.value.record_key_id == fleet.cipher.key_id != caught.value.key_id == other.cipher.key_id
        # Key rotation: the new key first, the old one still accepted for reading.
        async with coordinator(redis_server.url, namespace, token_key=[generate_key(), fleet_key()]) as rotated:
            assert (await rotated.tokens.read()) is not None
        # A record copied under another generation does not open (bound as associated data).
        await fleet.link.client.hset(fleet.tokens.key, {"gen": "2"})
        with pytest.raises(SharedStateUnreadable, match="fleet reset --tokens") as damaged:
            await fleet.tokens.read()
        assert not isinstance(damaged.value, FleetKeyMismatch)  # our key sealed it: damaged, not foreign


def fleet_key() -> str:
    from .helpers import TOKEN_KEY

    return TOKEN_KEY


def test_the_cipher_binds_the_credential_and_refuses_bad_keys() -> None:
    cipher = TokenCipher(generate_key())
    blob = cipher.seal(b"payload", credential_key=CREDENTIAL, generation=3)
    assert cipher.open(blob, credential_key=CREDENTIAL, generation=3) == b"payload"
    with pytest.raises(SharedStateUnreadable):
        cipher.open(blob, credential_key="fedcba9876543210", generation=3)
    with pytest.raises(SharedStateUnreadable, match="damaged"):
        cipher.open(b"\x01short", credential_key=CREDENTIAL, generation=3)
    with pytest.raises(ValueError, match="32 random bytes"):
        TokenCipher("too-short")
    assert "key" in repr(cipher) and generate_key() not in repr(cipher)


async def test_a_token_without_refresh_token_expires_from_redis_with_itself(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        token = make_token(1, lifetime=120.0, refresh=False)
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        ttl_ms = await fleet.link.client.pttl(fleet.tokens.key)
        assert 0 < ttl_ms <= 120_000
        await fleet.tokens.publish(make_token(2), renewed_from=1, now_wall=token.issued.wall)
        assert await fleet.link.client.pttl(fleet.tokens.key) == -1  # a refresh token of unknown lifetime: kept


async def test_only_the_lease_holder_may_spend_a_refresh_token_and_only_once(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace, lease_ttl=0.3) as fleet:
        now = make_token().issued.wall
        await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=now)
        first = await fleet.lease.acquire(wait=0)
        assert first is not None
        # Not the holder: a handle from another acquisition is refused.
        async with coordinator(redis_server.url, namespace, lease_ttl=0.3) as other:
            assert (await other.lease.acquire(wait=0)) is None
        assert await fleet.tokens.claim_refresh(1, fleet.lease, first) is RefreshPermit.GRANTED
        shared = await fleet.tokens.read()
        assert shared is not None and shared.refresh_spent
        # The holder dies mid-request: its lease expires, the successor must not reuse that refresh token.
        second = await fleet.lease.acquire(wait=5.0)
        assert second is not None and second.fence > first.fence
        assert await fleet.tokens.claim_refresh(1, fleet.lease, second) is RefreshPermit.SPENT
        assert await fleet.tokens.claim_refresh(1, fleet.lease, first) is RefreshPermit.NOT_HOLDER
        # A newer generation (or none at all) is a change: read again.
        assert await fleet.tokens.claim_refresh(0, fleet.lease, second) is RefreshPermit.CHANGED
        await fleet.tokens.clear()
        assert await fleet.tokens.claim_refresh(1, fleet.lease, second) is RefreshPermit.CHANGED


async def test_watchers_hear_of_every_publish(redis_server: RedisServer, namespace: str) -> None:
    seen: list[int | None] = []
    got_two = anyio.Event()

    def on_change(generation: int | None) -> None:
        seen.append(generation)
        if generation == 2:
            got_two.set()

    async with coordinator(redis_server.url, namespace) as fleet, anyio.create_task_group() as tg:
        await tg.start(fleet.tokens.watch, on_change)
        now = make_token().issued.wall
        async with coordinator(redis_server.url, namespace) as writer:
            await writer.tokens.publish(make_token(1), renewed_from=0, now_wall=now)
            await writer.tokens.publish(make_token(2), renewed_from=1, now_wall=now)
        with anyio.fail_after(BOUND):
            await got_two.wait()
        tg.cancel_scope.cancel()
    assert seen == [None, 1, 2]


async def test_a_watcher_resubscribes_after_redis_restarts_and_says_read_again(
    private_redis: RedisServer, namespace: str
) -> None:
    seen: list[int | None] = []
    events = {n: anyio.Event() for n in ("resubscribed", "published")}

    def on_change(generation: int | None) -> None:
        seen.append(generation)
        if generation is None and len(seen) > 1:
            events["resubscribed"].set()
        if generation is not None:
            events["published"].set()

    async with coordinator(private_redis.url, namespace) as fleet, anyio.create_task_group() as tg:
        await tg.start(functools.partial(fleet.tokens.watch, on_change, heartbeat=0.2))
        await anyio.to_thread.run_sync(private_redis.restart)
        with anyio.fail_after(BOUND):
            await events["resubscribed"].wait()
        # The client may announce the new subscription a moment before the server applies it, and
        # pub/sub keeps nothing for late subscribers (hence "read again"): publish until one arrives.
        with anyio.fail_after(BOUND):
            for generation in range(1, 1000):
                await fleet.tokens.publish(make_token(generation), renewed_from=generation - 1, now_wall=0.0)
                with anyio.move_on_after(0.2):
                    await events["published"].wait()
                if events["published"].is_set():
                    break
        tg.cancel_scope.cancel()
    assert seen[:2] == [None, None] and isinstance(seen[-1], int)


async def test_an_unreachable_redis_is_a_typed_error_and_service_resumes(
    private_redis: RedisServer, namespace: str
) -> None:
    async with coordinator(private_redis.url, namespace, command_timeout=0.5, connect_timeout=0.5) as fleet:
        await fleet.ping()
        private_redis.freeze()
        try:
            with pytest.raises(CoordinatorUnavailable, match="check that Redis is running") as info:
                await fleet.tokens.read()
            assert info.value.where == f"127.0.0.1:{private_redis.port}/0"
        finally:
            private_redis.thaw()
        await fleet.ping()  # the client reconnects by itself
        await anyio.to_thread.run_sync(private_redis.stop)
        with pytest.raises(CoordinatorUnavailable):
            await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=make_token().issued.wall)
        await anyio.to_thread.run_sync(private_redis.start)
        assert (await fleet.tokens.publish(make_token(1), renewed_from=0, now_wall=make_token().issued.wall)).published


async def test_no_redis_password_in_errors_or_reprs(private_redis: RedisServer, namespace: str) -> None:
    url = f"redis://user:hunter2-redis-pw@127.0.0.1:{private_redis.port}/0"
    await anyio.to_thread.run_sync(private_redis.stop)
    async with coordinator(url, namespace, connect_timeout=0.5) as fleet:
        with pytest.raises(CoordinatorUnavailable) as info:
            await fleet.ping()
        assert "hunter2" not in str(info.value) and "hunter2" not in repr(fleet)
        shared_repr = repr(make_token(1))
        assert "at-1-" not in shared_repr and "rt-1-" not in shared_repr


async def test_a_watcher_that_hears_nothing_subscribes_again(
    private_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard = anyio.Event()

    def on_change(generation: int | None) -> None:
        if generation is not None:
            heard.set()

    caplog.set_level("INFO", logger="oauthpw_async.fleet")
    async with (
        coordinator(private_redis.url, namespace, command_timeout=0.2) as fleet,
        anyio.create_task_group() as tg,
    ):
        await tg.start(functools.partial(fleet.tokens.watch, on_change, heartbeat=0.1))
        with private_redis.frozen():  # its own pings go unanswered for longer than three heartbeats
            with anyio.fail_after(BOUND):
                while "subscribing again" not in caplog.text:
                    await anyio.sleep(0.05)
        with anyio.fail_after(BOUND):
            for generation in range(1, 1000):
                await fleet.tokens.publish(make_token(generation), renewed_from=generation - 1, now_wall=0.0)
                with anyio.move_on_after(0.2):
                    await heard.wait()
                if heard.is_set():
                    break
        tg.cancel_scope.cancel()
