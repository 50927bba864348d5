"""The command as a user runs it, in a subprocess, against the local server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import orjson
import pytest

from oauthpw_async.testing import AuthServerState, LocalServer, Quirks
from oauthpw_async.testing.api import DemoAPI

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauthpw_async",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, server: LocalServer, **overrides: object) -> Path:
    a = server.auth
    conf = {
        "Access Token URL": server.token_url,
        "Client Id": a.client_id,
        "Client Secret": a.client_secret,
        "Username": a.username,
        "Password": a.password,
        **overrides,
    }
    path.write_bytes(orjson.dumps(conf))
    return path


def secrets_of(state: AuthServerState) -> list[str]:
    return [state.password, state.client_secret]


async def test_check_success_shows_masked_token_and_tries_a_refresh(tmp_path) -> None:
    state = AuthServerState(quirks=Quirks(extra_fields={"instance_url": "https://api.example.com"}))
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server, **{"Refresh Token URL": server.token_url})
        code, out, err = await run_cli("--verbose", "check", "--config", str(cfg))
    assert code == 0, err
    assert "login OK" in out and "refresh OK" in out and "instance_url" in out and "https://api.example.com" in out
    assert "refresh_token    issued" in out
    for secret in secrets_of(state):
        assert secret not in out + err
    assert state.count("password", "ok") == 1 and state.count("refresh_token", "ok") == 1


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"Password": "wrong"}, 3, "check Username and Password"),
        ({"Client Secret": "wrong"}, 4, "check Client Id and Client Secret"),
        ({"Grant Type": "client_credentials"}, 6, "set Grant Type"),
        ({"Body Parameters": "[1]"}, 2, "body_parameters: must be a JSON object"),
        ({"Acces Token URL": "x"}, 2, "did you mean 'Access Token URL'"),
    ],
)
async def test_check_failures_have_distinct_exit_codes(tmp_path, change, code, message) -> None:
    state = AuthServerState()
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server, **change)
        got, out, err = await run_cli("--verbose", "check", "--config", str(cfg))
    assert got == code, out + err
    assert message in err
    for secret in [*secrets_of(state), "wrong"]:
        assert secret not in out + err
    assert state.token_requests <= 1  # never more than one login attempt


async def test_check_unreachable_server(tmp_path) -> None:
    async with LocalServer() as server:
        cfg = write_config(tmp_path / "c.json", server)
    code, _out, err = await run_cli("check", "--config", str(cfg))
    assert code == 5 and "check the Access Token URL, the network" in err


async def test_crawl_killed_and_resumed_loses_nothing(tmp_path) -> None:
    api = DemoAPI(per_project=600, max_page_size=20, latency=0.01)
    state = AuthServerState(token_lifetime=2.0)
    out_file, state_file = tmp_path / "out.jsonl", tmp_path / "state.json"
    async with LocalServer(state, api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        args = [
            "crawl",
            "--config",
            str(cfg),
            "--crawler",
            "tests.crawlers_for_cli:SlowCursorItems",
            "--base-url",
            server.base_url,
            "--out",
            str(out_file),
            "--state",
            str(state_file),
            "--concurrency",
            "4",
        ]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oauthpw_async",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(600):  # wait until some pages are committed, then SIGKILL mid-crawl
            await asyncio.sleep(0.02)
            if state_file.exists() and out_file.exists() and out_file.stat().st_size > 5000:
                break
        proc.kill()
        await proc.wait()
        partial = {orjson.loads(x)["id"] for x in out_file.read_bytes().splitlines()}
        assert 0 < len(partial) < api.total
        code, out, err = await run_cli(*args)
        assert code == 0, err
    lines = out_file.read_bytes().splitlines()
    ids = [orjson.loads(x)["id"] for x in lines]
    assert set(ids) == api.expected_ids()
    assert len(ids) - api.total <= 3 * 20 * 2  # duplicates only from pages in flight at the kill
    assert "records" in out


async def test_crawl_sigterm_checkpoints_and_exits_143(tmp_path) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20, latency=0.02)
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        state_file = tmp_path / "state.json"
        proc = await asyncio.create_subprocess_exec(
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
            "--state",
            str(state_file),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(500):
            await asyncio.sleep(0.02)
            if state_file.exists():
                break
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 143, err.decode()
    assert b"interrupted: positions are checkpointed" in err
    saved = orjson.loads(state_file.read_bytes())["partitions"]
    assert saved and not all(p["done"] for p in saved.values())


async def test_demo_end_to_end_verbose_leaks_no_secret(tmp_path) -> None:
    code, out, err = await run_cli(
        "--verbose", "demo", "--records", "1500", "--token-lifetime", "1", "--out", str(tmp_path)
    )
    assert code == 0, err
    assert "1,500 distinct records: complete" in out and "token requests" in out
    assert "0 invalid_grant" in out
    defaults = AuthServerState()
    text = out + err
    for secret in secrets_of(defaults):
        assert secret not in text
    assert "token request: grant=" in err  # verbose really logged the token traffic
    # The server's tokens are 32 URL-safe characters: none may appear in the output.
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])", text)
    for line in (tmp_path / "demo-records.jsonl").read_bytes().splitlines()[:3]:
        assert orjson.loads(line)["detail"]["id"] == orjson.loads(line)["id"]


async def test_bad_crawler_spec_is_a_usage_error(tmp_path) -> None:
    async with LocalServer() as server:
        cfg = write_config(tmp_path / "c.json", server)
    code, _, err = await run_cli("crawl", "--config", str(cfg), "--crawler", "nope")
    assert code == 2 and "module:Class" in err


async def test_serve_prints_a_usable_config_and_stops_on_sigterm(tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauthpw_async",
        "serve",
        "--port",
        str(port),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert f"serving on http://127.0.0.1:{port}" in first.decode()
    text = b""
    while not text.rstrip().endswith(b"}"):
        text += await asyncio.wait_for(proc.stdout.readline(), 10)
    conf = orjson.loads(text[text.index(b"{") :])
    cfg = tmp_path / "c.json"
    cfg.write_bytes(orjson.dumps(conf))
    code, out, err = await run_cli("check", "--config", str(cfg))
    assert code == 0 and "login OK" in out, err
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
