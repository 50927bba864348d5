from __future__ import annotations

import pytest

from oauthpw_async import PasswordGrantConfig

PASSWORD = "p@ss w0rd+%:&=secret"
CLIENT_SECRET = "cl!ent+/:%secret"


@pytest.fixture
def config() -> PasswordGrantConfig:
    return PasswordGrantConfig(
        access_token_url="https://auth.example.com/oauth/token",
        client_id="my-client",
        client_secret=CLIENT_SECRET,
        username="alice@example.com",
        password=PASSWORD,
    )


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
