"""Token records for the record tests of the store and the fleet: the formats written before, and hostile ones."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import strategies as st

from oauthpw_async.grant import Token
from oauthpw_async.record import TokenRecord
from oauthpw_async.testing import FakeClock

__all__ = [
    "FLEET_PLAINTEXT",
    "HOSTILE_VALUES",
    "JSON_VALUES",
    "PLANTED",
    "STORE_FILE",
    "good_record",
    "hostile_records",
    "legacy_token",
]

#: Planted in hostile values: no message may hold it.
PLANTED = "pl4nted-v4lue-zzzzzzzz"

#: A token sealed into a fleet's shared record before records had a module of their own (byte for byte).
FLEET_PLAINTEXT = (
    b'{"access_token":"at-legacy-0123456789","authorization":"Bearer at-legacy-0123456789","token_type":"Bearer",'
    b'"issued_wall":1700000000.5,"lifetime":3600.0,"lifetime_source":"expires_in",'
    b'"refresh_token":"rt-legacy-9876543210","refresh_expires_wall":1700086400.5,"scope":"read write",'
    b'"extra":{"instance_url":"https://x.example.com","n":3,"nested":{"a":[1,null,true]}}}'
)

#: A token store file as the store wrote it then: the same token at generation 7, and a bare one.
STORE_FILE = (
    b'{"k":{"generation":7,"access_token":"at-legacy-0123456789","authorization":"Bearer at-legacy-0123456789",'
    b'"token_type":"Bearer","issued_wall":1700000000.5,"lifetime":3600.0,"lifetime_source":"expires_in",'
    b'"refresh_token":"rt-legacy-9876543210","refresh_expires_wall":1700086400.5,"scope":"read write",'
    b'"extra":{"instance_url":"https://x.example.com","n":3,"nested":{"a":[1,null,true]}}},'
    b'"bare":{"generation":1,"access_token":"at2-abcdefghijkl","authorization":"at2-abcdefghijkl",'
    b'"token_type":"Bearer","issued_wall":1700000100,"lifetime":10,"lifetime_source":"default",'
    b'"refresh_token":null,"refresh_expires_wall":null,"scope":null,"extra":{}}}'
)


def good_record() -> dict[str, Any]:
    """The record of :data:`FLEET_PLAINTEXT` as a JSON object."""
    rec = orjson.loads(FLEET_PLAINTEXT)
    assert isinstance(rec, dict)
    return rec


def legacy_token() -> Token:
    """The token behind :data:`FLEET_PLAINTEXT`, on a monotonic clock that read 5000 when it was issued."""
    clock = FakeClock(start=5000.0, wall_offset=1_700_000_000.5 - 5000.0)
    return TokenRecord.from_json(good_record()).token(clock)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
#: Any JSON value, nested a little.
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_BREAKERS = st.sampled_from(["\r\n", "\n", "\x00", "\x0b", "\x1b", "\x7f", "\x01", "\u2028", " "])
#: Values of every kind a hand edit, a forger or a bug could put in a field (not only JSON's).
HOSTILE_VALUES = st.one_of(
    JSON_VALUES,
    st.integers(min_value=2**64, max_value=10**400) | st.integers(max_value=-(2**64), min_value=-(10**400)),
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, 0, -1, 0.0, "", [], {}, (), b"x", object()]),
    _BREAKERS.map(lambda c: f"Bearer {PLANTED}{c}X: 1"),
    st.just(PLANTED),
    st.dictionaries(st.integers(), JSON_VALUES, min_size=1, max_size=2),
)


@st.composite
def hostile_records(draw: st.DrawFn, values: st.SearchStrategy[object]) -> object:
    """Another value than an object, or :func:`good_record` with fields removed or replaced by ``values``."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(values)
    rec = good_record()
    for field in draw(st.lists(st.sampled_from(sorted(rec)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            rec[field] = draw(values)
        else:
            del rec[field]
    return rec
