"""Hostile token responses: only typed errors come out, and never a secret."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async import PasswordGrantConfig, Secret, TokenError, build_password_request, parse_token_response
from oauthpw_async.grant import Instant, TokenResponse, build_refresh_request

from .conftest import CLIENT_SECRET, PASSWORD

CONFIG = PasswordGrantConfig(
    access_token_url="https://auth.example.com/token",
    client_id="c",
    client_secret=CLIENT_SECRET,
    username="u",
    password=PASSWORD,
)
REFRESH = "refresh-token-value-xyz"
SECRETS = [PASSWORD, CLIENT_SECRET, REFRESH]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(SECRETS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries(
        {"error": st.text(max_size=20) | st.sampled_from(["invalid_grant", "invalid_client", "server_error"])},
        optional={
            "error_description": st.sampled_from(SECRETS).map(lambda s: f"bad {s}!") | st.text(max_size=40),
            "description": st.text(max_size=40),
        },
    ).map(orjson.dumps),
    st.sampled_from(SECRETS).map(lambda s: f"<html>{s}</html>".encode()),
)
headers = st.dictionaries(
    st.sampled_from(["content-type", "retry-after", "x-other"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(status=st.integers(100, 599), hdrs=headers, body=bodies, refresh=st.booleans())
def test_arbitrary_answers_give_token_or_typed_error_without_secrets(status, hdrs, body, refresh) -> None:
    request = build_refresh_request(CONFIG, Secret(REFRESH)) if refresh else build_password_request(CONFIG)
    try:
        token = parse_token_response(CONFIG, request, TokenResponse(status, hdrs, body), Instant(5.0, 1.7e9))
    except TokenError as exc:
        text = str(exc) + repr(exc) + repr(exc.args)
        known = SECRETS if refresh else [PASSWORD, CLIENT_SECRET]  # a login holds no refresh token
        for secret in known:
            assert secret not in text
    else:
        assert 200 <= status < 300
        assert token.lifetime > 0 and token.access_token.reveal()
        assert token.access_token.reveal() not in repr(token)
