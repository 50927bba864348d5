"""A partition that fails for good, and workers that stop: no claim is left behind, no worker wasted on it.

A walk the API refuses for good (a 404, retries run out, a page of the wrong shape) marks its
partition failed with the error, for every worker to see, and the worker goes on with the others:
the fleet finishes incomplete. A worker that stops for any other reason (its own error, a
cancellation) claims nothing more and gives back every claim it holds, started or not, so no
partition is owned by a worker that has exited. An error of the crawler's own code may be the
partition's or the worker's: the claim counts, so ``max_claims`` bounds the workers it can stop.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import ListSink, Partition
from oauthpw_async.crawler.checkpoint import fingerprint
from oauthpw_async.crawler.pagination import resolve
from oauthpw_async.errors import UsageError
from oauthpw_async.fleet import FleetCheckpoints, FleetCrawl
from oauthpw_async.fleet.partitions import Claim, FleetStatus
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import DemoAPI

from .clocks import RecordingClock, until
from .crawlers import PAGE, PROJECTS, FleetItems
from .helpers import TOKEN_KEY, coordinator
from .procs import ROOT
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

PER_PROJECT = 5 * PAGE
#: Far longer than any test: a claim left behind would hold its partition for that long.
IDLE = 600.0
#: Upper bound for one worker: only a hang (a partition waiting out the idle timeout) hits it.
BOUND = 120.0
#: For tests with HTTP: the engine and the local servers run on aiohttp.
ON_ASYNCIO = pytest.mark.parametrize("anyio_backend", ["asyncio"])
#: The partition whose records' detail link is broken from its third page on (a 404 mid-walk).
BROKEN = "p5"


def _stuck(status: FleetStatus) -> list[tuple[str, str | None]]:
    """Partitions running with an owner: after every worker has exited, none may be."""
    return [(p.name, p.owner) for p in status.partitions if p.state == "running" or p.owner is not None]


# --- one worker's claims, without HTTP (asyncio and trio) ------------------------------------------------


def _partitions() -> list[Partition]:
    return [Partition(p, {"project": p}) for p in PROJECTS]


async def _joined(fleet: Any, consumer: str, **options: Any) -> FleetCheckpoints:
    cp = FleetCheckpoints(fleet.link, "items", cipher=fleet.cipher, consumer=consumer, idle_timeout=IDLE, **options)
    crawler = FleetItems(base_url="http://127.0.0.1:9")
    await cp.open(fingerprint(crawler, resolve(crawler.pagination), list(PROJECTS), ListSink()))
    return cp


@pytest.mark.parametrize("moment", ["before its answer was read", "before the walks began"])
async def test_a_worker_cancelled_while_holding_claims_gives_every_one_back(
    redis_server: RedisServer, namespace: str, moment: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        cp = await _joined(fleet, "leaving", partitions_at_once=4)
        real_claim = cp.queue.claim
        granted: list[Claim] = []
        walked: list[str] = []

        with anyio.CancelScope() as scope:

            async def claim_then_stop(count: int = 1) -> list[Claim]:
                claims = await real_claim(count)  # granted in Redis
                granted.extend(claims)
                scope.cancel()  # the worker is told to stop (a signal, its caller gives up)
                if moment == "before its answer was read":
                    await anyio.lowlevel.checkpoint()  # where reading the answer would take a cancellation
                return claims

            async def walk(partition: Partition) -> None:
                walked.append(partition.name)
                await anyio.sleep_forever()

            cp.queue.claim = claim_then_stop  # type: ignore[method-assign]
            await cp.walk_partitions(_partitions(), walk)
        assert scope.cancelled_caught
        assert len(granted) == 4
        status = await cp.queue.status()
        assert _stuck(status) == []
        assert {p.state for p in status.partitions} == {"queued"}
        assert {p.claims for p in status.partitions} == {0}  # given back, not counted as claims
        # Another worker gets all of them at once: none waits for the idle timeout.
        other = await _joined(fleet, "next", partitions_at_once=len(PROJECTS))
        assert sorted(c.partition for c in await other.queue.claim(len(PROJECTS))) == sorted(PROJECTS)
    assert set(walked) <= {c.partition for c in granted}


async def test_claims_a_worker_never_starts_are_given_back(redis_server: RedisServer, namespace: str) -> None:
    """The fleet hands out a partition this worker cannot walk: it stops before starting any of its batch."""
    async with coordinator(redis_server.url, namespace) as fleet:
        cp = await _joined(fleet, "odd", partitions_at_once=4)
        walked: list[str] = []

        async def walk(partition: Partition) -> None:
            walked.append(partition.name)

        with pytest.RaisesGroup(pytest.RaisesExc(UsageError, match="does not have"), flatten_subgroups=True):
            await cp.walk_partitions(_partitions()[1:], walk)  # the queue's first partition is not among them
        status = await cp.queue.status()
    assert walked == [] and _stuck(status) == []
    assert {p.state for p in status.partitions} == {"queued"} and {p.claims for p in status.partitions} == {0}


async def test_a_worker_stopped_by_its_own_error_claims_nothing_more_and_gives_its_claim_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """The failing walk's give-back takes a while; meanwhile the worker must not claim (it would claim the same one)."""
    clock = RecordingClock()
    poll = 1.0  # the claim loop's poll: a quarter of the idle timeout, at most a second
    async with coordinator(redis_server.url, namespace) as fleet:
        cp = await _joined(fleet, "w0", partitions_at_once=2, clock=clock)
        real_claim, real_release = cp.queue.claim, cp.queue.release
        failed = False
        claimed_after_failure: list[Claim] = []

        async def claim(count: int = 1) -> list[Claim]:
            claims = await real_claim(count)
            if failed:
                claimed_after_failure.extend(claims)
            return claims

        async def slow_release(claim: Claim, *, error: str | None = None) -> None:
            await real_release(claim, error=error)
            # Back in the queue, and the worker's claim loop polls (on its clock) meanwhile: each round
            # wakes the loop's wait and lets it wait again (the first may only find it about to wait).
            for _ in range(2):
                polls = clock.slept.count(poll)
                clock.advance(poll)
                await until(lambda polls=polls: clock.slept.count(poll) > polls)

        async def walk(partition: Partition) -> None:
            nonlocal failed
            if partition.name != "p0":
                return
            while len(cp.finished) < len(PROJECTS) - 1:  # the others are walked first
                await anyio.sleep(0.01)
            failed = True
            raise OSError(28, "No space left on device")  # the worker's disk, not the partition

        cp.queue.claim = claim  # type: ignore[method-assign]
        cp.queue.release = slow_release  # type: ignore[method-assign]
        with pytest.RaisesGroup(OSError, flatten_subgroups=True), anyio.fail_after(BOUND):
            await cp.walk_partitions(_partitions(), walk)
        assert claimed_after_failure == []
        status = await cp.queue.status()
        assert _stuck(status) == []
        p0 = next(p for p in status.partitions if p.name == "p0")
        assert (p0.state, p0.claims, p0.reason) == ("queued", 0, None)  # the worker's error: not counted
        assert status.count("done") == len(PROJECTS) - 1


async def test_an_error_of_the_crawlers_code_counts_and_fails_the_partition_after_max_claims(
    redis_server: RedisServer, namespace: str
) -> None:
    """It may be the partition's (a record the parser chokes on) or the worker's: bounded, and named."""
    secret = "Bearer eyJhbGciOi.secret-value"
    async with coordinator(redis_server.url, namespace) as fleet:

        async def walk(partition: Partition) -> None:
            if partition.name == "p3":
                raise ValueError(f"cannot parse record 7 (sent Authorization: {secret}, password=hunter2)")

        for i in range(2):
            cp = await _joined(fleet, f"w{i}", partitions_at_once=len(PROJECTS), max_claims=2)
            with pytest.RaisesGroup(ValueError, flatten_subgroups=True), anyio.fail_after(BOUND):
                await cp.walk_partitions(_partitions(), walk)
            status = await cp.queue.status()
            assert _stuck(status) == []
            p3 = next(p for p in status.partitions if p.name == "p3")
            assert (p3.state, p3.claims) == ("queued", i + 1)
            assert p3.reason is not None and p3.reason.startswith("ValueError: cannot parse record 7")
        last = await _joined(fleet, "w2", partitions_at_once=len(PROJECTS), max_claims=2)
        with anyio.fail_after(BOUND):
            await last.walk_partitions(_partitions(), walk)  # p3 is failed at its third claim, unwalked
        status = await last.queue.status()
    assert status.finished and not status.complete and _stuck(status) == []
    assert status.count("done") == len(PROJECTS) - 1
    p3 = next(p for p in status.partitions if p.name == "p3")
    assert p3.state == "failed" and p3.reason is not None
    assert p3.reason.startswith("claimed 2 times without finishing")
    assert "last error: ValueError: cannot parse record 7" in p3.reason
    assert "secret-value" not in p3.reason and "hunter2" not in p3.reason
    assert last.is_done("p3") and last.problems("p3") == [p3.reason]


# --- the whole crawl over HTTP (asyncio: the engine's HTTP is aiohttp) ------------------------------------


class PoisonedItems(FleetItems):
    """Eight projects plus ``gone`` (the API answers 404: no such project), and ``p5`` whose third page fails.

    ``p5``'s records from the third page on link to a detail the API does not have (a 404 mid-walk).
    Clear :attr:`broken` once the source is fixed.
    """

    broken = True

    def partitions(self) -> Iterable[Partition]:
        return [*super().partitions(), Partition("gone", {"project": "nope", "limit": str(PAGE)})]

    def detail(self, record: Any) -> str | None:
        in_project = record["id"] % PER_PROJECT
        if self.broken and record["project"] == BROKEN and in_project == 2 * PAGE:
            return "/api/items/-1"
        return None


def demo_api() -> DemoAPI:
    return DemoAPI(projects=PROJECTS, per_project=PER_PROJECT, max_page_size=PAGE)


def reachable_ids(api: DemoAPI) -> set[int]:
    """Every record but ``p5``'s from its third page on."""
    start = PROJECTS.index(BROKEN) * PER_PROJECT
    return api.expected_ids() - set(range(start + 2 * PAGE, start + PER_PROJECT))


def assert_poisoned(status: FleetStatus) -> None:
    assert status.finished and not status.complete and _stuck(status) == []
    states = {p.name: p.state for p in status.partitions}
    assert states == {**{p: "done" for p in PROJECTS if p != BROKEN}, BROKEN: "failed", "gone": "failed"}
    by_name = {p.name: p for p in status.partitions}
    gone, broken = by_name["gone"], by_name[BROKEN]
    assert gone.claims == 1 and broken.claims == 1  # failed at the first claim, never claimed again
    assert gone.reason is not None and gone.reason.startswith("HTTPStatusError: request failed: HTTP 404")
    assert "unknown project nope" in gone.reason and gone.position is None
    assert broken.reason is not None and "HTTP 404" in broken.reason and "/api/items/-1" in broken.reason
    assert broken.position["pages"] == 2 and broken.position["next"] is not None  # resumable from page 3


def assert_incomplete(stats: Any) -> None:
    assert not stats.complete and set(stats.incomplete) == {"gone", BROKEN}
    assert all("HTTP 404" in " ".join(why) for why in stats.incomplete.values())


@ON_ASYNCIO
async def test_a_partition_the_api_refuses_fails_once_and_later_workers_have_nothing_to_do(
    redis_server: RedisServer, namespace: str
) -> None:
    api = demo_api()
    async with (
        LocalServer(AuthServerState(), api=api) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(redis_server.url, namespace) as fleet,
    ):
        sinks: list[ListSink] = []
        requests: list[int] = []
        for i in range(3):
            crawl = FleetCrawl(fleet, "items", consumer=f"w{i}", partitions_at_once=2, idle_timeout=IDLE, max_claims=3)
            sinks.append(ListSink())
            with anyio.fail_after(BOUND):
                stats = await crawl.run(PoisonedItems(base_url=server.base_url), tokens, sinks[-1])
            requests.append(sum(api.counts.values()))
            assert_incomplete(stats)
            assert_poisoned(await crawl.status())
            if i == 0:
                assert sorted(crawl.checkpoints.failed) == sorted(["gone", BROKEN])
    assert requests[0] == requests[1] == requests[2]  # the first worker did it all; nobody tried them again
    seen = Counter(r["id"] for s in sinks for r in s.records)
    assert set(seen) == reachable_ids(api) and max(seen.values()) == 1


@ON_ASYNCIO
async def test_workers_at_once_crawl_every_other_partition_and_the_failed_ones_can_be_queued_again(
    redis_server: RedisServer, namespace: str
) -> None:
    api = demo_api()
    async with (
        LocalServer(AuthServerState(), api=api) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(redis_server.url, namespace) as fleet,
    ):
        crawls = [
            FleetCrawl(fleet, "items", consumer=f"w{i}", partitions_at_once=2, idle_timeout=IDLE, max_claims=3)
            for i in range(3)
        ]
        sinks = [ListSink() for _ in crawls]
        results: list[Any] = [None] * len(crawls)

        async def work(i: int) -> None:
            results[i] = await crawls[i].run(PoisonedItems(base_url=server.base_url), tokens, sinks[i])

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for i in range(len(crawls)):
                    tg.start_soon(work, i)
        for stats in results:  # every worker finished (none died on the poison), each says what is missing
            assert_incomplete(stats)
        status = await crawls[0].status()
        assert_poisoned(status)
        assert sorted(n for c in crawls for n in c.checkpoints.failed) == sorted(["gone", BROKEN])
        seen = Counter(r["id"] for s in sinks for r in s.records)
        assert set(seen) == reachable_ids(api) and max(seen.values()) == 1

        # The source is fixed; the failed partitions are queued again and one more worker finishes the crawl.
        api.projects = (*PROJECTS, "nope")
        assert sorted(await crawls[0].requeue_failed()) == sorted(["gone", BROKEN])
        again = await crawls[0].status()
        by_name = {p.name: p for p in again.partitions}
        assert {(by_name[n].state, by_name[n].claims, by_name[n].reason) for n in ("gone", BROKEN)} == {
            ("queued", 0, None)
        }
        assert by_name[BROKEN].position["pages"] == 2  # resumes where it failed
        assert await crawls[0].requeue_failed() == []  # nothing failed any more
        fixed = PoisonedItems(base_url=server.base_url)
        fixed.broken = False
        last = ListSink()
        with anyio.fail_after(BOUND):
            stats = await FleetCrawl(fleet, "items", consumer="w3", idle_timeout=IDLE).run(fixed, tokens, last)
        final = await crawls[0].status()
    assert stats.complete and final.complete and _stuck(final) == []
    seen.update(r["id"] for r in last.records)
    assert set(seen) == api.expected_ids() and max(seen.values()) == 1  # p5 from page 3: nothing read twice


@ON_ASYNCIO
async def test_a_requeued_partition_walked_to_its_end_is_read_from_its_start(
    redis_server: RedisServer, namespace: str
) -> None:
    """Failed for its completeness problems (a page budget), not an error: a resume would read nothing."""

    class Budgeted(FleetItems):
        max_pages = 2

    api = demo_api()
    async with (
        LocalServer(AuthServerState(), api=api) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(redis_server.url, namespace) as fleet,
    ):
        crawl = FleetCrawl(fleet, "budget", idle_timeout=IDLE)
        await crawl.run(Budgeted(base_url=server.base_url), tokens, ListSink())
        assert await crawl.requeue_failed(["p0", "p1", "no-such-partition"]) == ["p0", "p1"]
        status = await crawl.status()
        sink = ListSink()
        # The same crawler (the budget is part of the crawl): p0 and p1 are read again from their start.
        await FleetCrawl(fleet, "budget", idle_timeout=IDLE).run(Budgeted(base_url=server.base_url), tokens, sink)
    by_name = {p.name: p for p in status.partitions}
    assert by_name["p0"].state == "queued" and by_name["p0"].position is None
    assert by_name["p2"].state == "failed"
    assert Counter(r["project"] for r in sink.records) == {"p0": 2 * PAGE, "p1": 2 * PAGE}


# --- the command line ---------------------------------------------------------------------------------------


async def _command(*args: str) -> tuple[int, str, str]:
    proc = await anyio.run_process(
        [sys.executable, "-m", "oauthpw_async", *args],
        cwd=ROOT,
        env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY},
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@ON_ASYNCIO
async def test_command_workers_exit_incomplete_and_fleet_status_names_the_failure(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    api = demo_api()
    async with LocalServer(AuthServerState(), api=api) as server:
        a = server.auth
        config = tmp_path / "connection.json"
        config.write_text(
            json.dumps(
                {
                    "Access Token URL": server.token_url,
                    "Client Id": a.client_id,
                    "Client Secret": a.client_secret,
                    "Username": a.username,
                    "Password": a.password,
                }
            )
        )
        where = ["--coordinator", redis_server.url, "--namespace", namespace, "--crawl-name", "items"]
        with anyio.fail_after(BOUND * 2):
            code, out, err = await _command(
                "crawl", "--config", str(config), "--crawler", "tests.fleet.test_poison:PoisonedItems",
                "--base-url", server.base_url, *where, "--idle-timeout", str(IDLE), "--partitions-at-once", "2",
                "--workers", "2", "--out", str(tmp_path / "records.jsonl"),
            )  # fmt: skip
            assert code == 8, out + err
            assert "exited with [8, 8]" in out
            code, text, _ = await _command("fleet", "status", *where)
            code_json, doc_text, _ = await _command("fleet", "status", *where, "--json")
            code_reset, reset_out, reset_err = await _command("fleet", "reset", *where, "--failed")
            _, after_text, _ = await _command("fleet", "status", *where, "--json")
        secrets = [a.password, a.client_secret, *a._access, *a._refresh_tokens]
        assert not any(s in out + err + text + doc_text + reset_out for s in secrets)
    assert code == code_json == 0
    assert "finished INCOMPLETE (2 partition(s) missing records)" in text
    lines = text.splitlines()
    gone = next(i for i, line in enumerate(lines) if line.split()[:2] == ["gone", "failed"])
    assert "problem: HTTPStatusError: request failed: HTTP 404" in lines[gone + 1]
    doc = json.loads(doc_text)
    failed = {p["name"]: p for p in doc["partitions"] if p["state"] == "failed"}
    assert set(failed) == {"gone", BROKEN} and doc["finished"] and not doc["complete"]
    assert all("HTTP 404" in p["reason"] and p["owner"] is None and p["claims"] == 1 for p in failed.values())
    assert code_reset == 0, reset_err
    assert "queued 2 failed partition(s) again" in reset_out
    after = json.loads(after_text)
    assert {p["name"]: p["state"] for p in after["partitions"] if p["state"] != "done"} == {
        "gone": "queued",
        BROKEN: "queued",
    }
