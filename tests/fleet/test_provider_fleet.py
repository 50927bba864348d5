"""TokenProvider in a fleet: worker processes, one local authorization server with strictly rotating
refresh tokens and reuse detection, one real Redis; a holder killed mid-refresh, Redis restarted
(data lost), Redis unreachable for a while.

The authorization server runs in the test process; every worker is its own OS process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from oauthpw_async.fleet import Coordinator
from oauthpw_async.fleet.coordinator import lease_ttl_for
from oauthpw_async.fleet.renewal import LEASE_POLL_MAX
from oauthpw_async.testing import AuthServerState, Fault, LocalServer, Quirks

from .helpers import coordinator
from .procs import ROOT
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

LIFETIME = 3.0  # seconds: several renewals per run
#: A token turns stale no earlier than this into its life (skew 5 %, margin at most 25 % + 20 % jitter).
EARLIEST_RENEWAL = LIFETIME * (1 - 0.05 - 0.25 * 1.2)
WORKERS = 3
BOUND = 300.0  # seconds: only a hang hits this
#: The workers' Redis command timeout (tests/fleet/workers.py); their token request timeout is 30 s unless given.
COMMAND_TIMEOUT = 0.5


def takeover_bound(request_timeout: float) -> float:
    """How soon after its holder died or froze a successor must have published, from the workers' config.

    The lease's remaining ttl, one poll step, and the successor's Redis calls (read, acquire, claim, publish).
    """
    return lease_ttl_for(COMMAND_TIMEOUT, request_timeout) + LEASE_POLL_MAX + 4 * COMMAND_TIMEOUT


async def generation(probe: Coordinator) -> int:
    return int(await probe.link.client.hget(probe.tokens.key, "gen") or b"0")


async def seconds_until_published_past(probe: Coordinator, gen: int, since: float) -> float:
    """Seconds from ``since`` (``time.monotonic()``) until a generation past ``gen`` is in Redis."""
    with anyio.fail_after(BOUND):
        while await generation(probe) <= gen:
            await anyio.sleep(0.01)
    return time.monotonic() - since


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the workers use aiohttp; the server runs in this process


def strict_server() -> AuthServerState:
    return AuthServerState(
        token_lifetime=LIFETIME, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True), lockout_after=3
    )


class Fleet:
    """Worker processes writing JSON lines to files."""

    def __init__(self, tmp: Path, redis_url: str, namespace: str, token_url: str) -> None:
        self.tmp, self.redis_url, self.namespace, self.token_url = tmp, redis_url, namespace, token_url
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.fleet.workers", "provider", self.redis_url, self.namespace, self.token_url]

    def start(self, seconds: float, *extra: str) -> None:
        for i in range(WORKERS):
            out = open(self.tmp / f"w{i}.jsonl", "wb")  # noqa: SIM115 - closed by the child's exit
            err = open(self.tmp / f"w{i}.err", "wb")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [*self.command, str(seconds), *extra],
                    cwd=ROOT,
                    stdout=out,
                    stderr=err,
                )
            )

    def events(self, i: int) -> list[dict[str, Any]]:
        path = self.tmp / f"w{i}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    async def wait_ready(self) -> None:
        with anyio.fail_after(BOUND):
            while not all(any(e.get("ready") for e in self.events(i)) for i in range(WORKERS)):
                assert all(p.poll() is None for p in self.procs), self.stderr()
                await anyio.sleep(0.05)

    async def finish(self) -> list[dict[str, Any] | None]:
        """Wait for every worker; the final report of each (``None`` for a killed one)."""
        with anyio.fail_after(BOUND):
            while any(p.poll() is None for p in self.procs):
                await anyio.sleep(0.05)
        reports = []
        for i, p in enumerate(self.procs):
            if p.returncode == -signal.SIGKILL:
                reports.append(None)
                continue
            assert p.returncode == 0, self.stderr()
            reports.append(next(e for e in self.events(i) if "gets" in e))
        return reports

    def window(self) -> float:
        """Seconds from the first worker's first token to the last worker's end (killed ones included)."""
        walls = [e["wall"] for i in range(len(self.procs)) for e in self.events(i) if "wall" in e]
        return max(walls) - min(walls)

    def stderr(self) -> str:
        return "\n".join((self.tmp / f"w{i}.err").read_text()[-2000:] for i in range(len(self.procs)))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def wait_for(predicate: Any) -> None:
    with anyio.fail_after(BOUND):
        while not predicate():
            await anyio.sleep(0.02)


async def holder_of_a_late_refresh(fleet: Fleet, state: AuthServerState, probe: Coordinator) -> subprocess.Popen[bytes]:
    """Once the fleet refreshes, make its next refresh late (used up at once, answered after 6 s): its holder."""
    await fleet.wait_ready()
    await wait_for(lambda: state.count("refresh_token", "ok") >= 1)
    refreshed = state.count("refresh_token", "ok")
    state.inject(Fault("delay", delay=6.0))
    await wait_for(lambda: state.count("refresh_token", "ok") > refreshed)
    lease = await probe.link.client.get(probe.lease.key)
    assert lease is not None
    holder = int(lease.decode().split("-", 1)[0])
    return next(p for p in fleet.procs if p.pid == holder)


def renewals_bound(elapsed: float) -> int:
    """The most renewals one process would make in ``elapsed`` seconds: the fleet must do no more."""
    return math.ceil(elapsed / EARLIEST_RENEWAL) + 1


def report(scenario: str, state: AuthServerState, elapsed: float) -> None:
    """One line of figures (shown with ``pytest -s``): what the fleet sent against one process's bound."""
    print(
        f"\nfleet[{scenario}]: {WORKERS} workers using tokens for {elapsed:.1f}s: "
        f"token requests {state.token_requests} "
        f"(password {state.count('password')}, refresh {state.count('refresh_token')}); "
        f"one process would make at most {renewals_bound(elapsed)} in that time; counts {dict(state.counts)}"
    )


def assert_no_reuse(state: AuthServerState) -> None:
    assert state.count("refresh_token", "reuse") == 0, state.counts
    assert state.count("refresh_token", "invalid_grant") == 0, state.counts


async def test_a_fleet_logs_in_once_and_renews_once_per_lifetime(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state = strict_server()
    async with LocalServer(state) as server:
        fleet = Fleet(tmp_path, redis_server.url, namespace, server.token_url)
        fleet.start(seconds=8.0)
        try:
            reports = await fleet.finish()
        finally:
            fleet.kill_all()
        elapsed = fleet.window()
    report("steady", state, elapsed)
    assert all(r is not None and r["errors"] == {} and r["gets"] > 0 for r in reports), reports
    assert_no_reuse(state)
    assert state.count("password") == 1  # one login for the whole fleet
    assert state.token_requests <= renewals_bound(elapsed)  # what one process alone would send
    assert state.count("refresh_token", "ok") >= 1
    # Every request the server saw was sent by exactly one worker, and most workers sent none.
    assert sum(r["token_requests"] for r in reports if r) == state.token_requests
    assert sum(r["adopted"] for r in reports if r) >= WORKERS - 1


async def test_a_lease_holder_killed_mid_refresh_costs_one_login_and_no_reuse(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state = strict_server()
    async with (
        LocalServer(state) as server,
        coordinator(redis_server.url, namespace, credential_key=server.config().credential_key) as probe,
    ):
        fleet = Fleet(tmp_path, redis_server.url, namespace, server.token_url)
        fleet.start(seconds=14.0)
        try:
            # Its holder is killed after the server used the refresh token up, before the answer arrives.
            victim = await holder_of_a_late_refresh(fleet, state, probe)
            before = await generation(probe)
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            takeover = await seconds_until_published_past(probe, before, killed)
            reports = await fleet.finish()
        finally:
            fleet.kill_all()
    elapsed = fleet.window()
    report("holder killed mid-refresh", state, elapsed)
    bound = takeover_bound(30.0)
    print(f"takeover after SIGKILL: {takeover:.2f}s (bound {bound:.2f}s from the config)")
    assert takeover <= bound
    survivors = [r for r in reports if r is not None]
    assert len(survivors) == WORKERS - 1
    assert all(r["longest_get"] <= bound for r in survivors), survivors  # no caller waited longer
    assert_no_reuse(state)
    assert state.count("password", "ok") == 2  # the first login, and one in place of the lost refresh
    assert all(r["errors"] == {} for r in survivors), survivors  # they waited, nobody failed
    assert state.token_requests <= renewals_bound(elapsed) + 1


async def test_a_lease_holder_frozen_mid_refresh_never_sends_its_refresh_token_again(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state = strict_server()
    async with (
        LocalServer(state) as server,
        coordinator(redis_server.url, namespace, credential_key=server.config().credential_key) as probe,
    ):
        fleet = Fleet(tmp_path, redis_server.url, namespace, server.token_url)
        fleet.start(14.0, "2.0")  # a token request times out after 2 s
        try:
            # Its holder is frozen past its lease and its timeout, so on waking its timeout fires first.
            victim = await holder_of_a_late_refresh(fleet, state, probe)
            before = await generation(probe)
            frozen_at = time.monotonic()
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                takeover = await seconds_until_published_past(probe, before, frozen_at)
                await anyio.sleep(max(0.0, 4.0 - (time.monotonic() - frozen_at)))  # past its lease and 2-s timeout
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            reports = await fleet.finish()
        finally:
            fleet.kill_all()
    elapsed = fleet.window()
    report("holder frozen mid-refresh", state, elapsed)
    bound = takeover_bound(2.0)
    print(f"takeover after SIGSTOP: {takeover:.2f}s (bound {bound:.2f}s from the config)")
    assert takeover <= bound
    assert_no_reuse(state)  # the woken holder did not send its refresh token again
    assert state.count("password", "ok") == 2  # the first login, and one in place of the lost refresh
    index = fleet.procs.index(victim)
    assert all(r is not None and r["errors"] == {} for i, r in enumerate(reports) if i != index), reports
    frozen = reports[index]
    assert frozen is not None and set(frozen["errors"]) <= {"TransientTokenError", "TokenTransportError"}
    assert all(r is not None and r["longest_get"] <= bound for i, r in enumerate(reports) if i != index), reports
    assert state.token_requests <= renewals_bound(elapsed) + 1


async def test_redis_restarted_with_its_data_lost_costs_at_most_one_request(
    private_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state = strict_server()
    async with LocalServer(state) as server:
        fleet = Fleet(tmp_path, private_redis.url, namespace, server.token_url)
        fleet.start(seconds=12.0)
        try:
            await fleet.wait_ready()
            await wait_for(lambda: state.count("refresh_token", "ok") >= 1)
            await anyio.to_thread.run_sync(private_redis.restart)
            reports = await fleet.finish()
        finally:
            fleet.kill_all()
        elapsed = fleet.window()
    report("redis restarted", state, elapsed)
    assert_no_reuse(state)
    assert state.count("password", "ok") <= 2  # the shared record is gone: one login instead of a refresh
    assert state.token_requests <= renewals_bound(elapsed) + 1
    for r in reports:
        assert r is not None and r["ok_after_last_error"] > 0
        assert set(r["errors"]) <= {"CoordinatorUnavailable"}, r


async def test_an_unreachable_redis_serves_valid_tokens_then_fails_typed_and_recovers(
    private_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state = strict_server()
    async with LocalServer(state) as server:
        fleet = Fleet(tmp_path, private_redis.url, namespace, server.token_url)
        fleet.start(seconds=16.0)
        try:
            await fleet.wait_ready()
            await wait_for(lambda: state.count("refresh_token", "ok") >= 1)
            before = state.token_requests
            private_redis.freeze()  # longer than a token lives: nobody may renew without the lease
            try:
                await anyio.sleep(2 * LIFETIME)
                during = state.token_requests - before
            finally:
                private_redis.thaw()
            reports = await fleet.finish()
        finally:
            fleet.kill_all()
    elapsed = fleet.window()
    report("redis unreachable 6s", state, elapsed)
    assert during <= 1  # at most a refresh already under way when Redis stopped answering
    assert state.token_requests <= renewals_bound(elapsed) + 1
    assert_no_reuse(state)
    assert state.count("password", "ok") <= 2
    for r in reports:
        assert r is not None
        assert set(r["errors"]) == {"CoordinatorUnavailable"}, r  # typed, once the token ran out
        assert r["ok_after_last_error"] > 0  # and back to work after Redis answered again
