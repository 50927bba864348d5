"""``crawl --format singer --discover`` and ``--catalog``: the tap's catalog, as Meltano runs it.

Discovery is read back by the Meltano Singer SDK's own catalog model (``singer_sdk.singerlib.Catalog``)
and round-tripped; a catalog from discovery, edited the way Meltano's ``select`` edits it, decides
whether the stream is crawled and which properties its records carry; the target reads a run with
the catalog, and its replication method picks between what changed and everything. A hostile catalog
is a usage error (exit 2) saying what to do, never a traceback.
"""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from singer_sdk.singerlib import Catalog

from oauthpw_async.cli import main
from oauthpw_async.errors import UsageError
from oauthpw_async.integrations.singer import DELETED_AT, read_catalog
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI
from tests.test_integration_singer import CRAWLER, table, tap, tap_into_target

pytestmark = pytest.mark.anyio
TICKET_FIELDS = {"id", "subject", "status", "version", "updated_at"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def discover(server: LocalServer, folder: Path, crawler: str = CRAWLER) -> dict[str, Any]:
    code, messages, err = await tap(server, folder, "--discover", crawler=crawler)
    assert code == 0, err
    (document,) = messages
    return document


def deselect(document: dict[str, Any], breadcrumb: list[str]) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    for item in edited["streams"][0]["metadata"]:
        if item["breadcrumb"] == breadcrumb:
            item["metadata"]["selected"] = False
    return edited


async def test_discovery_is_a_singer_catalog_the_sdk_reads_and_round_trips(tmp_path: Path) -> None:
    api = ChangesAPI(records=30, spacing=60)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        document = await discover(server, tmp_path)
        assert api.counts["zendesk"] == 1  # a sample read (one page), not a crawl
    parsed = Catalog.from_dict(document)
    entry = parsed.get_stream("tickets")
    assert entry is not None and entry.tap_stream_id == entry.stream == "tickets"
    assert entry.key_properties == ["id"]
    assert set(entry.schema.to_dict()["properties"]) == TICKET_FIELDS | {DELETED_AT}
    root = entry.metadata.root
    assert root.selected is True and root.table_key_properties == ["id"]
    assert root.forced_replication_method == "INCREMENTAL" and root.valid_replication_keys == ["updated_at"]
    inclusion = {crumb[1]: md.inclusion for crumb, md in entry.metadata.items() if crumb}
    assert inclusion["id"] == inclusion["updated_at"] == "automatic"
    assert inclusion["subject"] == inclusion["status"] == "available"
    assert Catalog.from_dict(parsed.to_dict()).to_dict() == parsed.to_dict()
    assert all(entry.metadata.resolve_selection().values())  # everything selected by default


async def test_a_declared_schema_is_discovered_without_a_request_and_a_full_crawler_is_full_table(
    tmp_path: Path,
) -> None:
    api = ChangesAPI(records=5)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        declared = await discover(server, tmp_path, crawler="tests.test_integration_singer:Declared")
        full = await discover(server, tmp_path, crawler="tests.test_integration_singer:FullTickets")
        assert api.counts["zendesk"] == 1  # the full crawler's sample; the declared one asked nothing
    (stream,) = declared["streams"]
    assert stream["schema"]["properties"]["id"] == {"type": "integer"}
    assert stream["metadata"][0]["metadata"]["forced-replication-method"] == "FULL_TABLE"
    root = Catalog.from_dict(full).get_stream("full_tickets").metadata.root  # type: ignore[union-attr]
    assert root.forced_replication_method == "FULL_TABLE" and root.valid_replication_keys == []


async def test_the_target_lands_a_run_with_the_discovered_catalog(tmp_path: Path) -> None:
    api = ChangesAPI(records=120, spacing=60)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        document = await discover(server, tmp_path)
        (tmp_path / "catalog.json").write_bytes(orjson.dumps(document))
        tap_code, target_code, states = await tap_into_target(
            server, tmp_path, "--catalog", str(tmp_path / "catalog.json")
        )
        assert (tap_code, target_code) == (0, 0)
        assert table(tmp_path) == {s.id: s.version for s in api.final_state() if not s.deleted}
        assert states
        code, messages, _ = await tap(server, tmp_path, "--properties", str(tmp_path / "catalog.json"))
    assert code == 0
    assert messages[0]["type"] == "SCHEMA" and messages[0]["schema"] == document["streams"][0]["schema"]


async def test_a_deselected_stream_is_not_crawled_and_deselected_properties_are_left_out(tmp_path: Path) -> None:
    api = ChangesAPI(records=30, spacing=60)
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        document = await discover(server, tmp_path)
        sampled = api.counts["zendesk"]
        (tmp_path / "off.json").write_bytes(orjson.dumps(deselect(document, [])))
        code, messages, err = await tap(server, tmp_path, "--catalog", str(tmp_path / "off.json"))
        assert (code, messages) == (0, []) and "not selected" in err
        assert api.counts["zendesk"] == sampled  # no request at all
        fewer = deselect(deselect(document, ["properties", "subject"]), ["properties", "id"])  # the key stays
        # The Singer SDK reads the same selection from both catalogs.
        mask = Catalog.from_dict(fewer)["tickets"].metadata.resolve_selection()
        assert mask[()] is True and mask[("properties", "id")] is True
        assert mask[("properties", "subject")] is False
        assert Catalog.from_dict(deselect(document, []))["tickets"].metadata.resolve_selection()[()] is False
        (tmp_path / "fewer.json").write_bytes(orjson.dumps(fewer))
        code, messages, err = await tap(server, tmp_path, "--catalog", str(tmp_path / "fewer.json"))
    assert code == 0, err
    assert set(messages[0]["schema"]["properties"]) == TICKET_FIELDS - {"subject"} | {DELETED_AT}
    records = [m["record"] for m in messages if m["type"] == "RECORD"]
    assert len(records) == 30 and all(set(r) == TICKET_FIELDS - {"subject"} for r in records)


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_bad_catalog_file_is_a_usage_error_saying_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"access_token_url": "http://127.0.0.1:9/token"}))
    base = ("crawl", "--config", str(config), "--crawler", CRAWLER, "--format", "singer")
    (tmp_path / "bad.json").write_text("{not json")
    code, out, err = run_main(*base, "--catalog", str(tmp_path / "bad.json"))
    assert (code, out) == (2, "") and "the Singer catalog" in err and "Traceback" not in err
    (tmp_path / "other.json").write_text(json.dumps({"streams": [{"tap_stream_id": "users"}]}))
    code, _, err = run_main(*base, "--catalog", str(tmp_path / "other.json"))
    assert code == 2 and "no stream 'tickets'" in err and "--discover" in err
    code, _, err = run_main(*base[:-2], "--discover")
    assert code == 2 and "--format singer" in err
    code, _, err = run_main(*base, "--discover", "--catalog", str(tmp_path / "other.json"))
    assert code == 2 and "give one of them" in err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4) | st.sampled_from(["tickets", "properties", "id"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("streams", "tap_stream_id", "stream", "schema", "metadata", "breadcrumb", "selected"),
                    *("properties", "type", "inclusion", "selected-by-default", "x"),
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=25,
)


def _hostile() -> st.SearchStrategy[Any]:
    stream = st.fixed_dictionaries(
        {"tap_stream_id": st.just("tickets")},
        optional={"schema": json_values, "metadata": json_values, "selected": json_values},
    )
    return json_values | st.fixed_dictionaries({"streams": st.lists(stream | json_values, max_size=3)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile())
def test_a_hostile_catalog_gives_a_choice_or_a_usage_error_only(document: Any) -> None:
    from examples.zendesk_tickets import Tickets

    try:
        choice = read_catalog(document, Tickets())
    except UsageError as exc:
        error: UsageError | None = exc
    else:
        error = None
    if error is not None:
        assert "--discover" in str(error)
        return
    assert isinstance(choice.selected, bool)
    if choice.schema is not None:
        assert isinstance(choice.schema["properties"], dict) and not set(choice.schema["properties"]) & choice.dropped


def with_method(document: dict[str, Any], method: str) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    edited["streams"][0]["metadata"][0]["metadata"]["replication-method"] = method
    return edited


async def test_the_catalogs_replication_method_decides_between_changes_and_everything(tmp_path: Path) -> None:
    api = ChangesAPI(records=40, spacing=60)
    state = ("--state", str(tmp_path / "s.json"))
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        document = await discover(server, tmp_path)
        for method in ("INCREMENTAL", "FULL_TABLE", "LOG_BASED"):
            (tmp_path / f"{method}.json").write_bytes(orjson.dumps(with_method(document, method)))
        code, messages, err = await tap(server, tmp_path, *state, "--catalog", str(tmp_path / "INCREMENTAL.json"))
        assert code == 0, err
        assert len([m for m in messages if m["type"] == "RECORD"]) == 40
        api.update([1, 2])
        code, messages, err = await tap(server, tmp_path, *state, "--catalog", str(tmp_path / "INCREMENTAL.json"))
        assert code == 0, err
        assert sorted(m["record"]["id"] for m in messages if m["type"] == "RECORD") == [1, 2]  # what changed
        code, messages, err = await tap(server, tmp_path, *state, "--catalog", str(tmp_path / "FULL_TABLE.json"))
        assert code == 0, err
        assert len([m for m in messages if m["type"] == "RECORD"]) == 40  # everything
        code, messages, err = await tap(server, tmp_path, *state, "--catalog", str(tmp_path / "LOG_BASED.json"))
    assert (code, messages) == (2, []) and "INCREMENTAL or FULL_TABLE" in err and "Traceback" not in err
