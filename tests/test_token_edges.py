"""The token endpoint's edges over real HTTP (127.0.0.1): how servers word a wrong password,
encode client credentials, want parameters, state lifetimes and echo requests back."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from oauthpw_async import (
    AiohttpTokenEndpoint,
    DefinitiveTokenError,
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    LoginResponseError,
    PasswordGrantConfig,
    RetryPolicy,
    Secret,
    Token,
    TokenError,
    TokenProvider,
    TransientTokenError,
    build_password_request,
    build_refresh_request,
    exchange,
    parse_token_response,
)
from oauthpw_async.testing import AuthServerState, FakeClock, LocalServer, Quirks

from .test_fuzz import encodings

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


async def send(config: PasswordGrantConfig, refresh_token: str | None = None, retry: RetryPolicy = FAST) -> Token:
    endpoint = AiohttpTokenEndpoint(config)
    try:
        if refresh_token is None:
            request = build_password_request(config)
        else:
            request = build_refresh_request(config, Secret(refresh_token))
        return await exchange(endpoint, request, lambda r, s: parse_token_response(config, request, r, s), policy=retry)
    finally:
        await endpoint.aclose()


# --- a wrong password, however the server words it ------------------------------------------------

WORDINGS = {
    "invalid_grant": InvalidCredentials,
    "servicenow": InvalidCredentials,
    "invalid_request": InvalidCredentials,
    "description_field": InvalidCredentials,
    "message_field": InvalidCredentials,
    "sentence_in_error": InvalidCredentials,
    "nested_error": InvalidCredentials,
    "plain_401": InvalidCredentials,
    "plain_400": InvalidCredentials,
    "success_false": InvalidCredentials,
    "server_error_500": InvalidCredentials,
    "html_login": LoginResponseError,  # a sign-in page cannot be read, but is definitive all the same
}


@pytest.mark.parametrize("style", list(WORDINGS))
async def test_each_wording_of_a_wrong_password_costs_one_request(style: str) -> None:
    state = AuthServerState(lockout_after=3, quirks=Quirks(bad_password_style=style))
    async with LocalServer(state) as server:
        with pytest.raises(DefinitiveTokenError) as info:
            await send(server.config(password="wrong"))
    assert type(info.value) is WORDINGS[style]
    assert state.token_requests == 1 and state.failed_logins == 1  # never retried: no lockout


@pytest.mark.parametrize("style", list(WORDINGS))
async def test_provider_stops_after_one_rejected_login_whatever_the_wording(style: str) -> None:
    state = AuthServerState(lockout_after=3, quirks=Quirks(bad_password_style=style))
    async with LocalServer(state) as server, TokenProvider(server.config(password="wrong"), retry=FAST) as tokens:
        with pytest.raises(WORDINGS[style]):
            await tokens.get()
        for _ in range(10):
            with pytest.raises(DefinitiveTokenError):
                await tokens.get()
    assert state.token_requests == 1 and not state.locked


async def test_a_throttled_login_is_transient_and_honours_retry_after() -> None:
    state = AuthServerState(quirks=Quirks(bad_password_style="throttled_429"))
    async with LocalServer(state) as server:
        with pytest.raises(TransientTokenError) as info:
            await send(server.config(password="wrong"), retry=ONCE)
    assert info.value.retry_after == 1 and info.value.status == 429


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauthpw_async",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("style", ["invalid_request", "description_field", "success_false", "server_error_500"])
async def test_check_exits_3_for_a_wrong_password_however_worded(tmp_path, style: str) -> None:
    state = AuthServerState(quirks=Quirks(bad_password_style=style))
    async with LocalServer(state) as server:
        conf = {
            "Access Token URL": server.token_url,
            "Client Id": state.client_id,
            "Client Secret": state.client_secret,
            "Username": state.username,
            "Password": "wrong-password-value",
        }
        (tmp_path / "c.json").write_bytes(orjson.dumps(conf))
        code, out, err = await run_cli("check", "--config", str(tmp_path / "c.json"))
    assert code == 3, out + err
    assert "check Username and Password" in err
    assert "wrong-password-value" not in out + err and state.client_secret not in out + err
    assert state.token_requests == 1


# --- HTTP Basic: both encodings, and a hint towards the other one -----------------------------------


@pytest.mark.parametrize(
    ("server_reads", "client_sends", "works"),
    [
        ("form", "basic", True),
        ("plain", "basic_plain", True),
        ("form", "basic_plain", False),
        ("plain", "basic", False),
    ],
)
async def test_basic_encodings_against_servers_that_decode_or_not(server_reads, client_sends, works) -> None:
    # The default client secret holds '+ / : %', which the two encodings spell differently.
    state = AuthServerState(quirks=Quirks(client_auth="basic", basic_encoding=server_reads))
    async with LocalServer(state) as server:
        config = server.config(client_auth=client_sends)
        if works:
            token = await send(config)
            assert state.check_authorization(token.authorization)
            return
        with pytest.raises(InvalidClient) as info:
            await send(config)
    other = "basic_plain" if client_sends == "basic" else "client_auth = basic "
    assert other in str(info.value) and state.token_requests == 1


# --- Body Parameters on the wire --------------------------------------------------------------------


async def test_readme_scope_in_body_parameters_reaches_the_server_once() -> None:
    # The server refuses a repeated parameter (RFC 6749 §3.2) and requires the scope.
    state = AuthServerState(quirks=Quirks(required_body_param=("scope", "useraccount")))
    async with LocalServer(state) as server:
        config = server.config(scope="useraccount", body_parameters={"scope": "useraccount"})
        token = await send(config)
        assert state.check_authorization(token.authorization)


async def test_body_client_id_with_basic_is_not_refused_like_okta() -> None:
    # Quirks(client_auth="either") refuses Basic plus a body client_id, as Okta does.
    state = AuthServerState()
    async with LocalServer(state) as server:
        config = server.config(client_auth="basic", client_id=None, body_parameters={"client_id": state.client_id})
        token = await send(config)
    assert state.check_authorization(token.authorization) and state.count("password", "ok") == 1


async def test_body_parameters_go_on_refresh_requests_unless_switched_off() -> None:
    state = AuthServerState(quirks=Quirks(required_body_param=("resource", "https://api.example.com")))
    async with LocalServer(state) as server:
        config = server.config()
        first = await send(config)
        assert first.refresh_token is not None
        second = await send(config, refresh_token=first.refresh_token.reveal())
        assert state.check_authorization(second.authorization)
        off = server.config(body_parameters_on_refresh=False)
        assert second.refresh_token is not None
        with pytest.raises(InvalidRequest):
            await send(off, refresh_token=second.refresh_token.reveal())


# --- refresh-token lifetimes: an expired refresh token is never presented -----------------------------


@pytest.mark.parametrize("field", ["refresh_expires_in", "refresh_token_expires_in", "refresh_token_expires_at"])
async def test_expired_refresh_token_is_never_presented(field: str) -> None:
    clock = FakeClock()
    state = AuthServerState(
        token_lifetime=100,
        refresh_token_lifetime=150,
        quirks=Quirks(refresh_lifetime_field=field),
        clock=clock.monotonic,
        wall=clock.wall,
    )
    async with clock.autojump(), LocalServer(state) as server, TokenProvider(server.config(), clock=clock) as tokens:
        first = await tokens.get()
        assert first.refresh_expires_at == pytest.approx(clock.now + 150, abs=1)
        await clock.sleep(400)  # access and refresh token both expired by now
        second = await tokens.get()
    assert second.access_token != first.access_token and state.check_authorization(second.authorization)
    assert state.count("refresh_token", "expired") == 0  # never presented
    assert state.count("password", "ok") == 2


async def test_unexpired_refresh_token_is_used() -> None:
    clock = FakeClock()
    state = AuthServerState(token_lifetime=100, refresh_token_lifetime=1000, clock=clock.monotonic, wall=clock.wall)
    async with clock.autojump(), LocalServer(state) as server, TokenProvider(server.config(), clock=clock) as tokens:
        await tokens.get()
        await clock.sleep(400)
        await tokens.get()
    assert state.count("refresh_token", "ok") == 1 and state.count("password", "ok") == 1


# --- servers that echo the request back ---------------------------------------------------------------


def forms_of(*secrets: str) -> list[str]:
    return [f for s in secrets for f in encodings(s, "demo-client").values() if len(f) >= 3]


@pytest.mark.parametrize("echo", ["json", "html", "text"])
@pytest.mark.parametrize("client_auth", ["body", "basic", "basic_plain"])
@pytest.mark.parametrize("wrong", ["password", "client_secret", "refresh_token"])
async def test_an_echoed_request_never_shows_a_secret(echo: str, client_auth: str, wrong: str) -> None:
    password, secret = 'pw: + / % & = é "q" <x>', "cs+/:%&=é<>\"'"
    state = AuthServerState(
        client_secret=secret, password=password, quirks=Quirks(echo_request=echo, client_auth="either")
    )
    async with LocalServer(state) as server:
        config = server.config(client_auth=client_auth)
        if wrong == "password":
            config = server.config(client_auth=client_auth, password=password + "x")
        elif wrong == "client_secret":
            config = server.config(client_auth=client_auth, client_secret=secret + "x")
        refresh = "rt-unknown: + / é" if wrong == "refresh_token" else None
        with pytest.raises(TokenError) as info:
            await send(config, refresh_token=refresh, retry=ONCE)
    text = "\n".join([str(info.value), repr(info.value), str(info.value.error_code)])
    sent = [config.password.reveal() if config.password else "", *(s for s in [refresh] if s)]
    sent.append(config.client_secret.reveal() if config.client_secret else "")
    forms = forms_of(*[s for s in sent if s])
    # The answer really did hold the secrets (the same request, answered in memory)...
    request = build_refresh_request(config, Secret(refresh)) if refresh else build_password_request(config)
    echoed = state.handle_token({k.lower(): v for k, v in request.headers}, request.body).body.decode()
    assert any(form in echoed for form in forms)
    # ...and the error shows none of them.
    for form in forms:
        assert form not in text, form
