from __future__ import annotations

import logging
from collections.abc import Iterator

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


#: The loggers whose levels the command line sets (``oauthpw_async.cli.main``), run in-process by tests.
_CLI_LOGGERS = ("", "oauthpw_async", "oauthpw_async.crawler", "coredis", "aiohttp")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test starts with the logging levels and root formatters the one before found.

    ``main()`` quiets the package's logger unless ``-v``: a test running it in-process must not
    leave a later test's ``caplog`` without the warnings it checks for.
    """
    levels = {name: logging.getLogger(name).level for name in _CLI_LOGGERS}
    formatters = [(h, h.formatter) for h in logging.getLogger().handlers]
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler, formatter in formatters:
        handler.setFormatter(formatter)
