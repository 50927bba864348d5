"""Crawls never lose a record silently: consumers that leave, two runs on one file, foreign state, full disks.

Crawls run over real HTTP against the local server; locking between processes is tested
with real OS processes.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import orjson
import pytest

from oauthpw_async import CrawlError, HTTPStatusError, RetryPolicy, StateError, TokenProvider, UsageError
from oauthpw_async.crawler import Checkpoints, Crawler, Cursor, JsonLinesSink, ListSink, PageRequest, Partition
from oauthpw_async.crawler.checkpoint import fingerprint
from oauthpw_async.errors import OutputLocked, SinkError, StateLocked, StateMismatch, StateWriteError
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI

from .test_cli import ROOT, write_config

pytestmark = pytest.mark.anyio

#: A hang guard only (a broken exit would block forever), never a timing assertion.
HANG = 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the crawl engine runs on asyncio


class Projects(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self) -> list[Partition]:
        return [Partition(p, {"project": p, "limit": "20"}) for p in ("alpha", "beta", "gamma")]


def crawl_tasks() -> list[asyncio.Task[Any]]:
    """The crawl's tasks still running (the server's handlers are not counted)."""
    running = []
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if not task.done() and name.startswith(("Crawler.", "CrawlEngine.")):
            running.append(task)
    return running


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop would log as lost ("Task exception was never retrieved"...); must stay empty."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    gc.collect()
    loop.set_exception_handler(previous)


def project_of(record_id: int, api: DemoAPI) -> str:
    return api.projects[record_id // api.per_project]


def committed(state_file: Any) -> dict[str, int]:
    """Pages saved per partition (none when no state was saved)."""
    if not state_file.exists():
        return {}
    return {name: e["pages"] for name, e in orjson.loads(state_file.read_bytes())["partitions"].items()}


# --- 1. records(): every way out of the loop stops and awaits the crawl ----------------------------


async def _consume(records: AsyncIterator[Any], taken: list[int], stop_at: int, *, fail: bool = False) -> None:
    """Take records until ``stop_at``, then break (or raise), closing the iterator as `aclosing` does."""
    async with aclosing(records):
        async for record in records:
            taken.append(record["id"])
            if len(taken) == stop_at:
                if fail:
                    raise LookupError("the consumer failed")
                break


def _assert_stopped_behind_consumer(api: DemoAPI, taken: list[int], state_file: Any) -> None:
    assert crawl_tasks() == []  # returned only once the crawl had stopped
    per_partition = Counter(project_of(i, api) for i in taken)
    for name, pages in committed(state_file).items():
        # At-least-once: no position moved past a record the consumer did not take.
        assert pages * 20 <= per_partition[name], (name, pages, per_partition)


@pytest.mark.parametrize("how", ["break", "raise", "aclose", "cancel_scope", "task_cancel"])
async def test_records_returns_after_the_consumer_leaves_however_it_leaves(
    how: str, tmp_path: Any, loop_errors: list[dict[str, Any]]
) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    state_file = tmp_path / "state.json"
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            records = crawler.records(tokens, concurrency=4, state=str(state_file))
            if how == "break":
                await _consume(records, taken, 150)
            elif how == "raise":
                with pytest.raises(LookupError):
                    await _consume(records, taken, 150, fail=True)
            elif how == "aclose":
                for _ in range(150):
                    taken.append((await anext(records))["id"])
                await records.aclose()
            elif how == "cancel_scope":
                with anyio.CancelScope() as scope:
                    async for record in records:
                        taken.append(record["id"])
                        if len(taken) == 150:
                            scope.cancel()
                assert scope.cancelled_caught
            else:

                async def consumer() -> None:
                    async for record in records:
                        taken.append(record["id"])
                        if len(taken) == 150:
                            asyncio.current_task().cancel()  # type: ignore[union-attr]

                task = asyncio.ensure_future(consumer())
                await asyncio.wait([task])
                assert task.cancelled()
            _assert_stopped_behind_consumer(api, taken, state_file)
            served = api.counts["list:200"]
        # A resumed crawl (the same records() on the same state) delivers the rest.
        with anyio.fail_after(HANG):
            rest = [r["id"] async for r in crawler.records(tokens, concurrency=4, state=str(state_file))]
    assert set(taken) | set(rest) == api.expected_ids()
    assert api.counts["list:200"] > served
    assert loop_errors == []


async def test_records_dropped_without_aclose_stops_the_crawl_once_collected(
    tmp_path: Any, loop_errors: list[dict[str, Any]]
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            # A plain `async for ... break` with no aclosing(): the generator is only dropped.
            async for record in crawler.records(tokens, concurrency=4):
                taken.append(record["id"])
                if len(taken) == 100:
                    break
            gc.collect()
            # The loop's async-generator hook closes the dropped generator in a task of its own.
            for _ in range(10_000):
                if not crawl_tasks():
                    break
                await asyncio.sleep(0)
            assert crawl_tasks() == []
    assert len(taken) == 100 and loop_errors == []


async def test_records_with_a_failing_partition_raises_the_failure_and_stops_the_others(
    loop_errors: list[dict[str, Any]],
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)

        async def consume() -> None:
            async with aclosing(crawler.records(tokens, concurrency=4, retry=RetryPolicy(max_attempts=1))) as records:
                async for record in records:
                    taken.append(record["id"])
                    if len(taken) == 30:
                        api.inject(ApiFault("status", status=404))

        with anyio.fail_after(HANG), pytest.raises(HTTPStatusError) as failure:
            await consume()
        assert failure.value.status == 404 and len(taken) >= 30
        assert crawl_tasks() == []
    assert loop_errors == []


async def test_records_consumer_leaving_after_the_crawl_failed_loses_no_error_in_the_log(
    loop_errors: list[dict[str, Any]],
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)

    def progress_display_fails(stats: Any) -> None:
        raise RuntimeError("the progress display broke")

    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            async with aclosing(crawler.records(tokens, concurrency=4, on_progress=progress_display_fails)) as records:
                # 21 records: the first page is taken, so the crawl commits it and fails (in
                # on_progress) while the consumer holds a record and awaits nothing.
                for _ in range(21):
                    await anext(records)
                for _ in range(10_000):
                    if not crawl_tasks():
                        break
                    await asyncio.sleep(0)
                assert crawl_tasks() == []
            # The consumer left without asking for more: the failure is not raised at it.
        gc.collect()
    assert loop_errors == []


# --- helpers for crawls that stop part way ---------------------------------------------------------


class OtherProjects(Projects):
    """Another crawler class over the same API."""


def fail_after_requests(api: DemoAPI, n: int) -> None:
    """The n-th API request and the ones after it answer 404: the crawl stops part way."""

    def hook(served: int) -> None:
        if served >= n and not api.faults:
            api.inject(*[ApiFault("status", status=404)] * 10)

    api.on_request = hook


def ids_in(path: Any) -> list[int]:
    """The ids on the file's complete lines (a torn last line, with no newline, is not a record)."""
    return [orjson.loads(line)["id"] for line in path.read_bytes().split(b"\n")[:-1]]


async def crawl_into(
    crawler: Crawler, tokens: TokenProvider, out: Any, state: Any, **kw: Any
) -> tuple[Any, BaseException | None]:
    """Crawl into a JSON Lines file; returns (stats, the error that stopped it)."""
    try:
        with JsonLinesSink(out) as sink:
            return await crawler.crawl(tokens, sink, state=state, concurrency=4, **kw), None
    except CrawlError as exc:
        return None, exc


# --- 2. one output file and one state file per running crawl --------------------------------------


async def test_a_second_open_of_the_output_is_refused_and_touches_nothing(tmp_path: Any) -> None:
    out = tmp_path / "out.jsonl"
    with JsonLinesSink(out) as live:
        await live.write([{"id": 1}], "p")
        await live.flush()
        # The live crawl is mid-write: its last line has no newline yet.
        with open(out, "ab") as f:
            f.write(b'{"id":2,"ti')
        before = out.read_bytes()
        with pytest.raises(OutputLocked) as refused:
            JsonLinesSink(out)
        # The refused sink repaired nothing: the live crawl's bytes are intact.
        assert out.read_bytes() == before
        assert refused.value.path == str(out)
        assert str(out) in str(refused.value) and "another crawl" in str(refused.value)
    # Once the first sink is closed the file is free again (and its torn tail is repaired now).
    with JsonLinesSink(out):
        pass
    assert out.read_bytes() == b'{"id":1}\n'


async def test_a_second_open_of_the_state_file_is_refused(tmp_path: Any) -> None:
    state = tmp_path / "state.json"
    first = Checkpoints(state)
    await first.open({"crawler": "a"})
    await first.save("alpha", PageRequest("/x", (("cursor", "c1"),)), 1)
    try:
        with pytest.raises(StateLocked) as refused:
            await Checkpoints(state).open({"crawler": "a"})
        assert refused.value.path == str(state) and "another crawl" in str(refused.value)
    finally:
        first.close()
    second = Checkpoints(state)
    await second.open({"crawler": "a"})
    second.close()
    assert second.resume_from("alpha") == PageRequest("/x", (("cursor", "c1"),))


async def test_two_crawls_on_one_output_in_one_process_the_second_is_refused_at_once(tmp_path: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        first = Projects(base_url=server.base_url)
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: crawl_into(first, tokens, out, state, on_progress=lambda s: started.set()))
            await started.wait()
            # Same output, other state file: refused before any request.
            _, error = await crawl_into(OtherProjects(base_url=server.base_url), tokens, out, tmp_path / "s2.json")
            assert isinstance(error, OutputLocked)
            # Other output, same state file: refused too.
            _, error = await crawl_into(first, tokens, tmp_path / "o2.jsonl", state)
            assert isinstance(error, StateLocked)
            assert not (tmp_path / "o2.jsonl").read_bytes()
    assert sorted(ids_in(out)) == sorted(api.expected_ids())  # the running crawl lost nothing
    assert not (tmp_path / ".state.json.lock").exists()  # the lock file goes with the crawl


async def test_one_checkpoints_object_shared_by_two_crawls_keeps_the_first_ones_lock(tmp_path: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    state = Checkpoints(tmp_path / "state.json")
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        started = anyio.Event()
        results: list[Any] = []

        async def first() -> None:
            results.append(
                await crawl_into(
                    Projects(base_url=server.base_url),
                    tokens,
                    tmp_path / "a.jsonl",
                    state,
                    on_progress=lambda s: started.set(),
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await started.wait()
            _, error = await crawl_into(Projects(base_url=server.base_url), tokens, tmp_path / "b.jsonl", state)
            assert isinstance(error, StateLocked)
            # The refused crawl released nothing: the file is still locked for everyone else.
            with pytest.raises(StateLocked):
                await Checkpoints(tmp_path / "state.json").open()
    ((stats, error),) = results
    assert error is None and stats.complete
    assert sorted(ids_in(tmp_path / "a.jsonl")) == sorted(api.expected_ids())


HOLD_AND_REPORT = """
import sys, anyio
from oauthpw_async.errors import FileLocked
from oauthpw_async.crawler import Checkpoints, JsonLinesSink

async def main(out, state):
    got = []
    try:
        JsonLinesSink(out).close()
        got.append("output-free")
    except FileLocked as exc:
        got.append(type(exc).__name__)
    checkpoints = Checkpoints(state)
    try:
        await checkpoints.open()
        got.append("state-free")
    except FileLocked as exc:
        got.append(type(exc).__name__)
    finally:
        checkpoints.close()
    print(" ".join(got))

anyio.run(main, sys.argv[1], sys.argv[2])
"""


class GatedAPI(DemoAPI):
    """The demo API, with a gate that holds every request while it is closed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = asyncio.Event()
        self.gate.set()

    async def _gate(self, request: Any, kind: str) -> Any:
        await self.gate.wait()
        return await super()._gate(request, kind)


async def test_a_crawl_in_another_process_is_refused_and_the_running_one_loses_nothing(tmp_path: Any) -> None:
    api = GatedAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        crawl = await asyncio.create_subprocess_exec(
            *cli_crawl(cfg, server, out, state),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(1000):  # until the crawl has saved a position: it holds both files
            await asyncio.sleep(0.02)
            if state.exists():
                api.gate.clear()  # the crawl now waits for the API, holding both files
                break
        assert state.exists() and crawl.returncode is None
        other = await run_python(HOLD_AND_REPORT, str(out), str(state))
        assert other == "OutputLocked StateLocked"
        api.gate.set()
        _, err = await asyncio.wait_for(crawl.communicate(), HANG)
        assert crawl.returncode == 0, err.decode()
        after = await run_python(HOLD_AND_REPORT, str(out), str(state))
    assert after == "output-free state-free"
    assert sorted(set(ids_in(out))) == sorted(api.expected_ids())


# --- 3. a state file belongs to the crawl that wrote it --------------------------------------------


async def test_resuming_with_another_crawler_pagination_partitions_or_output_is_refused(tmp_path: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"

    class OtherPagination(Projects):
        pagination = Cursor("meta.next_cursor")

    class MorePartitions(Projects):
        def partitions(self) -> list[Partition]:
            return [*super().partitions(), Partition("delta", {"project": "delta"})]

    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        fail_after_requests(api, 20)
        _, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        assert isinstance(error, HTTPStatusError)
        api.on_request, api.faults = None, type(api.faults)()
        saved = state.read_bytes()
        served = api.counts["list:200"]
        cases = [
            (
                OtherProjects,
                out,
                "crawler was 'tests.test_durability.Projects', now 'tests.test_durability.OtherProjects'",
            ),
            (OtherPagination, out, "pagination was"),
            (MorePartitions, out, "partitions: 1 added (delta)"),
            (Projects, tmp_path / "elsewhere.jsonl", f"output was {str(out.resolve())!r}"),
        ]
        for cls, output, difference in cases:
            _, error = await crawl_into(cls(base_url=server.base_url), tokens, output, state)
            assert isinstance(error, StateMismatch), error
            assert difference in str(error) and "would skip records" in str(error) and "restart=True" in str(error)
            assert str(state) in str(error)
        assert api.counts["list:200"] == served  # refused before any request
        assert state.read_bytes() == saved  # and the state is untouched

        # The same crawl resumes where it stopped and the output ends complete.
        stats, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        assert error is None and stats.complete
    assert set(ids_in(out)) == api.expected_ids()


@pytest.mark.parametrize("how", ["on_mismatch", "restart"])
async def test_explicit_restart_starts_over(tmp_path: Any, how: str) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        fail_after_requests(api, 20)
        await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        api.on_request, api.faults = None, type(api.faults)()
        options = {"on_mismatch": "restart"} if how == "on_mismatch" else {"restart": True}
        fresh = tmp_path / "fresh.jsonl"
        crawler = OtherProjects if how == "on_mismatch" else Projects
        stats, error = await crawl_into(crawler(base_url=server.base_url), tokens, fresh, Checkpoints(state, **options))
    assert error is None and stats.complete
    assert sorted(ids_in(fresh)) == sorted(api.expected_ids())  # every record, from the start
    recorded = orjson.loads(state.read_bytes())["fingerprint"]
    assert recorded["output"] == str(fresh.resolve())


async def test_on_mismatch_must_be_fail_or_restart() -> None:
    with pytest.raises(UsageError, match="on_mismatch"):
        Checkpoints("s.json", on_mismatch="ignore")  # type: ignore[arg-type]


FP = {"crawler": "a.B", "partitions": ["alpha"], "pagination": "Cursor()", "output": "/o.jsonl"}
GOOD_ENTRY = {"next": {"url": "/api/x", "params": [["cursor", "c"]]}, "done": False, "pages": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{}", "holds no crawl state"),
        (b'{"partitions": {}}', "holds no crawl state"),
        (b"[]", "holds no crawl state"),
        (b"", "is damaged"),
        (b'{"version": 2, "partitions": {"alpha": ', "is damaged"),
        (b'{"version": 1, "partitions": {}}', "holds no positions"),
        (b'{"version": 3, "partitions": {}}', "format version 3"),
        (b'{"version": true, "partitions": {}}', "format version True"),
        (orjson.dumps({"version": 2, "partitions": {}}), "no fingerprint object"),
        (orjson.dumps({"version": 2, "fingerprint": [], "partitions": {}}), "no fingerprint object"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": []}}), "'alpha' is list"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "done": "no"}}}),
         "done='no'"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "pages": "2"}}}),
         "pages='2'"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "pages": -1}}}),
         "pages=-1"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {"done": False, "pages": 1}}}),
         "has next=Ellipsis"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "next": {"url": 5}}}}),
         "not a page request"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "next": {
            "url": "/x", "params": [["a"]]}}}}), "not a page request"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "next": None}}}),
         "not done but has no next page"),
        (orjson.dumps({"version": 2, "fingerprint": FP, "partitions": {"alpha": {**GOOD_ENTRY, "done": True}}}),
         "done but has a next page"),
    ],
)  # fmt: skip
async def test_a_state_file_that_is_not_a_usable_state_is_a_clear_error(
    tmp_path: Any, content: bytes, message: str
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(content)
    checkpoints = Checkpoints(state)
    with pytest.raises(StateError) as refused:
        await checkpoints.open(FP)
    assert message in str(refused.value) and str(state) in str(refused.value)
    assert "delete it" in str(refused.value) or "resume with the release" in str(refused.value)
    assert state.read_bytes() == content  # never rewritten
    assert not (tmp_path / ".state.json.lock").exists()  # and not left locked
    # An explicit restart is the way out, and it leaves a valid, empty state at once.
    checkpoints = Checkpoints(state, restart=True)
    await checkpoints.open(FP)
    checkpoints.close()
    assert orjson.loads(state.read_bytes()) == {"version": 2, "fingerprint": FP, "partitions": {}}


async def test_an_empty_state_file_never_restarts_a_crawl_silently(tmp_path: Any) -> None:
    api = DemoAPI(per_project=100, max_page_size=20)
    state = tmp_path / "state.json"
    state.write_bytes(b"{}")
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        _, error = await crawl_into(Projects(base_url=server.base_url), tokens, tmp_path / "o.jsonl", state)
    assert isinstance(error, StateError) and "holds no crawl state" in str(error)
    assert api.counts["list:200"] == 0


async def test_a_version_1_state_is_resumed_with_a_warning_and_upgraded(tmp_path: Any, caplog: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        fail_after_requests(api, 20)
        await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        api.on_request, api.faults = None, type(api.faults)()
        # The same positions as an earlier release wrote them: no fingerprint.
        current = orjson.loads(state.read_bytes())
        state.write_bytes(orjson.dumps({"version": 1, "partitions": current["partitions"]}))
        skipped = sum(e["pages"] for e in current["partitions"].values())
        assert skipped > 0
        served = api.counts["list:200"]
        stats, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
    assert error is None and stats.complete
    assert api.counts["list:200"] - served == 90 - skipped  # resumed, not restarted
    assert "does not say which crawl it belongs to" in caplog.text
    upgraded = orjson.loads(state.read_bytes())
    assert upgraded["version"] == 2 and upgraded["fingerprint"]["crawler"] == "tests.test_durability.Projects"
    assert set(ids_in(out)) == api.expected_ids()


def test_the_fingerprint_names_what_positions_depend_on(tmp_path: Any) -> None:
    class PlainPaginator:
        def start(self, request: PageRequest) -> PageRequest:
            return request

    with JsonLinesSink(tmp_path / "o.jsonl") as sink:
        fp = fingerprint(Projects(), Cursor("next"), ["b", "a"], sink)
    assert fp == {
        "crawler": "tests.test_durability.Projects",
        "partitions": ["a", "b"],
        "pagination": repr(Cursor("next")),  # the strategy's settings
        "output": str((tmp_path / "o.jsonl").resolve()),
    }
    other = fingerprint(Projects(), PlainPaginator(), [], ListSink())
    # A repr with an address would differ on every run: the class stands in for it.
    assert other["pagination"].endswith("PlainPaginator") and " at 0x" not in other["pagination"]
    assert other["output"] == "oauthpw_async.crawler.sinks.ListSink"


# --- 4. a full disk or a write error ends the crawl with a typed error ------------------------------


async def test_a_full_device_ends_the_crawl_with_a_sink_error_and_saves_no_position(tmp_path: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    state = tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        _, error = await crawl_into(Projects(base_url=server.base_url), tokens, "/dev/full", state)
    assert isinstance(error, SinkError) and error.errno == errno.ENOSPC
    assert "/dev/full" in str(error) and "ENOSPC" in str(error) and "run the crawl again" in str(error)
    assert not state.exists() or all(p == 0 for p in committed(state).values())


async def test_an_fsync_failure_stops_the_crawl_and_a_resume_loses_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    real_fsync = os.fsync
    synced = Counter[str]()

    def fsync(fd: int) -> None:
        # Only the output fails (its 10th fsync), as when the disk fills up while writing it.
        if os.path.samestat(os.fstat(fd), os.stat(out)):
            synced["out"] += 1
            if synced["out"] >= 10:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        monkeypatch.setattr(os, "fsync", fsync)
        _, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        monkeypatch.undo()
        assert isinstance(error, SinkError) and error.errno == errno.ENOSPC
        # No position is past what the last successful fsync made durable (9 pages at most).
        assert 0 < sum(committed(state).values()) <= 9
        stats, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
    assert error is None and stats.complete
    assert set(ids_in(out)) == api.expected_ids()


async def test_a_state_write_failure_is_a_typed_error_and_a_resume_loses_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oauthpw_async.crawler import checkpoint

    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    real_write = checkpoint.atomic_write
    writes = Counter[str]()

    def atomic_write(path: Any, blob: bytes, **kw: Any) -> None:
        writes["state"] += 1
        if writes["state"] >= 6:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_write(path, blob, **kw)

    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
        _, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
        monkeypatch.undo()
        assert isinstance(error, StateWriteError) and error.errno == errno.EIO
        assert str(state) in str(error) and "resumes from the last position saved" in str(error)
        assert sum(committed(state).values()) == 5
        stats, error = await crawl_into(Projects(base_url=server.base_url), tokens, out, state)
    assert error is None and stats.complete
    assert set(ids_in(out)) == api.expected_ids()


def test_an_output_that_cannot_be_opened_is_a_sink_error(tmp_path: Any) -> None:
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(SinkError) as refused:
        JsonLinesSink(tmp_path / "a-folder")
    assert refused.value.errno == errno.EISDIR and "a-folder" in str(refused.value)


async def test_the_command_maps_a_file_size_limit_hit_mid_crawl_to_the_crawl_failed_exit_code(tmp_path: Any) -> None:
    """A real write failure in a real process: the output reaches the process's file size limit."""
    from oauthpw_async.exit_codes import ExitCode

    EXIT_CRAWL = ExitCode.CRAWL_FAILED

    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    limit = 8 << 20
    # An earlier crawl's records fill the file to 20 kB short of the limit.
    filler = b'{"id":-1,"note":"an earlier crawl"}\n'
    out.write_bytes(filler * ((limit - 20_000) // len(filler)))
    # The limit applies to files the command writes; Python ignores SIGXFSZ, so a write past it fails with EFBIG.
    limited = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv[0] = 'oauthpw-async'; runpy.run_module('oauthpw_async', run_name='__main__', alter_sys=True)"
    )
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        args = cli_crawl(cfg, server, out, state)[3:]  # without "python -m oauthpw_async"
        code, _, err = await run_command(sys.executable, "-c", limited, *args)
        assert code == EXIT_CRAWL, err
        assert "EFBIG" in err and str(out) in err and "Traceback" not in err
        durable = Counter(project_of(i, api) for i in ids_in(out) if i >= 0)
        for name, pages in committed(state).items():
            assert pages * 20 <= durable[name]  # no position past a record that was not written
        code, _, err = await run_command(*cli_crawl(cfg, server, out, state))
    assert code == 0, err
    assert {i for i in ids_in(out) if i >= 0} == api.expected_ids()


# --- 5. temp files and locks a killed process left behind ------------------------------------------

KILLED_MID_SAVE = """
import os, sys, time, anyio
from oauthpw_async.crawler import Checkpoints, JsonLinesSink, PageRequest

async def main(out, state):
    sink = JsonLinesSink(out)
    checkpoints = Checkpoints(state)
    await checkpoints.open({"crawler": "killed"})
    await checkpoints.save("alpha", PageRequest("/x", (("cursor", "c1"),)), 1)

    def stuck(*args):  # killed between writing the temp file and renaming it
        print("ready", flush=True)
        time.sleep(600)

    os.replace = stuck
    await checkpoints.save("alpha", PageRequest("/x", (("cursor", "c2"),)), 2)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_a_killed_run_leaves_no_lock_and_its_temp_files_are_removed_on_open(tmp_path: Any) -> None:
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    others = [tmp_path / ".state.json.x.abc123.tmp", tmp_path / ".other.json.abc123.tmp", tmp_path / "state.json.tmp"]
    for other in others:
        other.write_bytes(b"not ours")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_MID_SAVE, str(out), str(state), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    with anyio.fail_after(HANG):
        assert await proc.stdout.readline() == b"ready\n"
    proc.kill()
    await proc.communicate()  # reaped, and its pipe closed
    leftovers = sorted(p.name for p in tmp_path.glob(".state.json.*.tmp") if p not in others)
    assert len(leftovers) == 1 and (tmp_path / ".state.json.lock").exists()

    # The kernel released both locks with the process: the files open at once.
    with JsonLinesSink(out):
        pass
    checkpoints = Checkpoints(state)
    await checkpoints.open({"crawler": "killed"})
    try:
        assert checkpoints.resume_from("alpha") == PageRequest("/x", (("cursor", "c1"),))  # the last complete save
        assert not (tmp_path / leftovers[0]).exists()  # the killed save's temp file is gone
    finally:
        checkpoints.close()
    assert all(other.read_bytes() == b"not ours" for other in others)  # other files' temps are not touched
    assert not (tmp_path / ".state.json.lock").exists()


async def test_stale_temp_files_are_kept_while_another_crawl_holds_the_state(tmp_path: Any) -> None:
    state = tmp_path / "state.json"
    holder = Checkpoints(state)
    await holder.open({"crawler": "a"})
    try:
        temp = tmp_path / ".state.json.abcd1234.tmp"  # what the holder's save in progress looks like
        temp.write_bytes(b"{}")
        with pytest.raises(StateLocked):
            await Checkpoints(state).open({"crawler": "a"})
        assert temp.exists()
    finally:
        holder.close()


# --- 6. anyio everywhere, and records durable before their position --------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_checkpoints_and_the_sink_run_on_asyncio_and_trio(tmp_path: Any) -> None:
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    with JsonLinesSink(out) as sink:
        checkpoints = Checkpoints(state)
        await checkpoints.open(FP)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(20):

                    async def page(i: int = i) -> None:
                        await sink.write([{"id": i}], f"p{i}")
                        await sink.flush()
                        await checkpoints.save(f"p{i}", PageRequest("/x", (("page", str(i + 1)),)), 1)

                    tg.start_soon(page)
        finally:
            checkpoints.close()
    assert sorted(ids_in(out)) == list(range(20))
    assert set(committed(state)) == {f"p{i}" for i in range(20)}


def assert_positions_behind_the_file(state: Any, out: Any, api: DemoAPI) -> None:
    """No saved position is past a record that is not in the output file."""
    positions = committed(state)  # read first: the file only grows meanwhile
    in_file = Counter(project_of(i, api) for i in ids_in(out))
    for name, pages in positions.items():
        assert pages * 20 <= in_file[name], (name, pages, in_file)


async def test_positions_never_pass_records_not_yet_written(tmp_path: Any) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    out, state = tmp_path / "out.jsonl", tmp_path / "state.json"
    checks = 0
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with JsonLinesSink(out) as sink:
            async with anyio.create_task_group() as tg:

                async def crawl() -> None:
                    await crawler.crawl(tokens, sink, state=state, concurrency=8)
                    tg.cancel_scope.cancel()

                tg.start_soon(crawl)
                for _ in range(100_000):  # watch the files on disk while the crawl runs
                    assert_positions_behind_the_file(state, out, api)
                    checks += 1
                    await anyio.sleep(0.001)
    assert_positions_behind_the_file(state, out, api)
    assert checks > 50 and all(p == 30 for p in committed(state).values())
    assert set(ids_in(out)) == api.expected_ids()


# --- subprocess helpers ------------------------------------------------------------------------------


def cli_crawl(cfg: Any, server: LocalServer, out: Any, state: Any) -> list[str]:
    return [
        sys.executable,
        "-m",
        "oauthpw_async",
        "crawl",
        "--config",
        str(cfg),
        "--crawler",
        "tests.crawlers_for_cli:SlowCursorItems",
        "--base-url",
        server.base_url,
        "--out",
        str(out),
        "--state",
        str(state),
        "--concurrency",
        "4",
    ]


async def run_command(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), HANG)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_python(code: str, *args: str) -> str:
    status, out, err = await run_command(sys.executable, "-c", code, *args)
    assert status == 0, err
    return out.strip()
