"""An incremental crawl run by a fleet of real OS processes on a real Redis, with a worker SIGKILLed in round 2.

Three worker processes (tests/fleet/workers.py, role ``incremental``) crawl four changing sources
(tests/fleet/changing.py) served by this process; the sources change between the rounds. After
round 2 the replica built from every worker's output of both rounds equals every source, and
round 2 made a small fraction of round 1's requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from oauthpw_async.fleet import FleetCrawl
from oauthpw_async.fleet._redis import RedisLink
from oauthpw_async.fleet.partitions import FleetStatus
from oauthpw_async.testing import AuthServerState, LocalServer

from .changing import PAGE, SOURCES, Sources
from .helpers import TOKEN_KEY
from .procs import ROOT, WORKER_TIMEOUT, kill9, read_until, spawn
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

RECORDS = 400  # per source: 20 pages each in a full round
IDLE = 1.5  # seconds: the workers' idle timeout (a killed worker's partition is taken over after it)
#: Answers are this slow until every worker holds a partition: none can finish a round before the
#: last one has joined it, however slowly a process starts on a loaded machine.
SETUP_LATENCY = 0.5
BOUND = WORKER_TIMEOUT  # seconds: only a hang hits this


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server runs in this process, on aiohttp


async def status(url: str, namespace: str) -> FleetStatus:
    async with RedisLink(url, namespace=namespace) as link:
        return await FleetCrawl(link, "changes", token_key=TOKEN_KEY).status()


def owned_by(proc: subprocess.Popen[str], owner: str | None) -> bool:
    return owner is not None and f"-{proc.pid}-" in owner


class Round:
    """Three worker processes of one round, each with its own output."""

    def __init__(self, tmp: Path, number: int, server: LocalServer, redis: RedisServer, namespace: str) -> None:
        self.outputs = [tmp / f"round{number}-w{i}.jsonl" for i in range(3)]
        name = f"round-{number}"  # the three workers work in one round, however late one starts
        where = (redis.url, namespace, server.base_url, server.token_url)
        self.procs = [spawn("incremental", *where, str(out), str(IDLE), name) for out in self.outputs]
        for proc in self.procs:
            read_until(proc, "pid")  # each process runs before the test acts

    def records(self) -> list[Any]:
        """Every worker's output (a torn last line of the killed worker is not a record)."""
        out = []
        for path in self.outputs:
            if path.exists():
                for line in path.read_bytes().split(b"\n"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    async def all_claiming(self, url: str, namespace: str, round_: int) -> None:
        """Wait until each of the three workers holds a partition of round ``round_``."""
        with anyio.fail_after(BOUND):
            while True:
                s = await status(url, namespace)
                if s.round == round_ and all(any(owned_by(p, x.owner) for x in s.partitions) for p in self.procs):
                    return
                await anyio.sleep(0.02)

    async def kill_mid_partition(self, url: str, namespace: str, name: str | None, pages: int) -> str:
        """SIGKILL the worker walking partition ``name`` (any, if ``None``) once it committed ``pages`` pages."""
        with anyio.fail_after(BOUND):
            while True:
                s = await status(url, namespace)
                for p in s.partitions:
                    position = p.position or {}
                    walking = position.get("pages", 0) >= pages and position.get("next") is not None
                    if walking and (name is None or p.name == name):
                        victim = next((proc for proc in self.procs if owned_by(proc, p.owner)), None)
                        if victim is not None:
                            kill9(victim)
                            return p.name
                await anyio.sleep(0.01)

    def finish(self) -> list[dict[str, Any]]:
        """Wait for the workers still alive; each must exit 0. Returns their last events."""
        last = []
        for proc in self.procs:
            if proc.returncode is not None:  # the killed one
                continue
            out, err = proc.communicate(timeout=BOUND)
            assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err[-3000:]}"
            last.append(json.loads(out.splitlines()[-1]))
        return last

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_three_workers_run_two_incremental_rounds_with_a_worker_killed_in_the_second(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    url = redis_server.url
    async with LocalServer(AuthServerState(token_lifetime=300), api=sources) as server:
        rounds: list[Round] = []
        try:
            # Round 1 (full).
            for api in sources.apis.values():
                api.latency = SETUP_LATENCY
            first = Round(tmp_path, 1, server, redis_server, namespace)
            rounds.append(first)
            await first.all_claiming(url, namespace, 1)
            for api in sources.apis.values():
                api.latency = 0.02
            await anyio.to_thread.run_sync(first.finish)
            after_first = await status(url, namespace)
            full = sources.requests()

            # Between the rounds: about 1% of each source changes, and s1 changes enough for 4 pages.
            sources.time += 900
            for name, api in sources.apis.items():
                api.update(range(1, 3 * PAGE + 1 if name == "s1" else 5))
                api.create(2)

            # Round 2 (incremental): the worker walking s1 dies after its first page.
            for api in sources.apis.values():
                api.latency = SETUP_LATENCY
            second = Round(tmp_path, 2, server, redis_server, namespace)
            rounds.append(second)
            await second.all_claiming(url, namespace, 2)
            for api in sources.apis.values():
                api.latency = 0.15
            killed_second = await second.kill_mid_partition(url, namespace, "s1", pages=1)
            events = await anyio.to_thread.run_sync(second.finish)
            after_second = await status(url, namespace)
        finally:
            for r in rounds:
                r.kill_all()
    incremental = sources.requests() - full
    print(f"\nround 1: {full} requests; round 2 (a worker killed): {incremental} requests")  # the README's figures

    assert after_first.complete
    assert killed_second == "s1"
    assert after_second.complete and after_second.round == 2  # one round 2, not one per worker
    assert [p.claims for p in after_second.partitions if p.name == "s1"] == [2]  # taken over
    assert {n for e in events for n in e["finished"]} | {"s1"} >= set(SOURCES)
    assert sources.differences([first.records(), second.records()]) == {}
    # Round 2 reads what changed: a page per partition, four for s1, and the page the kill cut short.
    assert incremental <= full * 0.15, (incremental, full)


async def test_the_command_runs_an_incremental_crawl_as_a_fleet_round_after_round(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS // 4)
    async with LocalServer(AuthServerState(token_lifetime=300), api=sources) as server:
        conf = tmp_path / "connection.json"
        a = server.auth
        conf.write_text(
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
        outputs: list[Path] = []
        answers = []
        for number in (1, 2):
            if number == 2:
                sources.time += 900
                for api in sources.apis.values():
                    api.update([3, 7])
                    api.create(1)
            out = tmp_path / f"round{number}.jsonl"
            proc = await anyio.run_process(
                [
                    sys.executable, "-m", "oauthpw_async", "crawl",
                    "--config", str(conf),
                    "--crawler", "tests.fleet.changing:ChangingSources",
                    "--base-url", server.base_url,
                    "--coordinator", redis_server.url,
                    "--namespace", namespace,
                    "--crawl-name", "changes",
                    "--workers", "2",
                    "--out", str(out),
                ],
                cwd=ROOT,
                env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY},
                check=False,
            )  # fmt: skip
            answers.append(proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace"))
            assert proc.returncode == 0, answers[-1]
            outputs += [tmp_path / f"round{number}-w{i}.jsonl" for i in range(2)]
            if number == 1:
                full = sources.requests()
        shown = await anyio.run_process(
            [
                sys.executable, "-m", "oauthpw_async", "fleet", "status", "--json",
                "--coordinator", redis_server.url,
                "--namespace", namespace,
                "--crawl-name", "changes",
            ],
            cwd=ROOT,
            env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY},
        )  # fmt: skip
    held = [[json.loads(line) for line in path.read_bytes().splitlines()] for path in outputs if path.exists()]
    assert sources.differences(held) == {}
    doc = json.loads(shown.stdout)
    assert doc["round"] == 2 and doc["complete"]
    assert "incremental round 2, every partition from its cursor" in answers[1], answers[1]
    assert sources.requests() - full == len(SOURCES)  # two updates and a creation per source: one page each
