"""``--log-format json``: everything the crawl writes to stderr is one JSON object a line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("where", ["before", "after"])
async def test_logs_and_progress_are_json_with_the_progress_lines_figures(tmp_path: Path, where: str) -> None:
    api = DemoAPI(per_project=50)
    api.inject(ApiFault("revoke"), ApiFault("status", status=503, retry_after="0"))
    auth = AuthServerState(token_lifetime=600)
    async with LocalServer(auth, api=api) as server:
        config = tmp_path / "c.json"
        config.write_bytes(orjson.dumps(server.connection()))
        flag = ("--log-format", "json")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "oauthpw_async", "-v", *(flag if where == "before" else ()), "crawl"),
            *("--config", str(config), "--crawler", "tests.crawlers_for_cli:SlowCursorItems"),
            *("--base-url", server.base_url, "--out", str(tmp_path / "out.jsonl")),
            *(flag if where == "after" else ()),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    progress = [line for line in lines if line["logger"] == "oauthpw_async.progress"]
    final = progress[-1]
    assert final["records"] == 150 and final["pages"] == 9 and final["partitions_done"] == 3
    assert final["unauthorized"] >= 1 and final["rate_limit_pauses"] >= 1 and final["token_refreshes"] == 1
    assert any("refresh_token" in line["message"] for line in lines if line["logger"] != "oauthpw_async.progress")
    for secret in (auth.password, auth.client_secret):
        assert secret not in err.decode()
