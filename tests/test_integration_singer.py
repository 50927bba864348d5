"""``crawl --format singer``: the crawler as a Singer tap, read by a Singer target.

The command runs as a subprocess against the mutable local API, its stdout piped into a target
built on the Meltano Singer SDK (``tests/singer_target.py``: the SDK parses the messages and
validates every record against its stream's schema; the sink upserts on the key and deletes on
``_sdc_deleted_at``); the STATE the target echoes is handed back as ``--state``, as Meltano does.
After each run the table must equal the source.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async.crawler import Crawler
from oauthpw_async.crawler.incremental import ExportCursor
from oauthpw_async.integrations.schema import infer_schema, widen
from oauthpw_async.integrations.singer import DELETED_AT
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
CRAWLER = "examples.zendesk_tickets:Tickets"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def tap(
    server: LocalServer, folder: Path, *options: str, crawler: str = CRAWLER
) -> tuple[int, list[dict[str, Any]], str]:
    """The tap alone: exit code, its messages, its stderr."""
    config = folder / "connection.json"
    config.write_bytes(orjson.dumps(server.connection()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "oauthpw_async", "crawl", "--config", str(config), "--crawler", crawler),
        *("--base-url", server.base_url, "--format", "singer", *options),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, [orjson.loads(line) for line in out.splitlines()], err.decode()


async def tap_into_target(server: LocalServer, folder: Path, *options: str) -> tuple[int, int, list[Any]]:
    """``oauthpw-async crawl --format singer ... | <Singer target>``: both exit codes and the states it echoed."""
    config = folder / "connection.json"
    config.write_bytes(orjson.dumps(server.connection()))
    target_config = folder / "target.json"
    target_config.write_bytes(orjson.dumps({"path": str(folder / "landed"), "add_record_metadata": True}))
    read, write = os.pipe()
    tap = await asyncio.create_subprocess_exec(  # the example tap, as Meltano runs it
        sys.executable,
        *(str(ROOT / "examples" / "tap_zendesk_tickets.py"), "--config", str(config)),
        *("--base-url", server.base_url, *options),
        cwd=ROOT,
        stdout=write,
        stderr=asyncio.subprocess.DEVNULL,
    )
    target = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tests.singer_target", "--config", str(target_config)),
        cwd=ROOT,
        stdin=read,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    os.close(read)
    os.close(write)
    states, _ = await asyncio.wait_for(target.communicate(), 120)
    await asyncio.wait_for(tap.wait(), 120)
    assert tap.returncode is not None and target.returncode is not None
    return tap.returncode, target.returncode, [orjson.loads(line) for line in states.splitlines()]


def table(folder: Path) -> dict[int, int]:
    rows = orjson.loads((folder / "landed.tickets.json").read_bytes())
    landed = {int(record["id"]): int(record["version"]) for _, record in rows}
    assert len(landed) == len(rows), "a key landed twice"
    return landed


def source_now(api: ChangesAPI) -> dict[int, int]:
    return {s.id: s.version for s in api.final_state() if not s.deleted}


async def test_a_singer_target_lands_the_source_then_its_changes_and_deletions(tmp_path: Path) -> None:
    api = ChangesAPI(records=250, spacing=60)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        tap_code, target_code, states = await tap_into_target(server, tmp_path)
        assert (tap_code, target_code) == (0, 0)
        assert table(tmp_path) == source_now(api)
        full = api.counts["zendesk"]
        # Meltano's way: the last STATE the target echoed becomes the next run's --state.
        (tmp_path / "state.json").write_bytes(orjson.dumps(states[-1]))
        api.update([1, 100, 249])
        api.create(2)
        api.delete([0, 50, 251])
        tap_code, target_code, states = await tap_into_target(server, tmp_path, "--state", str(tmp_path / "state.json"))
        assert (tap_code, target_code) == (0, 0)
        assert table(tmp_path) == source_now(api)
        assert api.counts["zendesk"] - full == 1 < full  # one page of changes
        assert states[-1]["cursors"]["default"]["runs"] == 2


async def test_the_messages_follow_the_singer_spec(tmp_path: Path) -> None:
    api = ChangesAPI(records=120, spacing=60)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        code, messages, _ = await tap(server, tmp_path, "--state", str(tmp_path / "s.json"))
        assert code == 0
        api.delete([3])
        code, again, _ = await tap(server, tmp_path, "--state", str(tmp_path / "s.json"))
        assert code == 0
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "SCHEMA" and kinds[-1] == "STATE" and kinds.count("RECORD") == 120
    schema = messages[0]
    assert schema["stream"] == "tickets" and schema["key_properties"] == ["id"]
    assert schema["bookmark_properties"] == ["updated_at"]
    jsonschema.Draft7Validator.check_schema(schema["schema"])
    for message in messages + again:
        assert set(message) <= {
            "type",
            "stream",
            "schema",
            "key_properties",
            "bookmark_properties",
            "record",
            "time_extracted",
            "value",
        }
        if message["type"] == "RECORD":
            assert message["stream"] == "tickets"
            jsonschema.validate(message["record"], schema["schema"])
    (deleted,) = [m["record"] for m in again if m["type"] == "RECORD" and DELETED_AT in m["record"]]
    assert deleted["id"] == 3 and set(deleted) == {"id", DELETED_AT}
    assert orjson.loads((tmp_path / "s.json").read_bytes()) == again[-1]["value"]  # STATE = the state file


class Declared(Crawler):
    path = "/api/v2/incremental/tickets/cursor.json"
    records_path = "tickets"
    pagination = "next_url"
    json_schema = {"type": "object", "properties": {"id": {"type": "integer"}}}


async def test_a_declared_schema_is_sent_as_declared_and_a_wrong_one_is_a_usage_error(tmp_path: Path) -> None:
    async with LocalServer(AuthServerState(token_lifetime=600), api=ChangesAPI(records=5)) as server:
        code, messages, _ = await tap(server, tmp_path, crawler="tests.test_integration_singer:Declared")
        assert code == 0
        assert messages[0]["schema"]["properties"]["id"] == {"type": "integer"}
        code, _, err = await tap(server, tmp_path, crawler="tests.test_integration_singer:BadlyDeclared")
        assert code == 2 and "json_schema must be a JSON Schema object" in err


class BadlyDeclared(Declared):
    json_schema = {"type": "string"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)
json_records = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_values, max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_records, max_size=6), json_records)
def test_every_record_fits_its_inferred_schema_and_widening_keeps_the_old_ones(
    sample: list[dict[str, Any]], later: dict[str, Any]
) -> None:
    schema = infer_schema(sample)
    jsonschema.Draft7Validator.check_schema(schema)
    for record in sample:
        jsonschema.validate(record, schema)
    wider = widen(schema, later)
    for record in [*sample, later]:
        jsonschema.validate(record, wider)
    assert widen(wider, later) == wider  # a record that fits changes nothing


async def test_the_target_used_above_rejects_what_the_spec_rejects(tmp_path: Path) -> None:
    schema = {
        "type": "SCHEMA",
        "stream": "s",
        "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "key_properties": ["id"],
    }
    record = {"type": "RECORD", "stream": "s", "record": {"id": 1}}
    target_config = tmp_path / "target.json"
    target_config.write_bytes(orjson.dumps({"path": str(tmp_path / "landed"), "add_record_metadata": True}))

    async def target(*messages: Any) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.singer_target",
            "--config",
            str(target_config),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(proc.communicate(b"".join(orjson.dumps(m) + b"\n" for m in messages)), 120)
        assert proc.returncode is not None
        return proc.returncode

    assert await target(schema, record) == 0
    assert await target(record) != 0  # a RECORD before its SCHEMA
    assert await target(schema, {**record, "record": {"id": "one"}}) != 0  # a record its schema does not allow


async def test_schema_prints_one_to_pin_and_a_pinned_one_is_what_the_tap_sends(tmp_path: Path) -> None:
    async with LocalServer(AuthServerState(token_lifetime=600), api=ChangesAPI(records=30)) as server:
        config = tmp_path / "connection.json"
        config.write_bytes(orjson.dumps(server.connection()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "oauthpw_async", "schema", "--config", str(config), "--crawler", CRAWLER),
            *("--base-url", server.base_url, "--sample", "10"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0
        printed = orjson.loads(out)
        jsonschema.Draft7Validator.check_schema(printed)
        assert set(printed["properties"]) == {"id", "subject", "status", "version", "updated_at"}
        assert printed["properties"]["id"]["type"] == ["null", "integer"]
        (tmp_path / "pinned.py").write_text(
            f"from zendesk_tickets import Tickets\n\n\nclass Pinned(Tickets):\n    json_schema = {printed!r}\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "examples"), str(tmp_path)])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "oauthpw_async", "crawl", "--config", str(config), "--crawler", "pinned:Pinned"),
            *("--base-url", server.base_url, "--format", "singer"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0
    schemas = [m for m in map(orjson.loads, out.splitlines()) if m["type"] == "SCHEMA"]
    assert [s["stream"] for s in schemas] == ["pinned"]
    assert schemas[0]["schema"] == {**printed, "properties": {**printed["properties"], DELETED_AT: ANY_DELETED_AT}}


ANY_DELETED_AT = {"type": ["null", "string"], "format": "date-time"}


async def test_singer_messages_go_to_stdout_only(tmp_path: Path) -> None:
    async with LocalServer(AuthServerState(token_lifetime=600), api=ChangesAPI(records=3)) as server:
        code, _, err = await tap(server, tmp_path, "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "drop --out and pipe it to the target" in err


class FullTickets(Crawler):
    """Not incremental: every sync reads the whole stream."""

    path = "/api/v2/incremental/tickets/cursor.json"
    params = {"start_time": "0", "per_page": "20"}
    records_path = "tickets"
    pagination = ExportCursor()
    primary_key = "id"


async def test_a_full_stream_is_read_whole_on_every_sync(tmp_path: Path) -> None:
    async with LocalServer(AuthServerState(token_lifetime=600), api=ChangesAPI(records=30)) as server:
        options = ("--state", str(tmp_path / "s.json"))
        crawler = "tests.test_integration_singer:FullTickets"
        for _ in range(2):
            code, messages, err = await tap(server, tmp_path, *options, crawler=crawler)
            assert code == 0, err
            assert len([m for m in messages if m["type"] == "RECORD"]) == 30
