"""The shared token record in a real Redis: what running fleets wrote reads back, hostile records are typed errors."""

from __future__ import annotations

import os

import anyio
import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async._secret import Secret
from oauthpw_async.errors import TokenResponseError
from oauthpw_async.fleet import Coordinator, FleetError, SharedStateUnreadable

from ..token_records import FLEET_PLAINTEXT, HOSTILE_VALUES, PLANTED, good_record, hostile_records, legacy_token
from .helpers import coordinator
from .redis_server import RedisServer


async def _seal(fleet: Coordinator, plaintext: bytes) -> None:
    """Put ``plaintext`` in the shared record as a writer holding the key would."""
    gen = int(await fleet.link.client.hget(fleet.tokens.key, "gen") or b"0")
    blob = fleet.cipher.seal(plaintext, credential_key=fleet.credential_key, generation=gen)
    await fleet.link.client.hset(fleet.tokens.key, {"blob": blob})


@pytest.mark.anyio
async def test_a_record_in_the_earlier_format_reads_back_and_is_sealed_byte_for_byte(
    redis_server: RedisServer, namespace: str
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        token = legacy_token()
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        blob = await fleet.link.client.hget(fleet.tokens.key, "blob")
        assert blob is not None
        opened = fleet.cipher.open_for(blob, fleet.cipher.associated_data(fleet.credential_key, 1))
        assert opened == FLEET_PLAINTEXT  # what this version seals is what earlier versions sealed
        await _seal(fleet, FLEET_PLAINTEXT)
        shared = await fleet.tokens.read()
        assert shared is not None and shared.generation == 1
        record = shared.record
        assert record.access_token == Secret("at-legacy-0123456789")
        assert record.refresh_token == Secret("rt-legacy-9876543210")
        assert record.issued_wall == 1_700_000_000.5 and record.refresh_expires_wall == 1_700_086_400.5
        assert record.authorization == "Bearer at-legacy-0123456789" and record.scope == "read write"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lifetime", "3600"),
        ("lifetime", 0),
        ("issued_wall", True),
        ("refresh_expires_wall", "later"),
        ("authorization", f"Bearer {PLANTED}\r\nX-Injected: 1"),
        ("refresh_token", PLANTED + "\nx"),
        ("token_type", 7),
        ("extra", [PLANTED]),
    ],
)
async def test_a_tampered_field_is_the_fleets_typed_error_naming_the_field(
    redis_server: RedisServer, namespace: str, field: str, value: object
) -> None:
    async with coordinator(redis_server.url, namespace) as fleet:
        token = legacy_token()
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        rec = good_record()
        rec[field] = value
        await _seal(fleet, orjson.dumps(rec))
        with pytest.raises(SharedStateUnreadable) as caught:
            await fleet.tokens.read()
    message = str(caught.value)
    assert isinstance(caught.value, FleetError) and f"({field} " in message and "fleet reset --tokens" in message
    assert PLANTED not in message and "legacy" not in message


def hostile_plaintexts() -> st.SearchStrategy[bytes]:
    """What a writer holding the key could seal: bytes, another JSON value, or the record with fields changed."""
    as_json = hostile_records(HOSTILE_VALUES).map(_dumps).filter(lambda blob: blob is not None)
    return st.one_of(st.binary(max_size=60), st.just(b'{"lifetime": 1e400}'), as_json)


def _dumps(value: object) -> bytes | None:
    try:
        return orjson.dumps(value)  # NaN and infinities are written as null
    except TypeError:  # not JSON (a huge int, bytes, an object): no writer could seal it as JSON
        return None


async def _read_sealed(url: str, namespace: str, plaintext: bytes) -> BaseException | None:
    async with coordinator(url, namespace) as fleet:
        token = legacy_token()
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        await _seal(fleet, plaintext)
        try:
            shared = await fleet.tokens.read()
        except Exception as exc:
            return exc
        assert shared is not None
        assert shared.record.authorization and "\n" not in shared.record.authorization
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=hostile_plaintexts())
def test_a_hostile_sealed_token_only_ever_raises_the_fleets_typed_error(
    redis_server: RedisServer, plaintext: bytes
) -> None:
    exc = anyio.run(_read_sealed, redis_server.url, f"r{os.urandom(4).hex()}", plaintext)
    if exc is not None:
        assert isinstance(exc, SharedStateUnreadable), f"untyped {type(exc).__name__}"
        assert PLANTED not in str(exc) and "legacy" not in str(exc) and "fleet reset --tokens" in str(exc)


@pytest.mark.anyio
async def test_a_token_the_fleet_could_not_read_back_is_never_published(
    redis_server: RedisServer, namespace: str
) -> None:
    # A server answering expires_in: 0 (or a lifetime past a year) once must not leave a record
    # that stops every worker until a reset: the publish refuses it, the record stays readable.
    async with coordinator(redis_server.url, namespace) as fleet:
        good = legacy_token()
        await fleet.tokens.publish(good, renewed_from=0, now_wall=good.issued.wall)
        for lifetime in (0.0, 400 * 86400.0):
            with pytest.raises(TokenResponseError, match="lifetime") as caught:
                await fleet.tokens.publish(
                    attrs.evolve(good, lifetime=lifetime), renewed_from=1, now_wall=good.issued.wall
                )
            assert good.access_token.reveal() not in str(caught.value)
        shared = await fleet.tokens.read()
        assert shared is not None and shared.generation == 1 and shared.record.access_token == good.access_token


@pytest.mark.anyio
@pytest.mark.parametrize("refresh", ["rt with spaces", "rt-ünïcode-ß", "a" * 4000])
async def test_any_refresh_token_text_a_server_issues_is_shared(
    redis_server: RedisServer, namespace: str, refresh: str
) -> None:
    # A refresh token goes back in a form body, not a header: spaces and non-ASCII are kept.
    async with coordinator(redis_server.url, namespace) as fleet:
        token = attrs.evolve(legacy_token(), refresh_token=Secret(refresh))
        await fleet.tokens.publish(token, renewed_from=0, now_wall=token.issued.wall)
        shared = await fleet.tokens.read()
        assert shared is not None and shared.record.refresh_token == Secret(refresh)
