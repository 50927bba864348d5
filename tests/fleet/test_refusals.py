"""Redis that answers but refuses: wrong or missing credentials, an ACL without a needed permission,
a key of the namespace holding other data, a server out of memory. Each is a typed error that says
what to change, never a client library's exception, never a token request without the fleet, and
never the Redis password in any message. A real redis-server throughout."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from pathlib import Path

import anyio
import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.fleet import Coordinator, CoordinatorRefused, CoordinatorUnavailable, FleetError
from oauthpw_async.testing import AuthServerState, InMemoryEndpoint

from .helpers import TOKEN_KEY, config_for, coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def admin(server: RedisServer, *args: str) -> bytes:
    """One command to the server as its default user, over a raw socket (RESP); the raw reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        data = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(b"".join(parts))
        reply = s.recv(4096)
    assert not reply.startswith(b"-"), reply
    return reply


def url_as(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@{server.host}:{server.port}/0"


def assert_no_secret(exc: BaseException, *secret_values: str) -> None:
    for text in (str(exc), repr(exc), repr(exc.args)):
        for value in secret_values:
            assert value not in text


async def test_wrong_redis_credentials_are_refused_typed_and_cost_no_token_request(
    redis_server: RedisServer, namespace: str
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    state = AuthServerState()
    config = config_for(state)
    fleet = Coordinator.for_config(
        config, url_as(redis_server, f"nobody-{namespace}", password), token_key=TOKEN_KEY, namespace=namespace
    )
    async with fleet:
        with pytest.raises(CoordinatorRefused) as caught:
            await fleet.ping()
        assert caught.value.code == "WRONGPASS"
        assert "user name or password of the Redis URL" in str(caught.value)
        assert_no_secret(caught.value, password)
        async with TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet) as tokens:
            with pytest.raises(CoordinatorRefused) as from_get:
                await tokens.get()
    assert from_get.value.code == "WRONGPASS"
    assert_no_secret(from_get.value, password, state.password)
    assert state.token_requests == 0  # never a login without the fleet


async def test_a_server_that_requires_a_password_says_so(private_redis: RedisServer, namespace: str) -> None:
    admin(private_redis, "CONFIG", "SET", "requirepass", "s3cret-redis-pw")
    async with coordinator(private_redis.url, namespace) as fleet:
        with pytest.raises(CoordinatorRefused) as caught:
            await fleet.tokens.read()
    assert caught.value.code == "NOAUTH"
    assert "put it in the Redis URL" in str(caught.value)
    async with coordinator(url_as(private_redis, "default", "s3cret-redis-pw"), namespace) as fleet:
        assert await fleet.tokens.read() is None  # the same server with the password in the URL


async def test_a_user_without_write_permission_gets_noperm_and_the_provider_sends_nothing(
    redis_server: RedisServer, namespace: str
) -> None:
    user, password = f"reader-{namespace}", secrets.token_hex(12)
    # May read and subscribe, but not run scripts or write: the lease cannot be taken.
    rules = ["on", f">{password}", "~*", "&*", "+@read", "+@pubsub", "+ping", "+hello"]
    admin(redis_server, "ACL", "SETUSER", user, *rules)
    try:
        state = AuthServerState()
        config = config_for(state)
        fleet = Coordinator.for_config(
            config, url_as(redis_server, user, password), token_key=TOKEN_KEY, namespace=namespace
        )
        async with fleet:
            assert await fleet.tokens.read() is None  # reading is allowed
            with pytest.raises(CoordinatorRefused) as caught:
                await fleet.lease.acquire(wait=0.0)
            assert caught.value.code == "NOPERM"
            assert "lacks a permission" in str(caught.value)
            async with TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet) as tokens:
                with pytest.raises(CoordinatorRefused):
                    await tokens.get()
        assert state.token_requests == 0
        assert_no_secret(caught.value, password)
    finally:
        admin(redis_server, "ACL", "DELUSER", user)


async def test_a_namespace_key_holding_other_data_is_a_clear_error(redis_server: RedisServer, namespace: str) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        admin(redis_server, "RPUSH", fleet.tokens.key, "someone else's list")
        with pytest.raises(CoordinatorRefused) as caught:
            await fleet.tokens.read()
    assert caught.value.code == "WRONGTYPE"
    assert "namespace of its own" in str(caught.value)


async def test_a_server_out_of_memory_is_unavailable_for_now_and_recovers(
    private_redis: RedisServer, namespace: str
) -> None:
    async with coordinator(private_redis.url, namespace) as fleet:
        admin(private_redis, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        admin(private_redis, "CONFIG", "SET", "maxmemory", "1")
        with pytest.raises(CoordinatorUnavailable) as caught:  # passes by itself: like an outage
            await fleet.lease.acquire(wait=0.0)
        assert "OOM" in str(caught.value)
        admin(private_redis, "CONFIG", "SET", "maxmemory", "0")
        handle = await fleet.lease.acquire(wait=0.0)
        assert handle is not None


async def test_refusals_survive_pickling_for_waiters_in_other_processes() -> None:
    import pickle

    exc = CoordinatorRefused("advice", code="NOPERM", where="127.0.0.1:6379/0")
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, FleetError) and copy.code == "NOPERM" and str(copy) == str(exc)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_command_exits_7_naming_the_refusal_without_the_password(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    state = AuthServerState()
    conf = tmp_path / "connection.json"
    conf.write_text(
        json.dumps(
            {
                "Access Token URL": "http://127.0.0.1:9/token",
                "Client Id": state.client_id,
                "Client Secret": state.client_secret,
                "Username": state.username,
                "Password": state.password,
            }
        )
    )
    proc = await anyio.run_process(
        [
            sys.executable, "-m", "oauthpw_async", "crawl",
            "--config", str(conf),
            "--crawler", "tests.fleet.crawlers:FleetItems",
            "--base-url", "http://127.0.0.1:9",
            "--coordinator", url_as(redis_server, f"nobody-{namespace}", password),
            "--namespace", namespace,
            "--out", str(tmp_path / "out.jsonl"),
        ],
        cwd=ROOT,
        env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY},
        check=False,
    )  # fmt: skip
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 7, out + err
    assert "WRONGPASS" in err and "user name or password of the Redis URL" in err
    assert "Traceback" not in err
    for value in (password, state.password, state.client_secret):
        assert value not in out + err


@pytest.mark.parametrize(
    "url",
    ["localhost:6379", "127.0.0.1", "http://127.0.0.1:6379/0", "redis://", "redis://127.0.0.1:notaport/0", ""],
)
def test_a_coordinator_that_is_not_a_redis_url_is_a_usage_error(url: str) -> None:
    from oauthpw_async.cli.fleet import redis_url
    from oauthpw_async.errors import UsageError

    with pytest.raises(UsageError, match="takes a Redis URL: redis://"):
        redis_url(url)


def test_the_redis_password_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from oauthpw_async.cli.fleet import redis_url

    monkeypatch.setenv("OAUTHPW_REDIS_PASSWORD", "p@ss/w:rd%")
    assert redis_url("redis://127.0.0.1:6379/0") == "redis://:p%40ss%2Fw%3Ard%25@127.0.0.1:6379/0"
    assert redis_url("rediss://fleet@[::1]:6380/2") == "rediss://fleet:p%40ss%2Fw%3Ard%25@[::1]:6380/2"
    assert redis_url("redis://:own@127.0.0.1/0") == "redis://:own@127.0.0.1/0"  # the URL's own password wins
    monkeypatch.delenv("OAUTHPW_REDIS_PASSWORD")
    assert redis_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_a_percent_encoded_password_in_the_url_is_decoded(private_redis: RedisServer, namespace: str) -> None:
    password = "p@ss/w:rd%"
    admin(private_redis, "CONFIG", "SET", "requirepass", password)
    async with coordinator(url_as(private_redis, "default", "p%40ss%2Fw%3Ard%25"), namespace) as fleet:
        assert await fleet.ping() >= 0
