"""Every wait loop of the fleet runs on the injected clock: driven here by a fake one, against a real Redis.

Each test moves a :class:`FakeClock` by hand and asserts on its reading and on what the loop did
(polls, renewals, touches, pings); no test waits for wall time to pass.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from oauthpw_async import PasswordGrantConfig, RetryPolicy, TokenProvider, TransientTokenError
from oauthpw_async.crawler import Partition
from oauthpw_async.fleet import CoordinatorUnavailable, FleetCheckpoints, FleetCrawl
from oauthpw_async.fleet.renewal import LEASE_POLL_MAX, FleetRenewal
from oauthpw_async.testing import FakeClock

from .clocks import RecordingClock, until
from .helpers import coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

T = TypeVar("T")


async def on_fake_time(clock: FakeClock, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()``, jumping ``clock`` to each sleep it waits in, until it returns (or raises)."""
    outcome: list[Any] = []

    async def run() -> None:
        try:
            outcome.append(("ok", await fn()))
        except Exception as exc:
            outcome.append(("error", exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while True:
            await until(lambda: outcome or clock.sleepers)
            if outcome:
                break
            due = clock.next_deadline()
            assert due is not None
            clock.advance(due - clock.now)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


# --- lease --------------------------------------------------------------------------------------


async def test_waiting_for_a_held_lease_polls_on_the_clock_until_its_wait_is_up(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = RecordingClock()
    async with (
        coordinator(redis_server.url, namespace, lease_ttl=30.0, clock=clock) as waiter,
        coordinator(redis_server.url, namespace, lease_ttl=30.0) as holder,
    ):
        held = await holder.lease.acquire(wait=0)
        assert held is not None
        start = clock.now
        assert await on_fake_time(clock, lambda: waiter.lease.acquire(wait=1.0)) is None
        assert clock.now - start == pytest.approx(1.0)  # the whole wait, on the fake clock
        # A step doubling from 10 ms to 250 ms, the last one cut to the wait's end: 9 tries.
        assert clock.slept == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.19])
        assert await holder.lease.release(held)


async def test_a_kept_lease_is_renewed_every_third_of_its_ttl_on_the_clock(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, lease_ttl=30.0, clock=clock) as fleet:
        handle = await fleet.lease.acquire(wait=0)
        assert handle is not None and handle.valid_until == clock.now + 30.0
        async with fleet.lease.keep(handle):
            for _ in range(3):
                await until(lambda: clock.sleepers)
                clock.advance(10.0)
                await until(lambda: handle.valid_until == clock.now + 30.0)  # renewed at the fake time
                assert handle.valid
            assert clock.now == 1030.0
            assert clock.slept[:3] == [10.0, 10.0, 10.0]
            clock.advance(31.0)  # no renewal confirmed for longer than the ttl (the loop is asleep)
            assert not handle.valid
        assert handle.lost  # released on exit


async def test_a_renewal_waits_for_another_holders_lease_on_the_clock_until_its_bound(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = RecordingClock()
    # No watcher: its heartbeats would move the fake clock too (and nothing is published to hear).
    monkeypatch.setattr(FleetRenewal, "watch", lambda self: anyio.sleep_forever())
    config = PasswordGrantConfig(
        access_token_url="http://127.0.0.1:9/token", client_id="c", username="u", password="p", timeout=5.0
    )
    async with (
        coordinator(redis_server.url, namespace, lease_ttl=30.0, clock=clock) as waiter,
        coordinator(redis_server.url, namespace, lease_ttl=30.0) as holder,
    ):
        held = await holder.lease.acquire(wait=0)
        assert held is not None
        async with (
            holder.lease.keep(held),  # held (renewed on real time), and nothing is ever published
            TokenProvider(config, coordinator=waiter, clock=clock, retry=RetryPolicy(deadline=10.0)) as tokens,
        ):
            start = clock.now
            with pytest.raises(TransientTokenError, match="holds the renewal lease and has published no token"):
                await on_fake_time(clock, tokens.get)
            # The bound: one request's retries (10 s) and two timeouts (5 s each) of the holder, plus the lease ttl.
            assert clock.now - start == pytest.approx(10.0 + 2 * 5.0 + 30.0)
            assert held.valid and tokens.stats.token_requests == 0
        polls = [s for s in clock.slept if s <= LEASE_POLL_MAX]  # the watcher's heartbeats are 5 s
        assert polls[:6] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.5])  # doubling up to the poll step
        assert sum(polls) == pytest.approx(50.0)


# --- rate limit ---------------------------------------------------------------------------------


async def test_the_rate_limiter_waits_for_its_slot_on_the_clock(redis_server: RedisServer, namespace: str) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        limiter = fleet.rate_limiter(rate=1.0, burst=1)
        await limiter.acquire("api.example.com")
        assert clock.slept == []  # the first request goes at once
        start = clock.now
        await on_fake_time(clock, lambda: limiter.acquire("api.example.com"))
        (waited,) = clock.slept
        assert 0.5 < waited <= 1.0  # the next slot, one second after the first (Redis' clock)
        assert clock.now - start == pytest.approx(waited)


async def test_a_long_shared_pause_is_waited_out_in_steps_on_the_clock(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        limiter = fleet.rate_limiter(rate=10.0, max_wait=5.0)
        assert await limiter.pause("api.example.com", 300.0) > 290.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire, "api.example.com")
            for step in range(1, 4):
                await until(lambda step=step: len(clock.slept) == step and clock.sleepers)
                clock.advance(5.0)
            await until(lambda: len(clock.slept) == 4)  # asked Redis again after each step: still paused
            tg.cancel_scope.cancel()
        assert clock.slept == [5.0, 5.0, 5.0, 5.0]
        assert clock.now == 1015.0


# --- partitions ---------------------------------------------------------------------------------


def _count_touches(queue: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    touched: list[float] = []
    real = queue.touch

    async def touch(claim: Any) -> None:
        touched.append(clock.now)
        await real(claim)

    monkeypatch.setattr(queue, "touch", touch)
    return touched


async def test_a_claim_kept_alive_is_touched_every_third_of_the_idle_timeout_on_the_clock(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        queue = fleet.partitions("crawl", consumer="w", idle_timeout=30.0)
        await queue.enqueue({"p": {}})
        (claim,) = await queue.claim()
        touched = _count_touches(queue, clock, monkeypatch)
        async with queue.keep_alive(claim):
            for n in range(1, 4):
                await until(lambda: clock.sleepers)
                clock.advance(10.0)
                await until(lambda n=n: len(touched) == n)
        assert touched == [1010.0, 1020.0, 1030.0]
        assert not claim.lost


async def test_a_walking_workers_heartbeat_touches_its_claim_on_the_clock(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        crawl = FleetCrawl(fleet, "crawl", idle_timeout=30.0)
        checkpoints = crawl.checkpoints
        assert checkpoints.clock is clock and checkpoints.queue.clock is clock  # the coordinator's clock
        await checkpoints.queue.enqueue({"p": {}})
        (claim,) = await checkpoints.queue.claim()
        touched = _count_touches(checkpoints.queue, clock, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(checkpoints._heartbeat, claim, tg.cancel_scope)
            for n in range(1, 3):
                await until(lambda: clock.sleepers)
                clock.advance(10.0)
                await until(lambda n=n: len(touched) == n)
            tg.cancel_scope.cancel()
        assert touched == [1010.0, 1020.0]


async def test_a_worker_with_nothing_left_to_claim_polls_the_fleet_on_the_clock(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        shape = {"crawler": "tests.Crawler", "partitions": ["p"], "pagination": "Offset()"}
        other = FleetCheckpoints(fleet.link, "crawl", cipher=fleet.cipher, consumer="other")
        waiter = FleetCrawl(fleet, "crawl", idle_timeout=8.0).checkpoints  # polls every 1 s (a quarter, at most 1 s)
        await other.open(shape)
        await waiter.open(shape)
        (held,) = await other.queue.claim()  # the one partition runs on another worker
        walked: list[str] = []
        returned = anyio.Event()

        async def walk(partition: Partition) -> None:
            walked.append(partition.name)

        async def work() -> None:
            await waiter.walk_partitions([Partition("p")], walk)
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            for n in range(1, 4):  # nothing to claim, the round not finished: it waits a poll, then asks again
                await until(lambda n=n: len(clock.slept) == n and clock.sleepers)
                assert not returned.is_set()
                clock.advance(1.0)
            await until(lambda: len(clock.slept) == 4 and clock.sleepers)
            await other.queue.complete(held)
            clock.advance(1.0)  # the next poll sees the round finished
            await until(returned.is_set)
        assert clock.slept == [1.0, 1.0, 1.0, 1.0]
        assert clock.now == 1004.0
        assert walked == [] and waiter.is_done("p")


async def test_a_worker_waits_for_redis_with_backoff_on_the_clock_for_its_grace(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = RecordingClock()
    fleet = coordinator(redis_server.url, namespace)  # never entered: every call below fails before Redis
    checkpoints = FleetCheckpoints(fleet.link, "crawl", cipher=fleet.cipher, unavailable_grace=3.0, clock=clock)
    calls: list[float] = []

    async def down() -> None:
        calls.append(clock.now)
        raise fleet.link.unavailable(TimeoutError())

    start = clock.now
    with pytest.raises(CoordinatorUnavailable):
        await on_fake_time(clock, lambda: checkpoints._patient(down))
    assert clock.now - start == pytest.approx(3.0)  # the grace, on the fake clock
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.5])  # doubling, the last cut to the grace
    assert len(calls) == 6

    answers = iter([fleet.link.unavailable(TimeoutError()), None])

    async def flaky() -> str:
        answer = next(answers)
        if answer is not None:
            raise answer
        return "ok"

    clock.slept.clear()
    assert await on_fake_time(clock, lambda: checkpoints._patient(flaky)) == "ok"
    assert clock.slept == [0.1]


# --- token watcher ------------------------------------------------------------------------------


async def test_a_watcher_that_hears_nothing_for_three_heartbeats_subscribes_again_on_the_clock(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = RecordingClock()
    async with coordinator(redis_server.url, namespace, clock=clock) as fleet:
        pings: list[float] = []

        async def lost_ping(channel: object, message: object) -> int:  # the self-ping never arrives
            pings.append(clock.now)
            return 0

        monkeypatch.setattr(fleet.link.client, "publish", lost_ping)
        subscribed: list[float] = []
        again = anyio.Event()

        def on_change(generation: int | None) -> None:
            if generation is None:
                subscribed.append(clock.now)
                if len(subscribed) == 2:
                    again.set()

        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(fleet.tokens.watch, on_change, heartbeat=5.0))
            assert subscribed == [1000.0]
            for _ in range(40):  # each step one heartbeat of fake time; the client's own keep-alive may delay it
                await until(lambda: again.is_set() or clock.sleepers)
                if again.is_set():
                    break
                clock.advance(5.0)
            await again.wait()  # the new subscription (real I/O: no fake time passes meanwhile)
            tg.cancel_scope.cancel()
        assert pings[:3] == [1005.0, 1010.0, 1015.0]  # one self-ping per heartbeat of fake time
        # Subscribed again only after three heartbeats (of fake time) in which nothing was heard.
        assert subscribed[0] == 1000.0 and subscribed[1] >= 1015.0 and len(subscribed) == 2
