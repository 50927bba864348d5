"""Transport and provider over real HTTP against the local authorization server (127.0.0.1)."""

from __future__ import annotations

import anyio
import pytest
from aiohttp import web

from oauthpw_async import (
    AiohttpTokenEndpoint,
    CredentialsLockedOut,
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    RetryPolicy,
    TokenProvider,
    TokenRedirectError,
    TokenResponseError,
    TokenTransportError,
    TransientTokenError,
    UnsupportedGrantType,
    build_password_request,
    exchange,
    parse_token_response,
)
from oauthpw_async.testing import AuthServerState, FakeClock, Fault, LocalServer, Quirks

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


async def login(server: LocalServer, retry: RetryPolicy = FAST, **overrides):
    config = server.config(**overrides)
    endpoint = AiohttpTokenEndpoint(config)
    try:
        request = build_password_request(config)
        return await exchange(endpoint, request, lambda r, s: parse_token_response(config, request, r, s), policy=retry)
    finally:
        await endpoint.aclose()


QUIRKS = {
    "rfc": Quirks(),
    "expires_in_string": Quirks(expires_in="string"),
    "expires_in_missing": Quirks(expires_in="missing"),
    "lowercase_type": Quirks(token_type="bearer"),
    "no_type": Quirks(token_type=None),
    "plain_text_token": Quirks(token_format="text"),
    "json_string_token": Quirks(token_format="json_string"),
    "salesforce": Quirks(salesforce=True),
    "custom_grant": Quirks(grant_type_name="urn:vendor:grant:password"),
    "basic_only": Quirks(client_auth="basic"),
    "public_client": Quirks(client_auth="none"),
    "json_only": Quirks(json_only=True),
    "tenant_header": Quirks(required_header=("X-Tenant", "acme")),
    "resource_param": Quirks(required_body_param=("resource", "https://api.example.com")),
    "keycloak_extras": Quirks(extra_fields={"not-before-policy": 0, "refresh_expires_in": 1800}),
}


@pytest.mark.parametrize("name", list(QUIRKS))
async def test_login_against_each_server_flavour(name: str) -> None:
    async with LocalServer(AuthServerState(quirks=QUIRKS[name], token_lifetime=1800)) as server:
        token = await login(server, default_expires_in=900)
        assert server.auth.check_authorization(token.authorization)
        assert token.authorization.startswith("Bearer ")
        assert server.auth.count("password", "ok") == 1
        expected = {"expires_in_missing": 900, "plain_text_token": 900, "json_string_token": 900}.get(name, 1800)
        if name == "salesforce":
            assert token.extra["instance_url"] == server.base_url and token.refresh_token is None
            assert token.lifetime_source == "issued_at" and token.lifetime == pytest.approx(900, abs=2)
        else:
            assert token.lifetime == pytest.approx(expected)


async def test_basic_and_body_credentials_together_are_refused_like_okta() -> None:
    async with LocalServer(AuthServerState(quirks=Quirks(client_auth="basic"))) as server:
        with pytest.raises(InvalidClient):
            await login(server, client_auth="body")
        assert server.auth.token_requests == 1


async def test_form_body_to_a_json_only_server_is_a_clear_error() -> None:
    async with LocalServer(AuthServerState(quirks=Quirks(json_only=True))) as server:
        with pytest.raises(InvalidRequest, match="body encoding"):
            await login(server, body_encoding="form")


async def test_wrong_grant_type_says_to_set_grant_type() -> None:
    async with LocalServer(AuthServerState(quirks=Quirks(grant_type_name="custom"))) as server:
        with pytest.raises(UnsupportedGrantType, match="set Grant Type"):
            await login(server, grant_type="password")


@pytest.mark.parametrize("style", ["invalid_grant", "servicenow"])
async def test_rejected_password_costs_exactly_one_request(style: str) -> None:
    state = AuthServerState(lockout_after=3, quirks=Quirks(bad_password_style=style))
    async with LocalServer(state) as server:
        config = server.config(password="wrong")
        async with TokenProvider(config, retry=FAST) as tokens:
            with pytest.raises(InvalidCredentials):
                await tokens.get()
            for _ in range(20):
                with pytest.raises(CredentialsLockedOut):
                    await tokens.get()
        assert state.token_requests == 1 and state.failed_logins == 1 and not state.locked


@pytest.mark.parametrize(
    ("fault", "retry_after_used"),
    [
        (Fault("status", status=503, retry_after="0.05"), True),
        (Fault("status", status=429, retry_after="0"), True),
        (Fault("status", status=502), False),
        (Fault("drop"), False),
    ],
)
async def test_transient_failures_are_retried(fault: Fault, retry_after_used: bool) -> None:
    state = AuthServerState()
    state.inject(fault, fault)
    async with LocalServer(state) as server:
        token = await login(server)
        assert server.auth.check_authorization(token.authorization)
        assert (
            state.count("password", "ok") == 1 and sum(v for k, v in state.counts.items() if k.startswith("fault")) == 2
        )


async def test_retries_are_bounded() -> None:
    state = AuthServerState()
    state.inject(*[Fault("status", status=503)] * 10)
    async with LocalServer(state) as server:
        with pytest.raises(TransientTokenError):
            await login(server, retry=RetryPolicy(max_attempts=3, base_delay=0.01))
        assert state.counts["fault:status"] == 3


async def test_retry_after_beyond_the_cap_is_not_waited_for() -> None:
    state = AuthServerState()
    state.inject(Fault("status", status=429, retry_after="3600"))
    async with LocalServer(state) as server:
        with pytest.raises(TransientTokenError) as info:
            await login(server)
        assert info.value.retry_after == 3600 and state.token_requests == 1


@pytest.mark.parametrize("kind", ["html", "malformed", "empty"])
async def test_bad_bodies_are_response_errors_not_retried(kind: str) -> None:
    state = AuthServerState()
    state.inject(Fault(kind))  # type: ignore[arg-type]
    async with LocalServer(state) as server:
        with pytest.raises(TokenResponseError) as info:
            await login(server)
        assert info.value.status == 200 and state.token_requests == 1


async def test_oversized_body_is_refused() -> None:
    state = AuthServerState()
    state.inject(Fault("huge"))
    async with LocalServer(state) as server:
        with pytest.raises(TokenResponseError, match="max_response_bytes"):
            await login(server)


async def test_timeout_is_a_transport_error() -> None:
    state = AuthServerState()
    state.inject(*[Fault("delay", delay=0.6)] * 2)
    async with LocalServer(state) as server:
        with pytest.raises(TokenTransportError, match="timed out"):
            await login(server, retry=RetryPolicy(max_attempts=2, base_delay=0.01), timeout=0.2)


async def test_unreachable_server_is_a_transport_error() -> None:
    async with LocalServer() as server:
        config = server.config()
    # the server is gone; its port is closed now
    endpoint = AiohttpTokenEndpoint(config)
    request = build_password_request(config)
    with pytest.raises(TokenTransportError) as info:
        await exchange(
            endpoint,
            request,
            lambda r, s: parse_token_response(config, request, r, s),
            policy=RetryPolicy(max_attempts=2, base_delay=0.01),
        )
    await endpoint.aclose()
    assert config.password.reveal() not in str(info.value)


async def test_redirects_are_not_followed() -> None:
    hits: list[str] = []

    def api(app: web.Application, state: AuthServerState) -> None:
        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound("http://127.0.0.1:9/collect?x=1")

        async def collect(request: web.Request) -> web.Response:
            hits.append(await request.text())
            return web.Response(text="{}")

        app.router.add_post("/old-token", moved)
        app.router.add_post("/collect", collect)

    async with LocalServer(api=api) as server:
        with pytest.raises(TokenRedirectError, match=r"redirected to http://127.0.0.1:9/collect") as info:
            await login(server, access_token_url=f"{server.base_url}/old-token")
        assert "x=1" not in str(info.value) and hits == []


async def test_reuse_detection_family_revocation_is_never_triggered() -> None:
    # Two seconds of 0.6-second tokens on a fake clock (the server's too): about four lifetimes
    # of 200 tasks renewing and invalidating, over real HTTP, without waiting for them.
    clock = FakeClock()
    state = AuthServerState(
        token_lifetime=0.6, clock=clock.monotonic, quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True)
    )
    async with clock.autojump(), LocalServer(state) as server:
        async with TokenProvider(server.config(), retry=FAST, clock=clock) as tokens:
            end = clock.now + 2.0

            async def worker() -> None:
                while clock.now < end:
                    tok = await tokens.get()
                    assert state.check_authorization(tok.authorization)
                    if len(state.counts) % 7 == 0:
                        tokens.invalidate(tok)
                    await clock.sleep(0.01)

            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(worker)
        assert state.count(outcome="reuse") == 0 and state.count(outcome="invalid_grant") == 0
        assert state.count("password") == 1 and state.count("refresh_token", "ok") >= 2


async def test_provider_over_http_with_a_shared_session() -> None:
    import aiohttp

    async with LocalServer() as server, aiohttp.ClientSession() as session:
        config = server.config()
        async with TokenProvider(config, endpoint=AiohttpTokenEndpoint(config, session)) as tokens:
            header = await tokens.authorization()
            assert server.auth.check_authorization(header)
        assert not session.closed  # a caller's session is the caller's to close


async def test_server_locks_the_account_after_n_failed_logins() -> None:
    """The lockout the provider protects against is real in the test server."""
    state = AuthServerState(lockout_after=3)
    async with LocalServer(state) as server:
        for _ in range(3):
            with pytest.raises(InvalidCredentials):
                await login(server, password="wrong")
        assert state.locked
        with pytest.raises(InvalidCredentials, match="locked"):
            await login(server)  # even the right password is refused now
        state.unlock()
        assert server.auth.check_authorization((await login(server)).authorization)
