"""``oauthpw-async airbyte ... spec|check|discover|read``: the crawler as an Airbyte source.

Every message the command writes is parsed with the Airbyte protocol's own pydantic models
(``airbyte-protocol-models``), with no field the protocol does not define. A deduplicating
destination is played by the test: RECORDs upserted on the stream's primary key, deleted on
``_ab_cdc_deleted_at``. After each read the table must equal the source.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from airbyte_protocol.models import AirbyteMessage, AirbyteStateBlob, ConfiguredAirbyteCatalog
from pydantic import BaseModel

from oauthpw_async.integrations.airbyte import DELETED_AT
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
CRAWLER = "examples.zendesk_tickets:Tickets"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def defined_only(model: Any, where: str = "message") -> None:
    """Fails on any field the protocol's model does not define, at any depth (a state blob is the source's own)."""
    if isinstance(model, BaseModel) and not isinstance(model, AirbyteStateBlob):
        extra = set(model.__dict__) - set(model.__fields__)
        assert not extra, f"{where}: fields outside the protocol: {extra}"
        for name in model.__fields__:
            defined_only(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            defined_only(item, f"{where}[{i}]")


def parsed(lines: bytes) -> list[dict[str, Any]]:
    messages = [orjson.loads(line) for line in lines.splitlines()]
    for message in messages:
        defined_only(AirbyteMessage.parse_obj(message))
    return messages


async def source(*args: str, folder: Path) -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *(str(ROOT / "examples" / "source_zendesk_tickets.py"), *args),  # the example source
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, parsed(out), err.decode()


def config_file(folder: Path, server: LocalServer, **changes: Any) -> Path:
    fields = {k.lower().replace(" ", "_"): v for k, v in server.connection().items()}
    path = folder / "config.json"
    path.write_bytes(orjson.dumps({**fields, "base_url": server.base_url, **changes}))
    return path


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == kind]


def land(table: dict[Any, Any], messages: list[dict[str, Any]], key: list[list[str]]) -> None:
    """A deduplicating destination: upsert on the key, delete on ``_ab_cdc_deleted_at``."""
    for record in of_type(messages, "RECORD"):
        data = record["record"]["data"]
        k = tuple(data[path[0]] for path in key)
        if data.get(DELETED_AT):
            table.pop(k, None)
        else:
            table[k] = data["version"]


def source_now(api: ChangesAPI) -> dict[Any, int]:
    return {(s.id,): s.version for s in api.final_state() if not s.deleted}


async def test_spec_check_discover_and_incremental_reads_keep_the_destination_equal_to_the_source(
    tmp_path: Path,
) -> None:
    api = ChangesAPI(records=230, spacing=60)
    state = AuthServerState(token_lifetime=600)
    async with LocalServer(state, api=api) as server:
        config = config_file(tmp_path, server)
        code, (spec,), _ = await source("spec", folder=tmp_path)
        assert code == 0 and spec["type"] == "SPEC"
        specification = spec["spec"]["connectionSpecification"]
        jsonschema.Draft7Validator.check_schema(specification)
        jsonschema.validate(orjson.loads(config.read_bytes()), specification)
        assert {name for name, f in specification["properties"].items() if f.get("airbyte_secret")} >= {
            "client_secret",
            "password",
        }

        code, (status,), _ = await source("check", "--config", str(config), folder=tmp_path)
        assert code == 0 and status["connectionStatus"] == {"status": "SUCCEEDED"}

        code, (found,), _ = await source("discover", "--config", str(config), folder=tmp_path)
        assert code == 0
        (stream,) = found["catalog"]["streams"]
        assert stream["name"] == "tickets" and stream["source_defined_primary_key"] == [["id"]]
        assert stream["default_cursor_field"] == ["updated_at"] and "incremental" in stream["supported_sync_modes"]
        configured = {
            "streams": [
                {
                    "stream": stream,
                    "sync_mode": "incremental",
                    "destination_sync_mode": "append_dedup",
                    "cursor_field": stream["default_cursor_field"],
                    "primary_key": stream["source_defined_primary_key"],
                }
            ]
        }
        defined_only(ConfiguredAirbyteCatalog.parse_obj(configured))
        catalog = tmp_path / "catalog.json"
        catalog.write_bytes(orjson.dumps(configured))

        table: dict[Any, Any] = {}
        code, messages, _ = await source("read", "--config", str(config), "--catalog", str(catalog), folder=tmp_path)
        assert code == 0
        for record in of_type(messages, "RECORD"):
            jsonschema.validate(record["record"]["data"], stream["json_schema"])
        land(table, messages, stream["source_defined_primary_key"])
        assert table == source_now(api)
        statuses = [m["trace"]["stream_status"]["status"] for m in of_type(messages, "TRACE")]
        assert statuses == ["STARTED", "RUNNING", "COMPLETE"]
        states = of_type(messages, "STATE")
        assert sum(s["state"]["sourceStats"]["recordCount"] for s in states) == 230
        assert messages.index(states[-1]) > max(i for i, m in enumerate(messages) if m["type"] == "RECORD")

        full = api.counts["zendesk"]
        api.update([2, 229])
        api.create(1)
        api.delete([0, 100])
        saved = tmp_path / "state.json"
        saved.write_bytes(orjson.dumps([states[-1]["state"]]))  # what the platform passes back
        code, messages, _ = await source(
            "read", "--config", str(config), "--catalog", str(catalog), "--state", str(saved), folder=tmp_path
        )
        assert code == 0
        land(table, messages, stream["source_defined_primary_key"])
        assert table == source_now(api)
        assert api.counts["zendesk"] - full == 1  # one page of changes
        assert len(of_type(messages, "RECORD")) == 5

        # full_refresh reads everything again, whatever the state says
        configured["streams"][0]["sync_mode"] = "full_refresh"
        catalog.write_bytes(orjson.dumps(configured))
        code, messages, _ = await source(
            "read", "--config", str(config), "--catalog", str(catalog), "--state", str(saved), folder=tmp_path
        )
        assert code == 0 and len(of_type(messages, "RECORD")) == len(source_now(api)) + 2  # and the 2 deletions


async def test_a_stream_the_catalog_does_not_select_is_not_read(tmp_path: Path) -> None:
    api = ChangesAPI(records=20)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        config = config_file(tmp_path, server)
        catalog = tmp_path / "catalog.json"
        catalog.write_bytes(orjson.dumps({"streams": []}))
        code, messages, _ = await source("read", "--config", str(config), "--catalog", str(catalog), folder=tmp_path)
    assert code == 0 and [m["type"] for m in messages] == ["LOG"] and api.counts["zendesk"] == 0


async def test_failures_are_error_traces_that_say_what_to_do_and_hold_no_secret(tmp_path: Path) -> None:
    state = AuthServerState(token_lifetime=600)
    async with LocalServer(state, api=ChangesAPI(records=20)) as server:
        bad = config_file(tmp_path, server, password="not-the-password")
        code, (status,), _ = await source("check", "--config", str(bad), folder=tmp_path)
        assert code == 0 and status["connectionStatus"]["status"] == "FAILED"
        assert "Username and Password" in status["connectionStatus"]["message"]
        catalog = tmp_path / "catalog.json"
        catalog.write_bytes(
            orjson.dumps(
                {
                    "streams": [
                        {
                            "stream": {"name": "tickets", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
                            "sync_mode": "full_refresh",
                            "destination_sync_mode": "overwrite",
                        }
                    ]
                }
            )
        )
        code, messages, err = await source("read", "--config", str(bad), "--catalog", str(catalog), folder=tmp_path)
        assert code == 3
        (trace,) = [m for m in of_type(messages, "TRACE") if m["trace"]["type"] == "ERROR"]
        assert trace["trace"]["error"]["failure_type"] == "config_error"
        assert "Username and Password" in trace["trace"]["error"]["message"]
        code, messages, _ = await source(
            "read", "--config", str(tmp_path / "missing.json"), "--catalog", str(catalog), folder=tmp_path
        )
        assert code == 2 and of_type(messages, "TRACE")[0]["trace"]["error"]["failure_type"] == "config_error"
    everything = orjson.dumps(messages).decode() + err
    for secret in (state.password, state.client_secret, "not-the-password"):
        assert secret not in everything


async def test_crawl_format_airbyte_writes_records_and_states_of_the_protocol(tmp_path: Path) -> None:
    api = ChangesAPI(records=40)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        conn = tmp_path / "c.json"
        conn.write_bytes(orjson.dumps(server.connection()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "oauthpw_async", "crawl", "--config", str(conn), "--crawler", CRAWLER),
            *("--base-url", server.base_url, "--format", "airbyte"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err
    messages = parsed(out)
    assert len(of_type(messages, "RECORD")) == 40 and messages[-1]["type"] == "STATE"
