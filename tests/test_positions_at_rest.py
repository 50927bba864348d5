"""Nothing secret at rest: a saved position never holds a token, and a resumed crawl still works."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import pytest
from aiohttp import web

from oauthpw_async.crawler import Checkpoints, PageRequest
from oauthpw_async.testing import AuthServerState, LocalServer

from .test_cli import ROOT, run_cli, write_config

pytestmark = pytest.mark.anyio

#: A hang guard only (a broken run would block for ever), never a timing assertion.
HANG = 60
PAGES = 6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class GraphAPI:
    """Graph-style paging: every next link echoes the caller's token, as ``access_token=`` and inside another field."""

    def __init__(self) -> None:
        self.block_at: int | None = None  # the page whose answer never comes (the crawl is killed there)
        self.reached = asyncio.Event()
        self.release = asyncio.Event()  # lets the unanswered page end once its client is gone
        self.tokens: set[str] = set()  # every token a request carried
        self.queries: list[dict[str, str]] = []

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        async def feed(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization")
            if not auth.check_authorization(header):
                return web.json_response({"error": "invalid_token"}, status=401)
            assert header is not None
            token = header.split(" ", 1)[1]
            self.tokens.add(token)
            self.queries.append(dict(request.query))
            after = int(request.query.get("after", "0"))
            if after == self.block_at:
                self.reached.set()
                await self.release.wait()
            base = f"{request.url.origin()}/v1/feed"
            nxt = (
                f"{base}?fields=id%2Cmessage&access_token={quote(token, safe='')}&after={after + 1}"
                f"&trace=run-{quote(token, safe='')}"
                if after + 1 < PAGES
                else None
            )
            data = [{"id": f"{after}-{i}", "message": "hello"} for i in range(5)]
            return web.json_response({"data": data, "paging": {"next": nxt}})

        app.router.add_get("/v1/feed", feed)


def crawl_argv(cfg: Path, server: LocalServer, out: Path, state: Path) -> list[str]:
    return [
        "crawl",
        "--config",
        str(cfg),
        "--crawler",
        "tests.crawlers_for_cli:GraphFeed",
        "--base-url",
        server.base_url,
        "--out",
        str(out),
        "--state",
        str(state),
    ]


def assert_no_token(text: str | bytes, tokens: set[str]) -> None:
    if isinstance(text, bytes):
        text = text.decode()
    assert tokens
    for token in tokens:
        assert token not in text and quote(token, safe="") not in text
    assert "access_token" not in text


async def test_a_killed_graph_style_crawl_saved_no_token_and_resumes_to_the_end(tmp_path: Path) -> None:
    api = GraphAPI()
    api.block_at = 3
    cfg, out, state = tmp_path / "c.json", tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(api=api) as server:
        write_config(cfg, server)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oauthpw_async",
            *crawl_argv(cfg, server, out, state),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        with anyio.fail_after(HANG):
            await api.reached.wait()
        proc.kill()  # mid-crawl, page 3 unanswered
        await proc.wait()
        api.release.set()

        raw = state.read_bytes()
        assert_no_token(raw, api.tokens)
        (position,) = orjson.loads(raw)["partitions"].values()
        assert position["next"] == {"url": f"{server.base_url}/v1/feed?fields=id%2Cmessage&after=3", "params": []}

        status, shown, _ = await run_cli("state", "show", "--state", str(state))
        assert status == 0 and "after=3" in shown
        assert_no_token(shown, api.tokens)
        status, shown_json, _ = await run_cli("state", "show", "--json", "--state", str(state))
        assert status == 0 and orjson.loads(shown_json)["partitions"]
        assert_no_token(shown_json, api.tokens)

        api.block_at = None
        first_run = len(api.queries)
        status, _, err = await run_cli(*crawl_argv(cfg, server, out, state))
        assert status == 0, err
    resumed = api.queries[first_run]
    assert resumed == {"fields": "id,message", "after": "3"}  # the token went in the header only
    ids = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"{p}-{i}" for p in range(PAGES) for i in range(5))
    assert_no_token(state.read_bytes(), api.tokens)


async def test_checkpoints_save_drops_credential_parameters_given_directly(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    checkpoints = Checkpoints(state)
    await checkpoints.open({"crawler": "direct"})
    try:
        request = PageRequest(
            "https://api.example.com/items?page=2&API-Key=k-9f8e7d&sig=abc",
            (("access_token", "tok-1a2b3c4d"), ("limit", "50"), ("pageToken", "p-77")),
        )
        await checkpoints.save("p", request, 2)
    finally:
        checkpoints.close()
    saved: dict[str, Any] = orjson.loads(state.read_bytes())["partitions"]["p"]["next"]
    assert saved == {
        "url": "https://api.example.com/items?page=2&sig=abc",
        "params": [["limit", "50"], ["pageToken", "p-77"]],
    }


async def test_state_show_hides_a_token_in_a_file_written_before_positions_were_stripped(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    checkpoints = Checkpoints(state)
    await checkpoints.open({"crawler": "old"})
    try:
        await checkpoints.save("p", PageRequest("https://api.example.com/items?after=9"), 1)
    finally:
        checkpoints.close()
    doc = orjson.loads(state.read_bytes())
    doc["partitions"]["p"]["next"]["url"] += "&access_token=EAAGold-token-xyz"
    doc["partitions"]["p"]["next"]["params"] = [["token", "EAAGold-token-xyz"]]
    state.write_bytes(orjson.dumps(doc))
    for argv in (("state", "show"), ("state", "show", "--json")):
        status, shown, _ = await run_cli(*argv, "--state", str(state))
        assert status == 0 and "after=9" in shown
        assert "EAAGold" not in shown
