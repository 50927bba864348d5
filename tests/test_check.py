"""check_connection: what a connection check tries, what it reports, and that it never holds a secret."""

from __future__ import annotations

import orjson
import pytest

from oauthpw_async import (
    CheckResult,
    ConfigError,
    CrawlError,
    FieldProblem,
    HTTPStatusError,
    InvalidClient,
    InvalidCredentials,
    InvalidScope,
    MemoryTokenStore,
    PasswordGrantConfig,
    RefreshTokenRejected,
    StateError,
    TokenProvider,
    TokenResponseError,
    TokenTransportError,
    TransientTokenError,
    UsageError,
    check_connection,
)
from oauthpw_async.check import ExitCode, exit_code_for
from oauthpw_async.grant import TokenRequest, TokenResponse
from oauthpw_async.testing import AuthServerState, FakeClock, Fault, InMemoryEndpoint, Quirks

pytestmark = pytest.mark.anyio

TOKEN_URL = "https://auth.example.com/oauth/token"


class Recording:
    """An endpoint that keeps every answer, to look for the tokens in the result afterwards."""

    def __init__(self, state: AuthServerState, clock: FakeClock) -> None:
        self.inner = InMemoryEndpoint(state, clock)
        self.bodies: list[bytes] = []

    async def send(self, request: TokenRequest) -> TokenResponse:
        response = await self.inner.send(request)
        self.bodies.append(response.body)
        return response

    def issued_secrets(self) -> list[str]:
        found = []
        for body in self.bodies:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                found += [str(data[k]) for k in ("access_token", "refresh_token") if data.get(k)]
        return found


def make_config(state: AuthServerState, **overrides: object) -> PasswordGrantConfig:
    fields: dict[str, object] = {
        "access_token_url": TOKEN_URL,
        "client_id": state.client_id,
        "client_secret": state.client_secret,
        "username": state.username,
        "password": state.password,
        **overrides,
    }
    return PasswordGrantConfig(**fields)


def assert_secret_free(result: CheckResult, state: AuthServerState, endpoint: Recording) -> None:
    text = orjson.dumps(result.as_dict()).decode() + repr(result)
    secrets = [state.password, state.client_secret, *endpoint.issued_secrets()]
    assert len(secrets) > 2  # the tokens really were collected
    for secret in secrets:
        assert secret not in text


async def test_login_then_refresh_with_rotation_is_reported_masked() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, extra_fields={"instance_url": "https://x"}))
    clock = FakeClock()
    endpoint = Recording(state, clock)
    result = await check_connection(make_config(state), endpoint=endpoint, clock=clock)
    assert result.ok and result.exit_code == ExitCode.OK and result.error is None
    assert [s.grant for s in result.steps] == ["password", "refresh_token"]
    login, refresh = result.login, result.refresh
    assert login is not None and refresh is not None
    assert login.ok and login.attempts == 1 and login.refresh_token == "issued"
    assert refresh.ok and refresh.attempts == 1 and refresh.refresh_token == "rotated"
    assert login.token is not None and login.token["expires_in"] == 3600.0
    assert login.token["extra"] == {"instance_url": "https://x"}
    assert login.token["access_token"].startswith("********")
    assert state.count("password", "ok") == 1 and state.count("refresh_token", "ok") == 1
    assert_secret_free(result, state, endpoint)


async def test_the_refresh_goes_to_the_access_token_url_when_no_refresh_url_is_set() -> None:
    state = AuthServerState()
    clock = FakeClock()
    config = make_config(state)
    assert config.refresh_token_url is None
    result = await check_connection(config, endpoint=Recording(state, clock), clock=clock)
    assert result.refresh is not None and result.refresh.ok
    assert result.refresh.url == TOKEN_URL == result.refresh_token_url
    assert state.count("refresh_token", "ok") == 1


async def test_the_refresh_goes_to_the_refresh_token_url_when_set() -> None:
    state = AuthServerState()
    clock = FakeClock()
    endpoint = Recording(state, clock)
    config = make_config(state, refresh_token_url="https://auth.example.com/oauth/refresh?tenant=a")
    result = await check_connection(config, endpoint=endpoint, clock=clock)
    assert result.refresh is not None
    assert result.refresh.url == "https://auth.example.com/oauth/refresh"  # shown without its query
    assert endpoint.inner.sent[1].url.startswith("https://auth.example.com/oauth/refresh")


async def test_a_kept_refresh_token_is_reported_as_kept() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=False))
    clock = FakeClock()
    result = await check_connection(make_config(state), endpoint=Recording(state, clock), clock=clock)
    assert result.refresh is not None and result.refresh.refresh_token == "kept"


async def test_no_refresh_token_means_no_refresh_and_says_why() -> None:
    state = AuthServerState(quirks=Quirks(issue_refresh_token=False))
    clock = FakeClock()
    result = await check_connection(make_config(state), endpoint=Recording(state, clock), clock=clock)
    assert result.ok and [s.grant for s in result.steps] == ["password"]
    assert result.login is not None and result.login.refresh_token == "none"
    assert "no refresh token was issued" in result.refresh_skipped
    assert state.count("refresh_token") == 0


async def test_a_rejected_password_is_sent_once_and_maps_to_exit_3() -> None:
    state = AuthServerState()
    clock = FakeClock()
    endpoint = Recording(state, clock)
    result = await check_connection(make_config(state, password="wrong"), endpoint=endpoint, clock=clock)
    assert not result.ok and isinstance(result.error, InvalidCredentials)
    assert result.exit_code == ExitCode.CREDENTIALS == 3
    assert len(result.steps) == 1 and not result.steps[0].ok and result.steps[0].attempts == 1
    assert state.count("password") == 1
    data = result.as_dict()
    assert data["ok"] is False and data["exit_code"] == 3
    assert data["error"]["type"] == "InvalidCredentials" and data["error"]["transient"] is False
    assert data["error"]["error_code"] == "invalid_grant"
    assert "wrong" not in orjson.dumps(data).decode()


async def test_a_transient_failure_is_retried_once_and_counted() -> None:
    state = AuthServerState()
    state.inject(Fault("status", status=503))
    clock = FakeClock()
    async with clock.autojump():
        result = await check_connection(make_config(state), endpoint=Recording(state, clock), clock=clock)
    assert result.ok
    assert result.login is not None and result.login.attempts == 2
    assert result.login.seconds > 0  # the backoff wait is part of the step's time


async def test_a_server_that_keeps_failing_maps_to_exit_5() -> None:
    state = AuthServerState()
    state.inject(Fault("status", status=503), Fault("status", status=503), Fault("status", status=503))
    clock = FakeClock()
    async with clock.autojump():
        result = await check_connection(make_config(state), endpoint=Recording(state, clock), clock=clock)
    assert isinstance(result.error, TransientTokenError) and result.exit_code == ExitCode.SERVER == 5
    assert result.login is not None and result.login.attempts == 2  # one retry, no more
    assert result.as_dict()["error"]["status"] == 503


async def test_a_failed_refresh_fails_the_check_after_a_good_login() -> None:
    state = AuthServerState()
    clock = FakeClock()
    endpoint = Recording(state, clock)
    state.inject(Fault("delay"), Fault("status", status=400))  # the login passes, the refresh gets a 400
    result = await check_connection(make_config(state), endpoint=endpoint, clock=clock)
    assert result.login is not None and result.login.ok
    assert result.refresh is not None and not result.refresh.ok
    assert result.error is not None and result.error.grant == "refresh_token"
    assert result.exit_code == ExitCode.REJECTED


async def test_with_a_store_the_newest_token_is_kept_and_a_provider_needs_no_login() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True))
    clock = FakeClock()
    store = MemoryTokenStore()
    config = make_config(state)
    result = await check_connection(config, store=store, endpoint=Recording(state, clock), clock=clock)
    assert result.stored and result.as_dict()["stored"] is True
    async with TokenProvider(config, store=store, endpoint=InMemoryEndpoint(state, clock), clock=clock) as tokens:
        await tokens.get()
        assert tokens.stats.logins == 0 and tokens.stats.restored == 1
    assert state.count("password") == 1  # the check's login only


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (ConfigError([FieldProblem("access_token_url", "required")]), 2),
        (UsageError("bad option"), 2),
        (InvalidCredentials("no"), 3),
        (InvalidClient("no"), 4),
        (TokenTransportError("down"), 5),
        (TokenResponseError("html"), 5),
        (type("LoginBudgetSpent", (TransientTokenError,), {})("budget"), 5),  # any transient subclass
        (InvalidScope("no"), 6),
        (RefreshTokenRejected("no"), 6),
        (HTTPStatusError("failed", status=404, url="https://x/a"), 7),
        (StateError("damaged"), 7),
        (CrawlError("failed"), 7),
    ],
)
def test_exit_codes_map_from_the_error_types(error: BaseException | None, code: int) -> None:
    assert exit_code_for(error) == code


def test_a_config_error_result_lists_the_problems() -> None:
    error = ConfigError([FieldProblem("body_parameters", "must be a JSON object")])
    result = CheckResult.from_config_error(error)
    data = result.as_dict()
    assert result.exit_code == 2 and data["ok"] is False
    assert data["error"]["type"] == "ConfigError"
    assert data["error"]["problems"] == [{"field": "body_parameters", "message": "must be a JSON object"}]
    assert data["steps"] == []


def test_the_check_module_imports_no_http_client() -> None:
    import subprocess
    import sys

    code = "import sys\nimport oauthpw_async.check\nassert 'aiohttp' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
