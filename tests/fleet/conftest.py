"""Fixtures for the fleet tests: a real redis-server on 127.0.0.1 (never a mock)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import RedisServer, ensure_redis_server


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return ensure_redis_server()


@pytest.fixture(scope="session")
def redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole session; each test works under its own namespace."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), redis_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, for tests that restart or freeze it."""
    server = RedisServer(tmp_path, redis_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A key prefix no other test uses."""
    return f"t{secrets.token_hex(4)}"
