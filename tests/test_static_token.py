"""Tokens people already have: StaticToken, its configuration, and one loader for both kinds of connection."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import anyio
import pytest

from oauthpw_async import (
    AuthorizedSession,
    ConfigError,
    InvalidCredentials,
    StaticToken,
    StaticTokenConfig,
    StaticTokenRejected,
    TokenProvider,
    TokenSource,
    UsageError,
    load_token_source,
)
from oauthpw_async.crawler import Crawler, Cursor, ListSink
from oauthpw_async.testing import AuthServerState, FakeClock, LocalServer
from oauthpw_async.testing.api import DemoAPI

pytestmark = pytest.mark.anyio

PAT = "pat-0123456789abcdef"
#: HTTP goes through aiohttp (asyncio); the source alone runs on both backends (conftest).
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


# --- the source ------------------------------------------------------------------------------------


async def test_a_static_token_is_a_token_source_with_the_configured_scheme() -> None:
    clock = FakeClock()
    async with StaticToken(PAT, clock=clock) as tokens:
        token = await tokens.get()
        assert await tokens.authorization() == f"Bearer {PAT}" == token.authorization
        assert tokens.clock is clock and tokens.config.verify_tls and not tokens.rejected
        assert token.access_token.reveal() == PAT and token.lifetime == float("inf")
    assert isinstance(tokens, TokenSource)
    assert await StaticToken(PAT, auth_scheme="token").authorization() == f"token {PAT}"  # GitHub classic
    raw = StaticToken("Basic dXNlcjp0b2tlbg==", use_raw_token=True)  # a ready header value
    assert await raw.authorization() == "Basic dXNlcjp0b2tlbg=="
    for shown in (repr(tokens), str(tokens), repr(tokens.config), repr(token), str(token.describe())):
        assert PAT not in shown


def test_the_password_grant_provider_is_a_token_source_too(config: Any) -> None:
    assert isinstance(TokenProvider(config), TokenSource)


def test_token_sources_do_not_import_aiohttp() -> None:
    code = (
        "import sys, oauthpw_async\n"
        "oauthpw_async.StaticToken, oauthpw_async.TokenSource, oauthpw_async.load_token_source\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_refused_static_token_fails_every_caller_at_once_until_replaced(caplog: Any) -> None:
    tokens = StaticToken(PAT)
    token = await tokens.get()
    other = await StaticToken("another-token").get()
    assert tokens.invalidate(other) is False and not tokens.rejected
    with caplog.at_level(logging.ERROR, logger="oauthpw_async.sources"):
        assert all(tokens.invalidate(token) for _ in range(1000))
    assert tokens.rejected and tokens.stats.invalidations == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the static token from the configuration was refused (HTTP 401): replace it"
    ]
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await tokens.get()
        except StaticTokenRejected as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(caller)
    assert len(errors) == 1000 and len({id(e) for e in errors}) == 1000
    err = errors[0]
    assert isinstance(err, InvalidCredentials) and err.status == 401
    assert "replace the token" in str(err) and PAT not in str(err)
    with pytest.raises(StaticTokenRejected):
        await tokens.authorization()
    tokens.replace("pat-new-value-42")
    assert await tokens.authorization() == "Bearer pat-new-value-42" and not tokens.rejected


def test_bad_static_tokens_are_refused_at_load_time_without_echoing_them() -> None:
    for value, field in [("", "token"), (" pat ", "token"), ("pat\r\nX: y", "token"), ("two words", "token")]:
        with pytest.raises(ConfigError, match=field) as info:
            StaticTokenConfig(token=value)
        assert not value.strip() or value.strip() not in str(info.value)
    with pytest.raises(ConfigError, match="auth_scheme"):
        StaticTokenConfig(token=PAT, auth_scheme="Bearer token")


# --- configuration -------------------------------------------------------------------------------


def test_load_token_source_picks_the_kind_by_the_fields_present(tmp_path: Any) -> None:
    env = {"JIRA_PAT": PAT}
    jira = load_token_source({"Token": {"env": "JIRA_PAT"}, "Auth Scheme": "Bearer"}, env=env)
    assert isinstance(jira, StaticToken) and jira.config.authorization == f"Bearer {PAT}"
    assert jira.config.token_from == "environment variable JIRA_PAT"

    (tmp_path / "pat.txt").write_text(PAT + "\n")
    toml = tmp_path / "github.toml"
    toml.write_text(
        f'[connection]\n"Token File" = "{tmp_path / "pat.txt"}"\n"Auth Scheme" = "token"\n"Verify TLS" = true\n'
    )
    github = load_token_source(toml)
    assert isinstance(github, StaticToken) and github.config.authorization == f"token {PAT}"
    assert github.config.token_from == f"file {tmp_path / 'pat.txt'}"

    json_file = tmp_path / "okta.json"
    json_file.write_text(
        f'{{"API Key": {{"file": "{tmp_path / "pat.txt"}"}}, "Use Raw Token": "yes", "CA Bundle": "ca.pem"}}'
    )
    okta = load_token_source(json_file)
    assert isinstance(okta, StaticToken) and okta.config.authorization == PAT
    assert okta.config.ca_bundle == "ca.pem"

    grant = load_token_source(
        {"Access Token URL": "https://auth.example.com/token", "Username": "u", "Password": {"env": "PW"}},
        env={"PW": "secret"},
    )
    assert isinstance(grant, TokenProvider) and grant.config.username == "u"


def test_static_token_configuration_errors_say_what_to_do(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"either a static token.*not both; remove access_token_url, username"):
        load_token_source({"Token": PAT, "Access Token URL": "https://a.example/t", "Username": "u"})
    with pytest.raises(ConfigError, match="environment variable JIRA_PAT is not set"):
        load_token_source({"Token": {"env": "JIRA_PAT"}}, env={})
    with pytest.raises(ConfigError, match="cannot read the token file") as info:
        load_token_source({"Token File": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"Auth Schem: unknown field; did you mean 'auth_scheme'") as info:
        load_token_source({"Token": PAT, "Auth Schem": "Bearer"})
    assert PAT not in str(info.value)
    with pytest.raises(ConfigError, match="more than once"):
        load_token_source({"Token": PAT, "API Key": PAT})
    with pytest.raises(ConfigError, match="verify_tls: must be true or false"):
        load_token_source({"Token": PAT, "Verify TLS": "maybe"})
    with pytest.raises(UsageError, match="store: a static token is never renewed or stored"):
        load_token_source({"Token": PAT}, store=object())
    from oauthpw_async.static_config import load_static_config

    with pytest.raises(ConfigError, match="token: is required"):
        load_static_config({"Auth Scheme": "Bearer"})
    with pytest.raises(ConfigError, match="belongs to a password-grant connection"):
        load_static_config({"Token": PAT, "Client Id": "x"})


# --- over HTTP -------------------------------------------------------------------------------------


@asyncio_only
async def test_the_session_and_a_thousand_refused_requests_end_in_one_clear_error(caplog: Any) -> None:
    api = DemoAPI()
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        good = StaticToken(state.issue_static_token())
        async with AuthorizedSession(good, base_url=server.base_url) as s:
            assert (await s.get("/api/ping")).status == 200

        revoked = StaticToken(state.issue_static_token())
        state.revoke_access_tokens()
        errors: list[BaseException] = []
        async with AuthorizedSession(revoked, base_url=server.base_url, limit=10) as s:

            async def one() -> None:
                try:
                    await s.get("/api/ping")
                except StaticTokenRejected as exc:
                    errors.append(exc)

            with caplog.at_level(logging.ERROR, logger="oauthpw_async.sources"):
                async with anyio.create_task_group() as tg:
                    for _ in range(1000):
                        tg.start_soon(one)
    assert len(errors) == 1000
    assert api.counts["ping:401"] <= 2 * 10  # the requests already in flight, no more
    assert s.stats.unauthorized == api.counts["ping:401"] and revoked.stats.invalidations == 1
    assert len([r for r in caplog.records if "replace it" in r.getMessage()]) == 1


class Items(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")


@asyncio_only
async def test_the_crawler_takes_a_static_token() -> None:
    api = DemoAPI(per_project=120)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        sink = ListSink()
        stats = await Items(base_url=server.base_url).crawl(StaticToken(state.issue_static_token()), sink)
        assert len(sink.records) == 120 and stats.complete

        refused = StaticToken("not-a-token-this-server-knows")
        with pytest.raises(StaticTokenRejected, match="refused the static token"):
            await Items(base_url=server.base_url).crawl(refused, ListSink(), concurrency=8)
    assert api.counts["list:401"] == 1 and state.token_requests == 0


# --- the command line: check and crawl take the same static-token file ----------------------------------------


@asyncio_only
async def test_check_validates_a_static_token_file_and_probes_the_api_without_showing_the_token(tmp_path: Any) -> None:
    import orjson

    from .test_cli import run_cli

    api = DemoAPI(per_project=10)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        token = state.issue_static_token()
        cfg = tmp_path / "pat.json"
        cfg.write_bytes(orjson.dumps({"Token": {"env": "DEMO_PAT"}, "Auth Scheme": "Bearer"}))
        env = {"DEMO_PAT": token}
        code, out, err = await run_cli("check", "--config", str(cfg), env=env)
        assert code == 0, err
        assert "the connection file is valid" in out and "unknown field" not in out + err
        code, _, err = await run_cli("check", "--config", str(cfg), "--token-store", str(tmp_path / "t"), env=env)
        assert code == 2 and "never renewed" in err
        probe = ["--probe", "/api/cursor/items?project=alpha", "--base-url", server.base_url]
        code, out, err = await run_cli("check", "--config", str(cfg), *probe, env=env)
        assert code == 0, err
        assert "HTTP 200" in out and api.counts["list:200"] == 1
        code, out, _ = await run_cli("check", "--json", "--config", str(cfg), *probe, env=env)
        doc = orjson.loads(out)
        assert code == 0 and doc["ok"] and doc["probe"]["status"] == 200 and doc["kind"] == "static token"
        # A token the API refuses: exit 3 (credentials rejected), as crawl exits, and it says to replace it.
        code, out, err = await run_cli("check", "--config", str(cfg), *probe, env={"DEMO_PAT": "not-a-valid-pat"})
        assert code == 3 and "HTTP 401" in out and "replace" in err.lower()
        everything = out + err
    assert token not in everything and "not-a-valid-pat" not in everything
    assert state.token_requests == 0  # nothing to log in to


@asyncio_only
async def test_check_probe_calls_the_api_with_the_checks_own_token(tmp_path: Any) -> None:
    import orjson

    from .test_cli import run_cli

    api = DemoAPI(per_project=10)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        cfg = tmp_path / "c.json"
        cfg.write_bytes(orjson.dumps(server.connection()))
        url = f"{server.base_url}/api/cursor/items?project=alpha"
        code, out, err = await run_cli("check", "--config", str(cfg), "--probe", url)
        assert code == 0, err
        assert "HTTP 200" in out and api.counts["list:200"] == 1
        code, _, err = await run_cli("check", "--config", str(cfg), "--probe", "/api/cursor/items")
        assert code == 2 and "--base-url" in err  # a path needs the base URL
    assert state.count("password") == 1  # the probe took the check's token: no second login
    assert state.password not in out + err and state.client_secret not in out + err


@asyncio_only
async def test_crawl_takes_a_token_wait_and_refuses_a_negative_one(tmp_path: Any) -> None:
    import orjson

    from .test_cli import crawl_args, run_cli

    api = DemoAPI(per_project=20, max_page_size=20)
    state = AuthServerState()
    async with LocalServer(state, api=api) as server:
        cfg = tmp_path / "c.json"
        cfg.write_bytes(orjson.dumps(server.connection()))
        code, out, err = await run_cli(*crawl_args(cfg, server, "--token-wait", "30"))
        assert code == 0, err
        assert {orjson.loads(line)["id"] for line in out.splitlines()} == api.expected_ids()
        code, _, err = await run_cli(*crawl_args(cfg, server, "--token-wait", "-1"))
    assert code == 2 and "--token-wait must be a number of seconds >= 0" in err
