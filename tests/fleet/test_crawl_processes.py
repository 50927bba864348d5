"""A fleet crawl with real OS processes: `python -m oauthpw_async crawl --coordinator ...` workers, one real
Redis, one local authorization server (rotating refresh tokens, reuse detection) and DemoAPI in the test process.

A worker killed with SIGKILL mid-crawl, a worker frozen (SIGSTOP) past the idle timeout and resumed,
Redis restarted with its data lost, and `crawl --workers N` with `fleet status`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest

from oauthpw_async.fleet import FleetCrawl
from oauthpw_async.fleet._redis import RedisLink
from oauthpw_async.fleet.partitions import FleetStatus
from oauthpw_async.testing import AuthServerState, LocalServer, Quirks
from oauthpw_async.testing.api import DemoAPI

from .crawlers import PAGE, PROJECTS
from .helpers import TOKEN_KEY
from .procs import ROOT
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

CRAWLER = "tests.fleet.crawlers:FleetItems"
PER_PROJECT = 20 * PAGE  # 20 pages per partition, 160 pages in all
LATENCY = 0.03  # seconds per API answer: a worker is mid-partition for a while
#: Until the fault: slow enough that the workers already walking cannot finish the crawl before the
#: next one has started, however slowly a process starts on a loaded machine (a partition takes 8 s).
SETUP_LATENCY = 0.4
LIFETIME = 3.0  # seconds: tokens are refreshed (rotating) during the crawl
#: A token turns stale no earlier than this into its life (skew 5 %, margin at most 25 % + 20 % jitter).
EARLIEST_RENEWAL = LIFETIME * (1 - 0.05 - 0.25 * 1.2)
IDLE = 1.5  # seconds: the workers' idle timeout
AT_ONCE = 2  # partitions each worker walks at once
BOUND = 300.0  # seconds: only a hang hits this


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server runs in this process, on aiohttp


def strict_server() -> AuthServerState:
    return AuthServerState(
        token_lifetime=LIFETIME, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True), lockout_after=3
    )


class Workers:
    """Worker processes of one fleet crawl; each its own output, summary (stdout) and log (stderr)."""

    def __init__(self, tmp: Path, server: LocalServer, redis_url: str, namespace: str) -> None:
        self.tmp, self.server, self.redis_url, self.namespace = tmp, server, redis_url, namespace
        self.procs: list[subprocess.Popen[bytes]] = []
        self.config = tmp / "connection.json"
        a = server.auth
        self.config.write_text(
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
        self.started = anyio.current_time()

    def args(self, *extra: str) -> list[str]:
        return [
            "crawl",
            "--config", str(self.config),
            "--crawler", CRAWLER,
            "--base-url", self.server.base_url,
            "--coordinator", self.redis_url,
            "--namespace", self.namespace,
            "--crawl-name", "items",
            "--idle-timeout", str(IDLE),
            "--partitions-at-once", str(AT_ONCE),
            "--concurrency", "4",
            *extra,
        ]  # fmt: skip

    def start(self, count: int, *extra: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            i = len(self.procs)
            proc = subprocess.Popen(
                [sys.executable, "-m", "oauthpw_async", "-v", *self.args("--out", str(self.out(i)), *extra)],
                cwd=ROOT,
                stdout=open(self.tmp / f"w{i}.out", "wb"),  # noqa: SIM115 - the child owns it
                stderr=open(self.tmp / f"w{i}.err", "wb"),  # noqa: SIM115
                env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY},
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def out(self, i: int) -> Path:
        return self.tmp / f"records-w{i}.jsonl"

    def log(self, i: int) -> str:
        return (self.tmp / f"w{i}.err").read_text(errors="replace")

    def summary(self, i: int) -> str:
        return (self.tmp / f"w{i}.out").read_text(errors="replace")

    def index(self, proc: subprocess.Popen[bytes]) -> int:
        return self.procs.index(proc)

    async def start_walking(self, count: int) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` workers one after another, each once the previous one is mid-partition.

        However slowly a process starts on a loaded machine, each worker then holds partitions
        when the test acts.
        """
        started = []
        for _ in range(count):
            (proc,) = self.start(1)
            await wait_until_walking(self.redis_url, self.namespace, proc, pages=2)
            started.append(proc)
        return started

    async def wait(self, procs: list[subprocess.Popen[bytes]] | None = None) -> list[int]:
        procs = self.procs if procs is None else procs
        with anyio.fail_after(BOUND):
            while any(p.poll() is None for p in procs):
                await anyio.sleep(0.05)
        return [p.returncode for p in procs]

    def records(self) -> Counter[int]:
        """Record ids over every worker's output (a torn last line of a killed worker is not a record)."""
        seen: Counter[int] = Counter()
        for i in range(len(self.procs)):
            path = self.out(i)
            if not path.exists():
                continue
            for line in path.read_bytes().split(b"\n"):
                with contextlib.suppress(ValueError):
                    seen[json.loads(line)["id"]] += 1
        return seen

    def describe(self) -> str:
        return "\n".join(f"--- worker {i} ({p.returncode}):\n{self.log(i)[-3000:]}" for i, p in enumerate(self.procs))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()


async def status(url: str, namespace: str) -> FleetStatus:
    async with RedisLink(url, namespace=namespace) as link:
        return await FleetCrawl(link, "items", token_key=TOKEN_KEY).status()


def owned_by(proc: subprocess.Popen[bytes], owner: str | None) -> bool:
    return owner is not None and f"-{proc.pid}-" in owner


async def wait_until_walking(url: str, namespace: str, proc: subprocess.Popen[bytes], pages: int) -> FleetStatus:
    """Wait until ``proc`` holds a partition it has committed at least ``pages`` pages of."""
    with anyio.fail_after(BOUND):
        while True:
            assert proc.poll() is None, "the worker ended before it was caught mid-crawl"
            s = await status(url, namespace)
            if any(owned_by(proc, p.owner) and (p.position or {}).get("pages", 0) >= pages for p in s.partitions):
                return s
            await anyio.sleep(0.02)


def renewals_bound(elapsed: float) -> int:
    """The most renewals one process would make in ``elapsed`` seconds: a fleet must do no more."""
    return math.ceil(elapsed / EARLIEST_RENEWAL) + 1


def assert_tokens(state: AuthServerState, elapsed: float, faults: int) -> None:
    assert state.count("refresh_token", "reuse") == 0, state.counts
    assert state.count("refresh_token", "invalid_grant") == 0, state.counts
    assert state.token_requests <= renewals_bound(elapsed) + faults, (state.counts, elapsed)


def duplicates(seen: Counter[int]) -> int:
    return sum(n - 1 for n in seen.values())


def report(scenario: str, state: AuthServerState, elapsed: float, seen: Counter[int]) -> None:
    """One line of figures (shown with ``pytest -s``)."""
    print(
        f"\nfleet crawl[{scenario}]: {elapsed:.1f}s, {len(seen):,} records, {duplicates(seen)} written twice; "
        f"token requests {state.token_requests} (password {state.count('password')}, "
        f"refresh {state.count('refresh_token')}), one process alone at most {renewals_bound(elapsed)}; "
        f"reuse detections {state.count('refresh_token', 'reuse')}"
    )


def api(latency: float = LATENCY) -> DemoAPI:
    return DemoAPI(projects=PROJECTS, per_project=PER_PROJECT, max_page_size=PAGE, latency=latency)


async def test_a_worker_killed_mid_crawl_is_taken_over_from_its_last_checkpoint(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state, demo = strict_server(), api(SETUP_LATENCY)
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, redis_server.url, namespace)
        try:
            victim, *others = await workers.start_walking(3)
            demo.latency = LATENCY
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            # What the victim held at its death, and its last checkpoints (nobody may take them for IDLE s).
            at_death = await status(redis_server.url, namespace)
            held = {
                p.name: (p.position or {}).get("pages", 0) for p in at_death.partitions if owned_by(victim, p.owner)
            }
            codes = await workers.wait(others)
        finally:
            workers.kill_all()
        elapsed = anyio.current_time() - workers.started
        final = await status(redis_server.url, namespace)
    assert codes == [0, 0], workers.describe()
    assert final.complete
    seen = workers.records()
    report("a worker killed", state, elapsed, seen)
    assert set(seen) == demo.expected_ids(), workers.describe()
    # Written twice only: what the victim wrote after its last checkpoint, at most one page per partition it held.
    assert duplicates(seen) <= AT_ONCE * PAGE
    per_project = {name: range(i * PER_PROJECT, (i + 1) * PER_PROJECT) for i, name in enumerate(PROJECTS)}
    assert all(any(rid in per_project[name] for name in held) for rid, n in seen.items() if n > 1)
    taken = {p.name: p for p in final.partitions if p.name in held}
    assert held and all(p.claims == 2 for p in taken.values())  # each taken over once, not restarted
    logs = "".join(workers.log(workers.index(p)) for p in others)
    resumed = {m[0]: int(m[1]) for m in re.findall(r"partition (\S+): taken over \(claim 2\) from page (\d+)", logs)}
    assert resumed == held  # each resumed from the victim's last checkpoint, not from its start
    for p in others:
        summary = workers.summary(workers.index(p))
        assert "completeness       complete" in summary and "COMPLETE" in summary
    assert_tokens(state, elapsed, faults=1)


async def test_a_frozen_worker_resumed_after_the_takeover_cannot_move_the_new_owners_positions(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state, demo = strict_server(), api(SETUP_LATENCY)
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, redis_server.url, namespace)
        try:
            frozen, other = await workers.start_walking(2)
            os.kill(frozen.pid, signal.SIGSTOP)
            demo.latency = LATENCY
            held = {p.name for p in (await status(redis_server.url, namespace)).partitions if owned_by(frozen, p.owner)}
            # Wait for the other worker to take every frozen partition over and move it on.
            with anyio.fail_after(BOUND):
                while True:
                    s = await status(redis_server.url, namespace)
                    mine = {p.name: p for p in s.partitions if p.name in held}
                    if all(owned_by(other, p.owner) or p.state == "done" for p in mine.values()):
                        break
                    await anyio.sleep(0.05)
            os.kill(frozen.pid, signal.SIGCONT)
            # From now on no position of those partitions may go back, nor be owned by the frozen worker.
            last: dict[str, int] = {}
            while frozen.poll() is None or other.poll() is None:
                for p in (await status(redis_server.url, namespace)).partitions:
                    if p.name in held:
                        pages = (p.position or {}).get("pages", 0)
                        assert pages >= last.get(p.name, 0), f"{p.name} went back from {last[p.name]} to {pages}"
                        assert not owned_by(frozen, p.owner), f"{p.name} is owned by the resumed worker again"
                        last[p.name] = pages
                await anyio.sleep(0.01)
            codes = await workers.wait()
        finally:
            workers.kill_all()
        elapsed = anyio.current_time() - workers.started
        final = await status(redis_server.url, namespace)
    assert codes == [0, 0], workers.describe()
    assert final.complete and all(last[name] == PER_PROJECT // PAGE for name in held)
    seen = workers.records()
    report("a worker frozen past the idle timeout", state, elapsed, seen)
    assert set(seen) == demo.expected_ids()
    assert duplicates(seen) <= AT_ONCE * PAGE  # the pages in flight when it froze
    log = workers.log(0)
    stopped = log.count("position write refused") + log.count("claim taken over while walking it")
    assert stopped >= 1, log[-3000:]  # its late write was refused, or its heartbeat saw the takeover first
    assert_tokens(state, elapsed, faults=1)


async def test_redis_restarted_with_its_data_lost_stops_the_workers_typed_and_a_rerun_completes(
    private_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state, demo = strict_server(), api(SETUP_LATENCY)
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, private_redis.url, namespace)
        try:
            first = await workers.start_walking(2)
            await anyio.to_thread.run_sync(private_redis.restart)  # every key gone: queue, positions, token
            demo.latency = LATENCY
            codes = await workers.wait(first)
            # Nothing was claimed complete: the workers stopped with a typed error saying what to do.
            assert codes == [7, 7], workers.describe()
            for i in range(2):
                assert "is gone from Redis" in workers.log(i) and "start the workers again" in workers.log(i)
                assert "completeness       complete" not in workers.summary(i)
            # The documented recovery: start the workers again; the crawl starts over.
            again = workers.start(2)
            codes = await workers.wait(again)
        finally:
            workers.kill_all()
        elapsed = anyio.current_time() - workers.started
        final = await status(private_redis.url, namespace)
    assert codes == [0, 0], workers.describe()
    assert final.complete
    seen = workers.records()
    report("Redis restarted, data lost, workers started again", state, elapsed, seen)
    assert set(seen) == demo.expected_ids()
    assert_tokens(state, elapsed, faults=1)


async def test_a_worker_stopped_by_sigterm_gives_its_partitions_back_at_once(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state, demo = strict_server(), api()
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, redis_server.url, namespace)
        try:
            (first,) = workers.start(1, "--idle-timeout", "600")  # a takeover would take 10 minutes
            await wait_until_walking(redis_server.url, namespace, first, pages=2)  # 1 worker: never done by then
            first.send_signal(signal.SIGTERM)
            assert await workers.wait([first]) == [143], workers.describe()
            given_back = {p.name: p for p in (await status(redis_server.url, namespace)).partitions if p.position}
            assert given_back and all(p.state in ("queued", "done") for p in given_back.values())
            (second,) = workers.start(1, "--idle-timeout", "600")
            assert await workers.wait([second]) == [0], workers.describe()
        finally:
            workers.kill_all()
        final = await status(redis_server.url, namespace)
    assert final.complete and all(p.claims == 1 for p in final.partitions)  # given back, not taken over
    assert "taken over" not in workers.log(1)
    assert "positions are checkpointed in Redis at" in workers.log(0)  # what to do: run it again
    seen = workers.records()
    # Twice at most: a page whose records were flushed when the signal came, before its checkpoint.
    assert set(seen) == demo.expected_ids() and duplicates(seen) <= AT_ONCE * PAGE


async def test_crawl_workers_starts_local_workers_and_fleet_status_shows_the_crawl(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    state, demo = strict_server(), api()
    demo.latency = 0.005
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, redis_server.url, namespace)
        env = {**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY}
        command = [sys.executable, "-m", "oauthpw_async", "crawl"]
        proc = await anyio.run_process(
            [*command[:-1], *workers.args("--workers", "2", "--out", str(tmp_path / "records.jsonl"))],
            cwd=ROOT,
            env=env,
            check=False,
        )
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        assert "[w0] started" in out and "[w1] started" in out and "exited with [0, 0]" in out
        shown = await anyio.run_process(
            [
                *command[:-1],
                "fleet", "status",
                "--coordinator", redis_server.url,
                "--namespace", namespace,
                "--crawl-name", "items",
                "--config", str(workers.config),
                "--json",
            ],
            cwd=ROOT,
            env=env,
            check=False,
        )  # fmt: skip
    doc = json.loads(shown.stdout)
    assert shown.returncode == 0 and doc["complete"] and doc["finished"]
    assert {p["records"] for p in doc["partitions"]} == {PER_PROJECT}
    assert doc["token"]["generation"] >= 1 and doc["token"]["opens_with_key"] is True
    # one login for the whole fleet, and it was confirmed (a token re-arms the budget: nothing unconfirmed)
    assert state.count("password") == 1 and doc["token"]["logins_in_window"] == 0
    secrets = [server.auth.password, server.auth.client_secret, *server.auth._access, *server.auth._refresh_tokens]
    assert not any(s in shown.stdout.decode() + out for s in secrets)
    seen = Counter[int]()
    for i in range(2):
        for line in (tmp_path / f"records-w{i}.jsonl").read_text().splitlines():
            seen[json.loads(line)["id"]] += 1
    assert set(seen) == demo.expected_ids() and duplicates(seen) == 0
    assert state.count("password") == 1


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


async def test_local_workers_get_the_redis_password_in_their_environment_never_on_their_command_line(
    private_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    redis_password = "redis-pw/with:odd@chars"
    private_redis_admin = f"redis://:{quote(redis_password, safe='')}@{private_redis.host}:{private_redis.port}/0"
    async with RedisLink(private_redis.url) as link:
        await link.call(link.client.config_set({"requirepass": redis_password}))
    state, demo = strict_server(), api(latency=0.01)
    async with LocalServer(state, api=demo) as server:
        workers = Workers(tmp_path, server, private_redis_admin, namespace)
        env = {**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY}
        # Abbreviated as argparse allows: the password must still not reach a worker's command line.
        argv = workers.args("--workers", "2", "--out", str(tmp_path / "records.jsonl"))
        argv[argv.index("--coordinator")] = "--coord"
        command_lines: dict[int, bytes] = {}
        with open(tmp_path / "parent.out", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "oauthpw_async", *argv], cwd=ROOT, env=env, stdout=log)
            try:
                with anyio.fail_after(BOUND):
                    while proc.poll() is None:
                        for pid in descendants(proc.pid):
                            with contextlib.suppress(OSError):
                                command_lines.setdefault(pid, Path(f"/proc/{pid}/cmdline").read_bytes())
                        await anyio.sleep(0.02)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        out = (tmp_path / "parent.out").read_text()
        assert proc.returncode == 0, out
        workers_seen = [c for c in command_lines.values() if b"oauthpw_async" in c]
        assert len(workers_seen) >= 2
        for line in workers_seen:
            assert redis_password.encode() not in line and quote(redis_password, safe="").encode() not in line
            assert f"127.0.0.1:{private_redis.port}".encode() in line  # the URL is there, without its password
        # The status command takes the password from the environment too.
        shown = await anyio.run_process(
            [
                sys.executable, "-m", "oauthpw_async", "fleet", "status",
                "--coordinator", private_redis.url,
                "--namespace", namespace,
                "--crawl-name", "items",
                "--json",
            ],
            cwd=ROOT,
            env={**env, "OAUTHPW_REDIS_PASSWORD": redis_password},
            check=False,
        )  # fmt: skip
    assert shown.returncode == 0, shown.stderr.decode()
    assert json.loads(shown.stdout)["complete"]
    assert redis_password not in shown.stdout.decode() + shown.stderr.decode()
    seen: Counter[int] = Counter()
    for i in range(2):
        for line in (tmp_path / f"records-w{i}.jsonl").read_text().splitlines():
            seen[json.loads(line)["id"]] += 1
    assert set(seen) == demo.expected_ids() and duplicates(seen) == 0
