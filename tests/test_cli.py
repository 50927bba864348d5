"""The command as a user runs it, in a subprocess, against the local server."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import signal
import stat
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
    path.write_bytes(orjson.dumps({**server.connection(), **overrides}))
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
    import socket

    # A port held by a socket that never listens: connections are refused, and no other
    # process on the machine can start a server on it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/oauth/token"
        cfg = tmp_path / "c.json"
        cfg.write_bytes(orjson.dumps({"Access Token URL": url, "Username": "u", "Password": "p"}))
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
        # The resumed run's summary: resumed, records of this run, records in the output, where.
        assert re.search(r"resumed +yes: \d of 3 partition\(s\) already done", out), out
        this_run = int(re.search(r"records +([\d,]+) this run", out)[1].replace(",", ""))
        assert 0 < this_run < api.total
        assert f"{out_file} ({len(lines):,} records in total)" in out
        assert "completeness       complete" in out

        # Run again: nothing to do, and the exact command that starts over.
        code, out, err = await run_cli(*args)
        assert code == 0, err
        assert "nothing to do: all 3 partition(s)" in out and f"{len(lines):,} records" in out
        restart = f"oauthpw-async {shlex.join(args)} --restart"
        assert restart in out
        api_requests = sum(api.counts.values())
        code, out, err = await run_cli(*args, "--restart")  # the printed command
        assert code == 0, err
        assert "\n  resumed " not in out and f"{api.total:,} this run" in out
        assert sum(api.counts.values()) > api_requests  # it really crawled again


@pytest.mark.parametrize(
    ("signals", "gap", "code"),
    [
        ((signal.SIGTERM,), 0.0, 143),
        ((signal.SIGTERM, signal.SIGTERM), 0.005, 143),
        ((signal.SIGTERM, signal.SIGTERM), 0.05, 143),  # arrives while the crawl is already stopping
        ((signal.SIGINT, signal.SIGINT), 0.1, 130),
    ],
    ids=["sigterm", "sigterm-twice-5ms", "sigterm-twice-50ms", "sigint-twice-100ms"],
)
async def test_crawl_signals_checkpoint_and_exit_with_the_signals_code(tmp_path, signals, gap, code) -> None:
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
        for n, signum in enumerate(signals):
            if n:
                await asyncio.sleep(gap)  # a second signal, milliseconds later
            if proc.returncode is None:
                proc.send_signal(signum)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == code, err.decode()
    assert b"interrupted: positions are checkpointed" in err
    saved = orjson.loads(state_file.read_bytes())["partitions"]
    assert saved and not all(p["done"] for p in saved.values())


async def test_demo_end_to_end_verbose_leaks_no_secret(tmp_path) -> None:
    code, out, err = await run_cli(
        "--verbose",
        "demo",
        "--records",
        "1500",
        "--token-lifetime",
        "1",
        "--out",
        str(tmp_path),
        "--incremental-records",
        "3000",
    )
    assert code == 0, err
    assert "1,500 distinct records: complete" in out and "token requests" in out
    # The incremental part: 30 changes, a second run of a few requests, output equal to the source.
    assert "second run (incremental)" in out and "(both runs appended) matches the source" in out
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


# --- check: JSON, verbose, refresh ---------------------------------------------------------------

#: Tokens of the local server are 32 URL-safe characters; none may appear in any output.
TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])")


def assert_no_secret(text: str, state: AuthServerState) -> None:
    for secret in secrets_of(state):
        assert secret not in text
    assert not TOKEN_SHAPE.search(text)


async def test_check_json_is_one_masked_document(tmp_path) -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, extra_fields={"instance_url": "https://i"}))
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server)
        code, out, err = await run_cli("--verbose", "check", "--config", str(cfg), "--json")
    assert code == 0, err
    doc = orjson.loads(out)  # the whole of stdout is one JSON document
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["error"] is None
    assert [s["grant"] for s in doc["steps"]] == ["password", "refresh_token"]
    login, refresh = doc["steps"]
    assert login["ok"] and login["attempts"] == 1 and login["refresh_token"] == "issued"
    assert refresh["ok"] and refresh["refresh_token"] == "rotated" and refresh["url"] == server.token_url
    assert login["token"]["extra"] == {"instance_url": "https://i"} and login["token"]["expires_in"] == 3600.0
    assert_no_secret(out + err, state)


@pytest.mark.parametrize(
    ("change", "code", "error_type"),
    [({"Password": "wrong"}, 3, "InvalidCredentials"), ({"Body Parameters": "[1]"}, 2, "ConfigError")],
)
async def test_check_json_reports_failures_as_json(tmp_path, change, code, error_type) -> None:
    state = AuthServerState()
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server, **change)
        got, out, err = await run_cli("check", "--config", str(cfg), "--json")
    assert got == code, err
    doc = orjson.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == code and doc["error"]["type"] == error_type
    assert "wrong" not in out + err
    assert_no_secret(out + err, state)


async def test_check_refreshes_at_the_access_token_url_when_no_refresh_url_is_set(tmp_path) -> None:
    state = AuthServerState()
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server)  # no Refresh Token URL
        code, out, err = await run_cli("check", "--config", str(cfg))
    assert code == 0, err
    assert f"refresh OK at {server.token_url}" in out and "refresh token rotated" in out
    assert state.count("password", "ok") == 1 and state.count("refresh_token", "ok") == 1


@pytest.mark.parametrize("where", ["before", "after"])
async def test_verbose_works_before_or_after_the_subcommand_and_logs_token_requests(tmp_path, where) -> None:
    state = AuthServerState()
    async with LocalServer(state) as server:
        cfg = write_config(tmp_path / "c.json", server, **{"Refresh Token URL": server.token_url + "?tenant=t1"})
        args = ["check", "--config", str(cfg)]
        args = ["-v", *args] if where == "before" else [*args, "-v"]
        code, out, err = await run_cli(*args)
    assert code == 0, err
    assert f"token request: grant=password url={server.token_url} attempt=1" in err
    assert f"token request: grant=refresh_token url={server.token_url} attempt=1" in err
    assert "tenant=t1" not in err  # URLs are logged without their query
    assert_no_secret(out + err, state)


async def test_without_verbose_no_token_request_is_logged(tmp_path) -> None:
    async with LocalServer() as server:
        cfg = write_config(tmp_path / "c.json", server)
        code, _out, err = await run_cli("check", "--config", str(cfg))
    assert code == 0 and "token request:" not in err


# --- crawl: stdout, pipes, token store, completeness -------------------------------------------


def crawl_args(cfg: Path, server: LocalServer, *extra: str, crawler: str = "SlowCursorItems") -> list[str]:
    return [
        "crawl",
        "--config",
        str(cfg),
        "--crawler",
        f"tests.crawlers_for_cli:{crawler}",
        "--base-url",
        server.base_url,
        *extra,
    ]


async def test_crawl_without_out_writes_json_lines_to_stdout_and_the_rest_to_stderr(tmp_path) -> None:
    api = DemoAPI(per_project=100, max_page_size=20)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        code, out, err = await run_cli("-v", *crawl_args(cfg, server))
    assert code == 0, err
    records = [orjson.loads(line) for line in out.splitlines()]  # every stdout line is a record
    assert {r["id"] for r in records} == api.expected_ids()
    assert "summary:" in err and "output             stdout" in err and "completeness       complete" in err
    assert_no_secret(out + err, state)


async def test_crawl_with_a_static_token_from_the_environment(tmp_path) -> None:
    api = DemoAPI(per_project=100, max_page_size=20)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        token = state.issue_static_token()
        cfg = tmp_path / "pat.json"
        cfg.write_bytes(orjson.dumps({"Token": {"env": "DEMO_PAT"}, "Auth Scheme": "Bearer"}))
        code, out, err = await run_cli(*crawl_args(cfg, server), env={"DEMO_PAT": token})
        assert code == 0, err
        assert {orjson.loads(line)["id"] for line in out.splitlines()} == api.expected_ids()
        assert state.token_requests == 0  # nothing to log in to
        # A token the API refuses: exit 3, says to replace it, and no storm of requests.
        before = api.counts["list:401"]
        code, out, err = await run_cli(*crawl_args(cfg, server), env={"DEMO_PAT": "not-a-valid-token"})
    assert code == 3, err
    assert "replace" in err.lower() and "not-a-valid-token" not in out + err
    assert api.counts["list:401"] - before <= 3


async def test_crawl_into_a_pipe_closed_early_exits_141_quietly_with_positions_saved(tmp_path) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)  # ~400 kB of records: far more than a pipe holds
    state_file = tmp_path / "state.json"
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        args = crawl_args(cfg, server, "--state", str(state_file))
        read_end, write_end = os.pipe()
        crawl = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "oauthpw_async", *args, cwd=ROOT, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
        head = await asyncio.create_subprocess_exec("head", "-n", "5", stdin=read_end, stdout=asyncio.subprocess.PIPE)
        os.close(read_end)
        os.close(write_end)
        head_out, _ = await asyncio.wait_for(head.communicate(), 60)
        _, err_bytes = await asyncio.wait_for(crawl.communicate(), 60)
        err = err_bytes.decode()
        assert crawl.returncode == 141, err
        assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err
        assert f"stdout was closed: positions are checkpointed in {state_file}" in err
        assert [orjson.loads(x)["id"] for x in head_out.splitlines()] == [0, 1, 2, 3, 4]
        saved = orjson.loads(state_file.read_bytes())["partitions"]
        assert saved and not all(p["done"] for p in saved.values())
        # The same command resumes from the saved positions and finishes.
        code, out, err = await run_cli(*args, "--out", str(tmp_path / "rest.jsonl"))
        assert code == 0, err
        assert "resumed            yes" in out
        rest = {orjson.loads(x)["id"] for x in (tmp_path / "rest.jsonl").read_bytes().splitlines()}
        assert 0 < len(rest) < api.total and max(rest) == api.total - 1


async def test_a_token_store_spares_the_second_run_its_password_login(tmp_path) -> None:
    api = DemoAPI(per_project=40, max_page_size=20)
    state = AuthServerState()
    store = tmp_path / "tokens.json"
    async with LocalServer(state, api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        for run in (1, 2):
            out_file = tmp_path / f"run{run}.jsonl"
            code, out, err = await run_cli(
                *crawl_args(cfg, server, "--out", str(out_file), "--token-store", str(store))
            )
            assert code == 0, err
            assert len(out_file.read_bytes().splitlines()) == api.total
            assert state.count("password") == 1  # the first run's login only
        assert "(0 login, 0 refresh, 1 stored)" in out
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert_no_secret(out + err + str(sorted(orjson.loads(store.read_bytes()))), state)


async def test_a_token_store_open_to_others_is_refused_with_exit_2(tmp_path) -> None:
    api = DemoAPI(per_project=20, max_page_size=20)
    state = AuthServerState()
    store = tmp_path / "tokens.json"
    store.write_bytes(b"{}")
    store.chmod(0o644)
    async with LocalServer(state, api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        code, _out, err = await run_cli(
            *crawl_args(cfg, server, "--out", str(tmp_path / "o.jsonl"), "--token-store", str(store))
        )
    assert code == 2, err
    assert "chmod 600" in err and "Traceback" not in err
    assert state.count("password") == 0  # refused before any login


async def test_check_with_a_token_store_lets_the_crawl_start_without_a_login(tmp_path) -> None:
    api = DemoAPI(per_project=20, max_page_size=20)
    state = AuthServerState()
    store = tmp_path / "tokens.json"
    async with LocalServer(state, api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        code, out, err = await run_cli("check", "--config", str(cfg), "--token-store", str(store))
        assert code == 0 and "the newest token was saved" in out, err
        code, out, err = await run_cli(*crawl_args(cfg, server, "--token-store", str(store)))
        assert code == 0, err
    assert state.count("password") == 1 and state.count("refresh_token", "ok") == 1  # both from the check


async def test_an_incomplete_crawl_exits_8_and_names_the_partitions_unless_allowed(tmp_path) -> None:
    api = DemoAPI(per_project=100, max_page_size=20)  # 5 pages per partition; the crawler reads 2
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = write_config(tmp_path / "c.json", server)
        args = crawl_args(cfg, server, "--out", str(tmp_path / "a.jsonl"), crawler="BudgetedItems")
        code, out, err = await run_cli(*args)
        assert code == 8, out + err
        assert "completeness       INCOMPLETE (3 partition(s) missing records)" in out
        for name in ("alpha", "beta", "gamma"):
            assert re.search(rf"^ +{name}: .+", out, re.MULTILINE), out
        assert "pass --allow-incomplete" in err
        code, out, err = await run_cli(*args, "--allow-incomplete")
        assert code == 0, out + err
        assert "INCOMPLETE" in out  # accepted, still reported


# --- demo and help -----------------------------------------------------------------------------


async def test_the_demo_interrupted_resumes_with_the_command_it_prints(tmp_path) -> None:
    demo_args = ["demo", "--records", "3000", "--token-lifetime", "1", "--out", str(tmp_path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauthpw_async",
        *demo_args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    state_file = tmp_path / "demo-state.json"
    for _ in range(1000):
        await asyncio.sleep(0.02)
        if state_file.exists():
            break
    proc.send_signal(signal.SIGINT)
    out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 130, out + err
    assert "summary (interrupted):" in out
    found = re.search(r"run again to resume: (.+)$", err, re.MULTILINE)
    assert found, err
    command = shlex.split(found[1])
    assert command[0] == "oauthpw-async" and command[1:] == [*demo_args, "--resume"]
    code, out, err = await run_cli(*command[1:])
    assert code == 0, out + err
    assert "resumed            yes" in out and "3,000 distinct records: complete" in out


def test_every_option_of_every_subcommand_has_help_and_shows_its_default(capsys) -> None:
    from oauthpw_async.cli import build_parser, main

    def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, argparse.ArgumentParser]]:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not nested:
            return [(" ".join(path), parser)]
        return [leaf for n, p in nested[0].choices.items() for leaf in leaves(p, (*path, n))]

    commands = leaves(build_parser(), ())
    assert {name for name, _ in commands} == {
        "check", "crawl", "demo", "serve", "state show", "state reset", "fleet status", "fleet reset",
        "airbyte spec", "airbyte check", "airbyte discover", "airbyte read", "schema",
    }  # fmt: skip
    for name, sub in commands:
        with pytest.raises(SystemExit) as exited:
            main([*name.split(), "--help"])
        assert exited.value.code == 0
        helps = option_helps(capsys.readouterr().out)
        for action in sub._actions:
            flag = action.option_strings[-1]
            text = next((t for inv, t in helps.items() if flag in inv.replace(",", " ").split()), None)
            assert text, f"{name} {flag} has no help line"
            shown_default = action.default not in (None, False, argparse.SUPPRESS) and action.default != []
            if shown_default or (action.default is None and not action.required):
                assert "default" in text, f"{name} {flag}: no default shown in {text!r}"
            if shown_default:
                assert f"(default: {action.default})" in text, (name, flag, text)


def test_help_shows_every_command_holds_no_rest_markup_and_states_each_default_once(capsys) -> None:
    from oauthpw_async.cli import build_parser, main

    def every(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], list[str]]]:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        names = list(nested[0].choices) if nested else []
        below = [item for n in names for item in every(nested[0].choices[n], (*path, n))]
        return [(path, names), *below]

    for path, commands in every(build_parser(), ()):
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        usage = out.split("\n\n")[0]
        for command in commands:
            assert command in usage, f"the usage line of {path} hides {command}"
        assert "``" not in out and re.search(r":[a-z]+:`", out) is None, f"reST markup in the help of {path}"
        for invocation, text in option_helps(out).items():
            assert text.count("(default:") <= 1, (path, invocation, text)


def option_helps(help_text: str) -> dict[str, str]:
    """Each option's invocation (``--out PATH``) and its help text, from ``--help`` output."""
    lines = help_text.splitlines()
    start = lines.index("options:")
    helps: dict[str, str] = {}
    current = ""
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if line.startswith("  -"):
            invocation, _, text = line.strip().partition("  ")
            current = invocation
            helps[current] = text.strip()
        else:
            helps[current] = (helps[current] + " " + line.strip()).strip()
    return helps


async def test_serve_fault_switches_reach_the_server(tmp_path) -> None:
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
        "--records",
        "60",
        "--token-fault",
        "503",
        "--api-fault",
        "500@0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    text = b""
    while not text.rstrip().endswith(b"}"):
        text += await asyncio.wait_for(proc.stdout.readline(), 30)
    cfg = tmp_path / "c.json"
    cfg.write_bytes(text[text.index(b"{") :])
    try:
        code, out, err = await run_cli("check", "--config", str(cfg), "--json")
        assert code == 0, err
        assert orjson.loads(out)["steps"][0]["attempts"] == 2  # the injected 503, then the login
        code, out, err = await run_cli(
            "crawl", "--config", str(cfg), "--crawler", "tests.crawlers_for_cli:SlowCursorItems",
            "--base-url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "o.jsonl"),
        )  # fmt: skip
        assert code == 0, err
        assert re.search(r"retries +1\n", out), out  # the injected 500, retried
        assert len((tmp_path / "o.jsonl").read_bytes().splitlines()) == 60
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


# --- in-process: the summary and the stdout sink ----------------------------------------------------


def test_the_summary_names_each_incomplete_partition_with_its_reasons() -> None:
    from oauthpw_async.cli.report import RunSummary, format_summary
    from oauthpw_async.crawler import CrawlStats, PartitionStats
    from oauthpw_async.provider import TokenStats

    stats = CrawlStats(records=40, pages=2, partitions_total=2, partitions_done=2)
    stats.partitions["alpha"] = PartitionStats(pages=1, records=20, done=True)
    stats.partitions["beta"] = PartitionStats(pages=1, records=20, done=True, problems=["page budget", "short"])
    text = "\n".join(
        format_summary(
            RunSummary(stats, TokenStats(), 1.0, "out.jsonl", 140, resumed=True, already_done=1, outcome="finished")
        )
    )
    assert "resumed            yes: 1 of 2 partition(s) already done" in text
    assert "records            40 this run" in text and "out.jsonl (140 records in total)" in text
    assert "completeness       INCOMPLETE (1 partition(s) missing records)" in text
    assert "beta: page budget; short" in text and "alpha:" not in text
    stats.partitions["beta"].problems.clear()
    complete = format_summary(RunSummary(stats, TokenStats(), 1.0, "stdout"))
    assert complete[-1].split() == ["completeness", "complete"]


async def test_a_stdout_flush_returns_only_after_every_earlier_record_is_written() -> None:
    import io
    import threading

    from oauthpw_async.crawler import StreamSink

    class SlowStream(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.entered = threading.Event()

        def write(self, data) -> int:  # only the first write blocks until released, like a full pipe
            if not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(10)
            return super().write(data)

    stream = SlowStream()
    sink = StreamSink(stream)
    await sink.write([{"id": 1}], "a")
    first = asyncio.ensure_future(sink.flush())  # takes record 1 and blocks in its write
    while not stream.entered.is_set():
        await asyncio.sleep(0.01)
    await sink.write([{"id": 2}], "b")
    second = asyncio.ensure_future(sink.flush())
    await asyncio.sleep(0.05)
    assert not first.done() and not second.done()  # neither may let its checkpoint through yet
    stream.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert stream.getvalue() == b'{"id":1}\n{"id":2}\n'


@pytest.mark.parametrize("text", ["x = " + "[" * 500 + "]" * 500, "timeout = " + "9" * 4301])
async def test_check_json_on_a_hostile_toml_file_still_prints_json(tmp_path, text: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('password = "hostile-pw-1"\n' + text)
    code, out, err = await run_cli("check", "--config", str(cfg), "--json")
    assert code == 2 and "Traceback" not in err
    result = orjson.loads(out)
    assert result["error"] and "hostile-pw-1" not in out + err
