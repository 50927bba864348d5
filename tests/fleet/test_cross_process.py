"""The building blocks under real concurrency: several OS processes against one real redis-server."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import anyio

from .helpers import coordinator
from .procs import kill9, read_until, run_all, spawn
from .redis_server import RedisServer

WORKERS = 4


def test_the_lease_excludes_other_processes(redis_server: RedisServer, namespace: str) -> None:
    rounds = 25
    results = run_all(*[("lease", redis_server.url, namespace, str(rounds))] * WORKERS)

    async def counter() -> int:
        async with coordinator(redis_server.url, namespace) as fleet:
            return int(await fleet.link.client.get(f"{namespace}:plain-counter") or 0)

    # A non-atomic read-modify-write under the lease lost no update: nobody held it at the same time.
    assert anyio.run(counter) == WORKERS * rounds
    fences = [e["fence"] for events in results for e in events]
    assert len(fences) == len(set(fences)) == WORKERS * rounds


def test_compare_and_set_lets_exactly_one_process_renew_each_generation(
    redis_server: RedisServer, namespace: str
) -> None:
    results = run_all(*[("publish", redis_server.url, namespace, "30")] * WORKERS)
    wins = [e for events in results for e in events if e["published"]]
    assert sorted(e["base"] for e in wins) == list(range(len(wins)))  # each generation renewed once
    assert sorted(e["generation"] for e in wins) == list(range(1, len(wins) + 1))
    losers = [e for events in results for e in events if not e["published"]]
    assert all(e["generation"] > e["base"] for e in losers)  # refused only in favour of a newer one


def test_the_login_budget_is_fleet_wide(redis_server: RedisServer, namespace: str) -> None:
    results = run_all(*[("login", redis_server.url, namespace, "5")] * WORKERS)
    assert sum(e["allowed"] for events in results for e in events) == 5


def test_the_rate_limit_is_fleet_wide(redis_server: RedisServer, namespace: str) -> None:
    results = run_all(*[("rate", redis_server.url, namespace, "25")] * WORKERS)
    times = sorted(e["allowed_at"] for events in results for e in events)
    assert len(times) == WORKERS * 25
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 50 requests/s for the whole fleet: slots 20 ms apart (0.2 ms for the stored precision).
    assert min(gaps) >= 0.020 - 0.0002
    assert times[-1] - times[0] >= (len(times) - 1) * (0.020 - 0.0002)


def test_a_killed_worker_s_partitions_are_taken_over_from_their_checkpoint(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    idle = "1.0"
    doomed = spawn("crawl", redis_server.url, namespace, str(tmp_path / "doomed.txt"), "3", idle)
    hanging = read_until(doomed, "hanging")  # records of one page written, its checkpoint not
    kill9(doomed)
    results = run_all(
        *[("crawl", redis_server.url, namespace, str(tmp_path / f"w{i}.txt"), "0", idle) for i in range(2)]
    )
    assert all(events[-1].get("finished") for events in results)

    lines = collections.Counter()
    for path in tmp_path.glob("*.txt"):
        lines.update(path.read_text().splitlines())
    expected = {f"p{n:02d}/{page}/{j}" for n in range(8) for page in range(6) for j in range(3)}
    assert set(lines) == expected  # nothing lost
    repeated = {line for line, count in lines.items() if count > 1}
    # The page the killed worker wrote without checkpointing is crawled again (at-least-once)...
    unsaved_page = {f"{hanging['hanging']}/{hanging['page']}/{j}" for j in range(3)}
    assert unsaved_page <= repeated
    # ...and nothing else, unless a live worker stalled past the idle timeout and lost a claim
    # (its next checkpoint was refused, so it stopped after at most that one page).
    lost = [e["lost"] for events in results for e in events if "lost" in e]
    assert len({line.rsplit("/", 1)[0] for line in repeated - unsaved_page}) <= len(lost)

    async def status() -> object:
        async with coordinator(redis_server.url, namespace) as fleet:
            return await fleet.partitions("synthetic").status()

    final = anyio.run(status)
    assert final.complete and not final.incomplete  # type: ignore[attr-defined]
    taken = next(p for p in final.partitions if p.name == hanging["hanging"])  # type: ignore[attr-defined]
    assert taken.claims == 2 and taken.position == 6
