"""Fleet records in a real Redis that something else wrote: hostile values in the shared token record (its
generation, ids, spent mark, key id, sealed token, and sealed tokens whose fields cannot go into a header),
the rejected-password latch and crawl positions, and those keys holding another type. Only typed errors
(``OAuthPWError``) come out, naming what to clear, never a secret; and a Redis URL whose password is not
percent-encoded is a ``ConfigError`` that quotes no part of it."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import TokenProvider
from oauthpw_async.errors import ConfigError, OAuthPWError
from oauthpw_async.fleet import Coordinator, FleetCheckpoints, SharedStateUnreadable
from oauthpw_async.fleet.tokens import token_to_record
from oauthpw_async.testing import AuthServerState, InMemoryEndpoint

from .helpers import TOKEN_KEY, config_for, make_token
from .procs import ROOT
from .redis_server import RedisServer

#: Planted in every hostile value that could carry it: it must never come out in a message.
SECRET = "s3cr3t-planted-zzzzzzzzzzzzzzzz"

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_HOSTILE = st.one_of(
    st.binary(max_size=80),
    _TEXT.map(str.encode),
    st.sampled_from(["1e3", "-1", "NaN", " 1", "1 ", "\u0661", "99999999999999999999999", "", "0x10", "2"]).map(
        str.encode
    ),
    st.just(SECRET.encode()),
)
_HEADER_BREAKERS = st.sampled_from(["\r\n", "\n", "\x00", "\x0b", "\x1b", "\x7f", "\x01"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


def _record() -> dict[str, Any]:
    return orjson.loads(token_to_record(make_token(1)))  # type: ignore[no-any-return]


@st.composite
def sealed_plaintexts(draw: st.DrawFn) -> bytes:
    """What a writer holding the key could seal: another JSON value, a field of another type, or a header breaker."""
    kind = draw(st.sampled_from(["json", "field", "header"]))
    if kind == "json":
        return orjson.dumps(draw(_JSON))
    rec = _record()
    field = draw(st.sampled_from(sorted(rec)))
    if kind == "field":
        rec[field] = draw(_JSON)
    else:
        where = draw(st.sampled_from(["access_token", "authorization", "refresh_token"]))
        rec[where] = f"Bearer {SECRET}{draw(_HEADER_BREAKERS)}X-Injected: 1"
    return orjson.dumps(rec)


@st.composite
def tamperings(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(what, field, value): a field of the token record, the sealed token, the latch, or a position."""
    what = draw(st.sampled_from(["token-field", "sealed-token", "latch", "position", "sealed-position", "shape"]))
    if what == "sealed-position":  # what a writer holding the key could seal as a position
        fields = st.fixed_dictionaries(
            {}, optional={"next": _JSON, "pages": _JSON, "records": _JSON, "problems": _JSON}
        )
        return what, "p0", orjson.dumps(draw(st.one_of(fields, _JSON)))
    if what == "shape":  # a key of the fleet holding another type (a string, a list, a hash)
        return (
            what,
            draw(st.sampled_from(["token", "latch", "pos"])),
            draw(st.sampled_from([b"string", b"list", b"hash"])),
        )
    if what == "token-field":
        return what, draw(st.sampled_from(["gen", "tid", "blob", "spent", "kid", "by"])), draw(_HOSTILE)
    if what == "sealed-token":
        return what, "blob", draw(sealed_plaintexts())
    if what == "latch":
        value = draw(st.one_of(_HOSTILE, _JSON.map(lambda v: orjson.dumps(v) + b"|" + draw(_HOSTILE))))
        return what, "", value
    return what, "p0", draw(st.one_of(_HOSTILE, _JSON.map(orjson.dumps)))


def _assert_clean(exc: BaseException) -> None:
    assert isinstance(exc, OAuthPWError), f"untyped {type(exc).__name__}: {exc!r}"
    for text in (str(exc), repr(exc)):
        assert SECRET not in text and TOKEN_KEY not in text and "at-1-" not in text and "rt-1-" not in text


async def _tamper_and_use(url: str, namespace: str, tampering: tuple[str, str, bytes]) -> list[BaseException]:
    what, field, value = tampering
    state = AuthServerState()
    config = config_for(state)
    fleet = Coordinator.for_config(config, url, token_key=TOKEN_KEY, namespace=namespace)
    errors: list[BaseException] = []

    async def attempt(op: Any) -> None:
        try:
            await op()
        except Exception as exc:
            errors.append(exc)

    async with fleet:
        client = fleet.link.client
        token = make_token(1)
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        queue = fleet.partitions("crawl")
        await queue.enqueue({"p0": None, "p1": None})
        (claim,) = await queue.claim()
        await queue.checkpoint(claim, {"next": {"url": f"https://api.example.com/?access_token={SECRET}"}})
        if what == "token-field":
            await client.hset(fleet.tokens.key, {field: value})
        elif what == "sealed-token":
            gen = int(await client.hget(fleet.tokens.key, "gen") or b"0")
            blob = fleet.cipher.seal(value, credential_key=fleet.credential_key, generation=gen)
            await client.hset(fleet.tokens.key, {"blob": blob})
        elif what == "latch":
            await client.set(fleet.rejected.key, value)
        elif what == "sealed-position":
            await client.hset(queue._pos, {field: queue._seal(field, orjson.loads(value))})
        elif what == "shape":
            key = {"token": fleet.tokens.key, "latch": fleet.rejected.key, "pos": queue._pos}[field]
            await client.delete([key])
            if value == b"string":
                await client.set(key, SECRET)
            elif value == b"list":
                await client.rpush(key, [SECRET])
            else:
                await client.hset(key, {"gen": SECRET})
        else:
            await client.hset(queue._pos, {field: value})
        await attempt(fleet.tokens.read)
        await attempt(fleet.rejected.state)
        await attempt(queue.status)
        await attempt(lambda: queue.claim(2))
        checkpoints = FleetCheckpoints(fleet.link, "crawl", cipher=fleet.cipher)

        async def resume_every_partition() -> None:  # what a worker joining the crawl reads
            await checkpoints.refresh()
            for name in ("p0", "p1"):
                checkpoints.resume_from(name), checkpoints.pages(name), checkpoints.records(name)
                checkpoints.problems(name)

        await attempt(resume_every_partition)
        async with TokenProvider(config, endpoint=InMemoryEndpoint(state), coordinator=fleet) as tokens:
            await attempt(tokens.get)
    return errors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tampering=tamperings())
def test_hostile_fleet_records_give_only_typed_errors_without_secrets(
    redis_server: RedisServer, tampering: tuple[str, str, bytes]
) -> None:
    namespace = f"h{os.urandom(4).hex()}"
    errors = anyio.run(_tamper_and_use, redis_server.url, namespace, tampering)
    for exc in errors:
        _assert_clean(exc)
        if isinstance(exc, SharedStateUnreadable):
            assert "fleet reset" in str(exc) or "reset()" in str(exc)  # says how to clear it


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter/two@127.0.0.1:6379/0",
        "redis://:hunter#two@127.0.0.1:6379/0",
        "redis://:hunter?two@127.0.0.1:6379/0",
        "redis://:hunter@two@127.0.0.1:6379/0",
        "redis://:hunter%zztwo@127.0.0.1:6379/0",
        "redis://fleet:hunter:two/xyz@127.0.0.1/0",
        "rediss://user:hun@ter:two/rd9@redis.internal:6380/2",
    ],
)
def test_a_redis_url_with_an_unencoded_password_is_a_config_error_quoting_none_of_it(url: str) -> None:
    password = url.split("//", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    config = config_for(AuthServerState())
    with pytest.raises(ConfigError) as caught:
        Coordinator.for_config(config, url, token_key=TOKEN_KEY)
    message = str(caught.value)
    assert "percent-encode" in message and "OAUTHPW_REDIS_PASSWORD" in message
    for fragment in password.replace("/", " ").replace("#", " ").replace("?", " ").replace("@", " ").split():
        if len(fragment) > 2:
            assert fragment not in message
    from oauthpw_async.cli.fleet import redis_url

    with pytest.raises(ConfigError):
        redis_url(url)


def test_a_percent_encoded_password_or_one_from_the_environment_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_for(AuthServerState())
    Coordinator.for_config(config, "redis://:pa%2Fss%40w%23rd@127.0.0.1:6379/0", token_key=TOKEN_KEY)
    monkeypatch.setenv("OAUTHPW_REDIS_PASSWORD", "pa/ss@w#rd")
    fleet = Coordinator.for_config(config, "redis://127.0.0.1:6379/0", token_key=TOKEN_KEY)
    assert fleet.link.url == "redis://:pa%2Fss%40w%23rd@127.0.0.1:6379/0"
    assert "pa/ss" not in repr(fleet) and "pa%2Fss" not in repr(fleet)


def _command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "oauthpw_async", *args],
        cwd=ROOT,
        env={**os.environ, "OAUTHPW_FLEET_KEY": TOKEN_KEY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _connection_file(tmp_path: Any, state: AuthServerState) -> str:
    path = tmp_path / "connection.json"
    path.write_text(
        orjson.dumps(
            {
                "Access Token URL": "https://auth.example.com/oauth/token",
                "Client Id": state.client_id,
                "Client Secret": state.client_secret,
                "Username": state.username,
                "Password": state.password,
            }
        ).decode()
    )
    return str(path)


def test_fleet_status_on_a_tampered_generation_is_a_typed_error_and_reset_tokens_clears_it(
    redis_server: RedisServer, tmp_path: Any
) -> None:
    namespace = f"c{os.urandom(4).hex()}"
    state = AuthServerState()
    config = config_for(state)

    async def tamper() -> str:
        async with Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace) as f:
            token = make_token(1)
            await f.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
            await f.link.client.hset(f.tokens.key, {"gen": b"not-a-number"})
            return f.tokens.key

    async def record_exists(key: str) -> bool:
        async with Coordinator.for_config(config, redis_server.url, token_key=TOKEN_KEY, namespace=namespace) as f:
            return bool(await f.link.client.exists([key]))

    key = anyio.run(tamper)
    where = ["--coordinator", redis_server.url, "--namespace", namespace]
    code, out, err = _command(
        "fleet", "status", *where, "--crawl-name", "c", "--config", _connection_file(tmp_path, state)
    )
    assert code != 0 and "Traceback" not in err, err
    assert "damaged" in err and "fleet reset --tokens" in err
    code, out, err = _command("fleet", "reset", *where, "--tokens")
    assert code == 0, err
    assert "cleared 1 shared token record(s)" in out and "login budget" in out
    assert not anyio.run(record_exists, key)
    for text in (out, err):
        assert state.password not in text and TOKEN_KEY not in text


def test_the_command_refuses_an_unencoded_redis_password_quoting_none_of_it() -> None:
    code, out, err = _command(
        "fleet", "status", "--coordinator", "redis://:hunter/two@127.0.0.1:6379/0", "--crawl-name", "c"
    )
    assert code == 2 and "Traceback" not in err, err
    assert "percent-encode" in err and "OAUTHPW_REDIS_PASSWORD" in err
    assert "hunter" not in out + err and "two@" not in out + err
