"""A token record keeps a token whole across clocks, reads what stores wrote before, and refuses anything else."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import FileTokenStore, MemoryTokenStore, Secret, StoredToken
from oauthpw_async.grant import Instant, Token
from oauthpw_async.record import MAX_STORED_LIFETIME, BadTokenRecord, TokenRecord
from oauthpw_async.testing import FakeClock

from .token_records import (
    HOSTILE_VALUES,
    JSON_VALUES,
    PLANTED,
    STORE_FILE,
    good_record,
    hostile_records,
    legacy_token,
)

# --- the formats written before -----------------------------------------------------------------------


def test_a_store_file_in_the_earlier_format_reads_back_and_is_written_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(STORE_FILE)
    path.chmod(0o600)
    loaded = FileTokenStore(path).load("k")
    assert loaded is not None and loaded.generation == 7
    record = loaded.record
    assert record.access_token == Secret("at-legacy-0123456789")
    assert record.refresh_token == Secret("rt-legacy-9876543210")
    assert record.issued_wall == 1_700_000_000.5 and record.lifetime == 3600.0
    assert record.refresh_expires_wall == 1_700_086_400.5 and record.scope == "read write"
    assert dict(record.extra) == {"instance_url": "https://x.example.com", "n": 3, "nested": {"a": [1, None, True]}}
    bare = FileTokenStore(path).load("bare")
    assert bare is not None and bare.record.refresh_token is None and bare.record.refresh_expires_wall is None
    # What the store writes for the same tokens is what it wrote before, byte for byte.
    fresh = tmp_path / "fresh.json"
    FileTokenStore(fresh).save("k", StoredToken(legacy_token(), 7))
    assert fresh.read_bytes() == STORE_FILE.split(b',"bare"')[0] + b"}"


def test_a_record_written_before_generations_and_lifetime_sources_existed_still_reads(tmp_path: Path) -> None:
    rec = orjson.loads(STORE_FILE)["k"]
    del rec["generation"], rec["lifetime_source"], rec["extra"]
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps({"k": rec}))
    path.chmod(0o600)
    loaded = FileTokenStore(path).load("k")
    assert loaded is not None and loaded.generation == 0
    assert loaded.record.lifetime_source == "default" and dict(loaded.record.extra) == {}


# --- one conversion between clocks ----------------------------------------------------------------------


def test_a_restored_token_counts_on_the_new_clock_from_the_same_wall_times() -> None:
    issuer = FakeClock(start=5000.0, wall_offset=1_700_000_000.5 - 5000.0)
    record = TokenRecord.of(legacy_token())
    assert record.issued_wall == issuer.wall() and record.refresh_expires_wall == issuer.wall() + 86400.0
    # Another process, 100 s later by the wall clock, whose monotonic clock started elsewhere.
    later = FakeClock(start=42.0, wall_offset=issuer.wall() + 100.0 - 42.0)
    token = record.token(later)
    assert token.issued.wall == record.issued_wall
    assert token.expires_at - later.monotonic() == pytest.approx(3600.0 - 100.0)
    assert token.refresh_expires_at is not None
    assert token.refresh_expires_at - later.monotonic() == pytest.approx(86400.0 - 100.0)
    assert TokenRecord.of(token) == record


def test_without_a_clock_the_token_is_on_the_wall_clocks_time_line() -> None:
    entry = StoredToken(legacy_token(), 1)
    shown = entry.token
    assert shown.issued == Instant(1_700_000_000.5, 1_700_000_000.5)
    assert shown.refresh_expires_at == 1_700_086_400.5 and shown.expires_at == shown.expires_at_wall
    assert StoredToken(shown, 1) == entry  # a store that hands back what it was shown keeps the token


def test_a_token_built_on_the_wall_clock_keeps_its_refresh_expiry() -> None:
    # What a custom store made before records existed: NaN monotonic time, epoch refresh expiry.
    token = attrs.evolve(legacy_token(), issued=Instant(math.nan, 1_700_000_000.0), refresh_expires_at=1_700_000_600.0)
    assert TokenRecord.of(token).refresh_expires_wall == 1_700_000_600.0


def test_reprs_hold_no_secret() -> None:
    record = TokenRecord.of(legacy_token())
    entry = StoredToken(record, 3)
    for text in (repr(record), repr(entry), repr(entry.token)):
        assert "at-legacy" not in text and "rt-legacy" not in text


# --- any token round-trips ------------------------------------------------------------------------------

_VISIBLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@st.composite
def tokens(draw: st.DrawFn) -> Token:
    """A token a server could have given, on the clock of the process that asked for it."""
    access = draw(_VISIBLE)
    mono = draw(st.floats(0.0, 1e7))
    wall = draw(st.floats(1e9, 4e9))
    refresh = draw(st.none() | _VISIBLE)
    rexp = None if refresh is None else draw(st.none() | st.floats(0.0, MAX_STORED_LIFETIME).map(lambda s: mono + s))
    token = Token(
        access_token=Secret(access),
        authorization=draw(st.sampled_from(["Bearer ", "OAuth ", ""])) + access,
        token_type=draw(st.sampled_from(["Bearer", "OAuth", "mac"])),
        issued=Instant(mono, wall),
        lifetime=draw(st.floats(1e-3, MAX_STORED_LIFETIME)),
        lifetime_source=draw(st.sampled_from(["expires_in", "expires_on", "issued_at", "default"])),
        refresh_token=None if refresh is None else Secret(refresh),
        refresh_expires_at=rexp,
        scope=draw(st.none() | st.text(max_size=20)),
        extra=draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)),
    )
    return token


@settings(max_examples=300)
@given(token=tokens(), elapsed=st.floats(0.0, 1e6), start=st.floats(0.0, 1e7))
def test_any_token_round_trips_through_its_json_record(token: Token, elapsed: float, start: float) -> None:
    blob = orjson.dumps(TokenRecord.of(token).as_json())
    # Read back by a process whose monotonic clock reads `start` when `elapsed` seconds have passed.
    clock = FakeClock(start=start, wall_offset=token.issued.wall + elapsed - start)
    back = TokenRecord.from_json(orjson.loads(blob)).token(clock)
    assert back.access_token == token.access_token and back.refresh_token == token.refresh_token
    assert (back.authorization, back.token_type, back.scope) == (token.authorization, token.token_type, token.scope)
    assert (back.lifetime, back.lifetime_source) == (token.lifetime, token.lifetime_source)
    assert back.issued.wall == token.issued.wall and dict(back.extra) == dict(token.extra)
    # The same time left on the new clock as the issuer had at that wall time (to float rounding).
    tolerance = 1e-4
    left = token.expires_at - (token.issued.monotonic + elapsed)
    assert back.expires_at - clock.monotonic() == pytest.approx(left, abs=tolerance)
    if token.refresh_expires_at is None:
        assert back.refresh_expires_at is None
    else:
        assert back.refresh_expires_at is not None
        refresh_left = token.refresh_expires_at - (token.issued.monotonic + elapsed)
        assert back.refresh_expires_at - clock.monotonic() == pytest.approx(refresh_left, abs=tolerance)


# --- hostile records only ever raise the typed error -----------------------------------------------------


def _check_clean(exc: BaseException) -> None:
    assert isinstance(exc, BadTokenRecord), f"untyped {type(exc).__name__}"
    assert PLANTED not in str(exc) and "legacy" not in str(exc)


@settings(max_examples=400)
@given(rec=hostile_records(HOSTILE_VALUES))
def test_a_hostile_mapping_only_ever_raises_the_typed_error_naming_no_value(rec: object) -> None:
    try:
        record = TokenRecord.from_json(rec)
    except Exception as exc:
        _check_clean(exc)
        return
    # What it accepted is a record that could be sent and written again.
    orjson.dumps(record.as_json())
    for value in (record.access_token.reveal(), record.authorization):
        assert value and "\n" not in value and "\r" not in value


def _dumps(value: object) -> bytes | None:
    try:
        return orjson.dumps(value)
    except TypeError:  # NaN-free but not JSON (a huge int, bytes, an object): a file cannot hold it
        return None


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=hostile_records(HOSTILE_VALUES))
def test_a_hostile_record_in_a_store_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rec: object
) -> None:
    blob = _dumps({"k": rec})
    if blob is None:
        return
    path = tmp_path / "hostile.json"
    path.write_bytes(blob)
    path.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oauthpw_async.store"):
        loaded = FileTokenStore(path).load("k")
    if loaded is None and orjson.loads(blob)["k"] is not None:  # null reads as no record at all
        assert "stored token is unusable" in caplog.text
    assert PLANTED not in caplog.text and "at-legacy" not in caplog.text
    assert FileTokenStore(path).save("k", StoredToken(legacy_token(), 1_000_000))  # and replaced


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lifetime", "3600"),
        ("lifetime", True),
        ("lifetime", math.nan),
        ("lifetime", math.inf),
        ("lifetime", 10**400),
        ("issued_wall", None),
        ("refresh_expires_wall", -math.inf),
        ("access_token", PLANTED + " x"),
        ("authorization", f"Bearer {PLANTED}\r\nX: 1"),
        ("refresh_token", f"{PLANTED}\n"),
        ("token_type", ""),
        ("scope", 5),
        ("extra", [PLANTED]),
        ("lifetime_source", {"a": PLANTED}),
    ],
)
def test_the_error_names_the_field_never_the_value(field: str, value: object) -> None:
    rec = good_record()
    rec[field] = value
    with pytest.raises(BadTokenRecord) as caught:
        TokenRecord.from_json(rec)
    assert str(caught.value).startswith(field) and PLANTED not in str(caught.value)


def test_a_missing_field_is_named() -> None:
    for field in ("access_token", "authorization", "token_type", "issued_wall", "lifetime"):
        rec = good_record()
        del rec[field]
        with pytest.raises(BadTokenRecord, match=f"^{field} "):
            TokenRecord.from_json(rec)


def test_the_memory_store_holds_records_in_the_same_format() -> None:
    store = MemoryTokenStore()
    store.save("k", StoredToken(legacy_token(), 7))
    assert orjson.dumps({"k": store._records["k"]}) == STORE_FILE.split(b',"bare"')[0] + b"}"
