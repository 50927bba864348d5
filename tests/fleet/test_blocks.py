"""Lease, login budget and latch, rate limit and pause, partition queue: each against the real server."""

from __future__ import annotations

import itertools

import anyio
import pytest

from oauthpw_async.errors import UsageError
from oauthpw_async.fleet import ClaimLost, CoordinatorUnavailable

from .helpers import coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio


# --- lease --------------------------------------------------------------------------------------


async def test_a_lease_is_kept_while_its_holder_works_and_freed_after(
    redis_server: RedisServer, namespace: str
) -> None:
    async with (
        coordinator(redis_server.url, namespace, lease_ttl=0.3) as a,
        coordinator(redis_server.url, namespace, lease_ttl=0.3) as b,
    ):
        handle = await a.lease.acquire(wait=0)
        assert handle is not None
        async with a.lease.keep(handle):
            await anyio.sleep(1.0)  # three times the ttl: only the renewals keep it
            assert handle.valid
            assert await b.lease.acquire(wait=0) is None
        assert handle.lost  # released on exit
        other = await b.lease.acquire(wait=0)
        assert other is not None and other.fence == handle.fence + 1


async def test_a_lease_whose_holder_stops_renewing_expires_and_only_its_holder_releases_it(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace, lease_ttl=0.2) as fleet:
        dead = await fleet.lease.acquire(wait=0)
        assert dead is not None
        successor = await fleet.lease.acquire(wait=10.0)  # waits for the expiry
        assert successor is not None and successor.fence > dead.fence
        assert not await fleet.lease.release(dead)  # a late holder cannot free its successor's lease
        assert not await fleet.lease.renew(dead) and dead.lost
        assert await fleet.link.client.get(fleet.lease.key) == successor.value.encode()
        assert await fleet.lease.release(successor)


def test_a_lease_needs_a_sensible_ttl(redis_server: RedisServer, namespace: str) -> None:
    with pytest.raises(UsageError):
        coordinator(redis_server.url, namespace, lease_ttl=0)


# --- logins -------------------------------------------------------------------------------------


async def test_the_login_budget_refuses_past_its_limit_and_says_how_long_to_wait(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace, login_limit=2, login_window=0.5) as fleet:
        assert await fleet.logins.take() == 0.0
        assert await fleet.logins.take() == 0.0
        wait = await fleet.logins.take()
        assert 0 < wait <= 0.5
        assert await fleet.logins.used() == 2  # a refused login is not charged
        await anyio.sleep(wait + 0.05)
        assert await fleet.logins.take() == 0.0  # the window slid on
        await fleet.logins.reset()
        assert await fleet.logins.used() == 0


async def test_a_rejected_password_stops_every_process_until_reset(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as a, coordinator(redis_server.url, namespace) as b:
        assert await b.rejected.state() is None
        assert await a.rejected.trip(status=400, error_code="invalid_grant", by="host-a pid 1")
        assert not await b.rejected.trip(status=401, error_code="other", by="host-b pid 2")  # first one kept
        state = await b.rejected.state()
        assert state is not None and state.status == 400 and state.error_code == "invalid_grant"
        assert state.by == "host-a pid 1" and state.since > 1.6e9
        assert await b.rejected.reset()
        assert await a.rejected.state() is None


# --- rate limit and pause -----------------------------------------------------------------------


async def test_gcra_lets_a_burst_through_then_spaces_requests(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        limiter = fleet.rate_limiter(rate=1.0, burst=3, max_wait=5.0)
        decisions = [await limiter.reserve("https://a.example") for _ in range(10)]
        assert [d.wait == 0 for d in decisions[:3]] == [True] * 3
        assert [d.reserved for d in decisions] == [True] * 8 + [False] * 2
        reserved = [d for d in decisions if d.reserved]
        later = [d.allowed_at for d in reserved[3:]]
        assert all(b - a >= 1.0 - 0.0002 for a, b in itertools.pairwise(later))
        refused = [d for d in decisions if not d.reserved]
        assert refused and all(d.wait > 5.0 for d in refused)  # beyond max_wait: nothing reserved
        other_host = await limiter.reserve("https://b.example")
        assert other_host.wait == 0  # hosts are limited separately


async def test_a_pause_holds_every_worker_back_and_a_shorter_one_never_cuts_it(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as a, coordinator(redis_server.url, namespace) as b:
        host = "https://api.example"
        assert await b.rate_limiter(rate=100.0).paused_for(host) == 0
        assert 0.9 < await a.rate_limiter(rate=100.0).pause(host, 1.0) <= 1.0
        assert 0.5 < await b.rate_limiter(rate=100.0).pause(host, 0.1) <= 1.0  # still the longer pause
        decision = await b.rate_limiter(rate=100.0).reserve(host)
        assert decision.reserved and 0.5 < decision.wait <= 1.0
        with pytest.raises(UsageError):
            await a.rate_limiter(rate=1.0).pause(host, float("inf"))


async def test_acquire_sleeps_its_reserved_wait(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        limiter = fleet.rate_limiter(rate=20.0, burst=1, max_wait=0.02)
        start = anyio.current_time()
        for _ in range(4):
            await limiter.acquire("https://c.example")
        assert anyio.current_time() - start >= 3 * 0.05 - 0.001  # 4 requests at 20/s span 150 ms


# --- partition queue ----------------------------------------------------------------------------


async def test_partitions_are_enqueued_once_claimed_checkpointed_and_completed(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        queue = fleet.partitions("crawl", consumer="w1")
        specs = {"a": {"table": "a"}, "b": {"table": "b"}}
        assert await queue.enqueue(specs) == 2
        assert await queue.enqueue(specs) == 0  # every worker may enqueue the list: once only
        status = await queue.status()
        assert status.sealed and not status.complete and status.count("queued") == 2
        claims = await queue.claim(count=5)
        assert sorted(c.partition for c in claims) == ["a", "b"]
        assert all(c.position is None and c.attempt == 1 and c.fence == 1 for c in claims)
        assert await queue.claim() == []
        a, b = sorted(claims, key=lambda c: c.partition)
        assert a.spec == {"table": "a"}
        await queue.checkpoint(a, {"next": "/a?page=2"})
        await queue.complete(a)
        await queue.fail(b, "HTTP 403 for /b")
        status = await queue.status()
        assert [(p.name, p.state) for p in status.partitions] == [("a", "done"), ("b", "failed")]
        assert (
            status.partitions[0].position == {"next": "/a?page=2"} and status.partitions[1].reason == "HTTP 403 for /b"
        )
        assert status.finished and not status.complete
        assert [p.name for p in status.incomplete] == ["b"]


async def test_a_silent_worker_loses_its_partition_and_can_no_longer_write(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        slow = fleet.partitions("crawl", consumer="slow", idle_timeout=0.2)
        fast = fleet.partitions("crawl", consumer="fast", idle_timeout=0.2)
        await slow.enqueue({"p": {}})
        (mine,) = await slow.claim()
        await slow.checkpoint(mine, 3)
        assert await fast.claim() == []  # still fresh
        await anyio.sleep(0.3)
        (taken,) = await fast.claim()
        assert taken.partition == "p" and taken.position == 3 and taken.fence == mine.fence + 1 and taken.attempt == 2
        for write in (slow.checkpoint(mine, 4), slow.complete(mine), slow.release(mine), slow.touch(mine)):
            with pytest.raises(ClaimLost, match="taken over"):
                await write
        assert mine.lost
        status = await fast.status()
        assert status.partitions[0].owner == "fast" and status.partitions[0].position == 3
        await fast.complete(taken)
        assert (await fast.status()).complete


async def test_keep_alive_holds_a_claim_through_a_long_page(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        worker = fleet.partitions("crawl", consumer="w", idle_timeout=0.3)
        other = fleet.partitions("crawl", consumer="o", idle_timeout=0.3)
        await worker.enqueue({"p": {}})
        (claim,) = await worker.claim()
        async with worker.keep_alive(claim):
            await anyio.sleep(1.0)
            assert await other.claim() == []
        assert not claim.lost
        await worker.complete(claim)


async def test_a_claim_lost_inside_keep_alive_propagates_as_itself(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        slow = fleet.partitions("crawl", consumer="slow", idle_timeout=0.1)
        await slow.enqueue({"p": {}})
        (claim,) = await slow.claim()

        async def crawl_page() -> None:
            async with slow.keep_alive(claim):
                await fleet.link.client.hset(slow._owner, {"p": "someone-else|9|0-0"})  # taken over
                await slow.checkpoint(claim, 1)

        with pytest.raises(ClaimLost):
            await crawl_page()
        assert claim.lost


async def test_a_released_partition_is_resumed_by_another_worker(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        a = fleet.partitions("crawl", consumer="a")
        b = fleet.partitions("crawl", consumer="b")
        await a.enqueue({"p": {}})
        (claim,) = await a.claim()
        await a.checkpoint(claim, {"page": 2})
        await a.release(claim)
        (resumed,) = await b.claim()
        assert resumed.position == {"page": 2} and resumed.attempt == 1  # giving back is not a failed try


async def test_a_partition_that_keeps_killing_workers_is_marked_failed(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        queue = fleet.partitions("crawl", idle_timeout=0.05, max_claims=2)
        await queue.enqueue({"poison": {}})
        assert len(await queue.claim()) == 1
        await anyio.sleep(0.1)
        assert len(await queue.claim()) == 1
        await anyio.sleep(0.1)
        assert await queue.claim() == []
        (p,) = (await queue.status()).partitions
        assert p.state == "failed" and "claimed 2 times" in (p.reason or "")


async def test_unsealed_lists_are_never_complete_and_drop_starts_over(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        queue = fleet.partitions("crawl")
        await queue.enqueue({"a": {}}, seal=False)
        (claim,) = await queue.claim()
        await queue.complete(claim)
        assert not (await queue.status()).complete
        await queue.enqueue({}, seal=True)
        assert (await queue.status()).complete
        await queue.drop()
        status = await queue.status()
        assert status.partitions == () and not status.sealed


async def test_the_queue_fails_typed_while_redis_is_unreachable(private_redis: RedisServer, namespace: str) -> None:
    async with coordinator(private_redis.url, namespace, command_timeout=0.3) as fleet:
        queue = fleet.partitions("crawl")
        await queue.enqueue({"a": {}})
        (claim,) = await queue.claim()
        with private_redis.frozen(), pytest.raises(CoordinatorUnavailable):
            await queue.checkpoint(claim, 1)
        await queue.checkpoint(claim, 1)
        await anyio.to_thread.run_sync(private_redis.restart)
        with pytest.raises(ClaimLost):  # the queue was lost with Redis's data: the claim is gone too
            await queue.checkpoint(claim, 2)


def test_fleet_errors_copy_and_pickle_whole() -> None:
    import copy
    import pickle

    err = CoordinatorUnavailable("Redis did not answer (TimeoutError)", where="127.0.0.1:6379/0")
    for clone in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert type(clone) is CoordinatorUnavailable and str(clone) == str(err) and clone.where == err.where
    lost = ClaimLost("p1")
    for clone in (copy.copy(lost), pickle.loads(pickle.dumps(lost))):
        assert clone.partition == "p1" and str(clone) == str(lost)
