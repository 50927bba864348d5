"""Sans-IO grant: request building and every real-server response shape and error."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

import attrs
import orjson
import pytest

from oauthpw_async import (
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    PasswordGrantConfig,
    RefreshTokenRejected,
    Secret,
    TokenRequestRejected,
    TokenResponseError,
    TransientTokenError,
    UnsupportedGrantType,
    build_password_request,
    build_refresh_request,
    parse_token_response,
)
from oauthpw_async._httputil import excerpt, parse_retry_after
from oauthpw_async.grant import Instant, Token, TokenResponse

from .conftest import CLIENT_SECRET, PASSWORD

SENT = Instant(monotonic=100.0, wall=1_700_000_000.0)


def parse(
    config: PasswordGrantConfig,
    status: int,
    body: bytes | dict,
    *,
    headers=None,
    grant="password",
    previous: Token | None = None,
) -> Token:
    if isinstance(body, dict):
        body = orjson.dumps(body)
    if grant == "password":
        request = build_password_request(config)
    else:
        request = build_refresh_request(config, Secret("old-refresh-token"))
    hdrs = {"content-type": "application/json"} if headers is None else headers
    return parse_token_response(config, request, TokenResponse(status, hdrs, body), SENT, previous=previous)


# --- building requests ---------------------------------------------------------------------------


def test_password_request_form_body_carries_every_field(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, scope="openid offline_access", body_parameters={"resource": "https://api"})
    req = build_password_request(cfg)
    form = dict(parse_qsl(req.body.decode()))
    assert form == {
        "grant_type": "password",
        "username": "alice@example.com",
        "password": PASSWORD,
        "scope": "openid offline_access",
        "client_id": "my-client",
        "client_secret": CLIENT_SECRET,
        "resource": "https://api",
    }
    assert dict(req.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.url == cfg.access_token_url


def test_basic_client_auth_form_encodes_before_base64(config: PasswordGrantConfig) -> None:
    req = build_password_request(attrs.evolve(config, client_auth="basic"))
    header = dict(req.headers)["Authorization"]
    raw = base64.b64decode(header.removeprefix("Basic ")).decode()
    # RFC 6749 2.3.1: '+', '/', ':' and '%' in the secret are percent-encoded, so ':' splits once.
    assert raw == "my-client:cl%21ent%2B%2F%3A%25secret"
    form = dict(parse_qsl(req.body.decode()))
    assert "client_id" not in form and "client_secret" not in form  # never both (Okta rejects it)


def test_public_client_sends_id_but_no_secret(config: PasswordGrantConfig) -> None:
    req = build_password_request(attrs.evolve(config, client_auth="none", client_secret=None))
    form = dict(parse_qsl(req.body.decode()))
    assert form["client_id"] == "my-client" and "client_secret" not in form
    assert "Authorization" not in dict(req.headers)


def test_json_body_encoding_and_custom_grant_and_headers(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, body_encoding="json", grant_type="urn:vendor:password", headers={"X-Tenant": "acme"})
    req = build_password_request(cfg)
    assert orjson.loads(req.body)["grant_type"] == "urn:vendor:password"
    assert dict(req.headers)["Content-Type"] == "application/json"
    assert dict(req.headers)["X-Tenant"] == "acme"


def test_refresh_request_goes_to_refresh_url_without_password(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(
        config, refresh_token_url="https://auth.example.com/oauth/refresh", body_parameters={"resource": "r"}
    )
    req = build_refresh_request(cfg, Secret("rt-1"))
    form = dict(parse_qsl(req.body.decode()))
    assert req.url.endswith("/oauth/refresh") and req.grant == "refresh_token"
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-1"
    assert "password" not in form and form["resource"] == "r"


def test_refresh_url_defaults_to_access_token_url(config: PasswordGrantConfig) -> None:
    assert build_refresh_request(config, Secret("x")).url == config.access_token_url


def test_request_repr_hides_body_and_headers(config: PasswordGrantConfig) -> None:
    text = repr(build_password_request(attrs.evolve(config, client_auth="basic")))
    assert PASSWORD not in text and CLIENT_SECRET not in text and "Basic" not in text


# --- token responses ------------------------------------------------------------------------------


def test_standard_response(config: PasswordGrantConfig) -> None:
    tok = parse(
        config,
        200,
        {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1", "scope": "read"},
    )
    assert tok.access_token.reveal() == "at-1" and tok.refresh_token == Secret("rt-1")
    assert tok.lifetime == 3600 and tok.lifetime_source == "expires_in"
    assert tok.expires_at == SENT.monotonic + 3600  # counted from when the request was sent
    assert tok.authorization == "Bearer at-1" and tok.scope == "read"


def test_expires_in_as_string_keeps_fractions(config: PasswordGrantConfig) -> None:
    assert parse(config, 200, {"access_token": "a", "expires_in": "3599"}).lifetime == 3599.0
    assert parse(config, 200, {"access_token": "a", "expires_in": 1.5}).lifetime == 1.5  # never truncated


def test_missing_expires_in_uses_configured_default(config: PasswordGrantConfig) -> None:
    tok = parse(attrs.evolve(config, default_expires_in=900), 200, {"access_token": "a"})
    assert tok.lifetime == 900 and tok.lifetime_source == "default"


@pytest.mark.parametrize("bad", ["soon", None, True, "nan", "inf", [], {"a": 1}, "9" * 100])
def test_unusable_expires_in_falls_back_to_default(config: PasswordGrantConfig, bad: object) -> None:
    tok = parse(config, 200, {"access_token": "a", "expires_in": bad})
    assert tok.lifetime == config.default_expires_in and tok.lifetime_source == "default"


@pytest.mark.parametrize("spent", [0, "0", -5, -0.5, "-30"])
def test_zero_or_negative_expires_in_means_already_expired(config: PasswordGrantConfig, spent: object) -> None:
    # A server handing back a token it issued earlier counts expires_in down to 0: that token is
    # spent, not of unknown lifetime (the default would keep using it for an hour).
    tok = parse(config, 200, {"access_token": "a", "expires_in": spent})
    assert tok.lifetime == 0 and tok.lifetime_source == "expires_in" and tok.expires_at == SENT.monotonic


def test_expires_on_epoch_seconds_and_millis(config: PasswordGrantConfig) -> None:
    tok = parse(config, 200, {"access_token": "a", "expires_on": str(int(SENT.wall) + 1800)})
    assert tok.lifetime == pytest.approx(1800) and tok.lifetime_source == "expires_on"
    tok = parse(config, 200, {"access_token": "a", "expires_at": (SENT.wall + 60) * 1000})
    assert tok.lifetime == pytest.approx(60) and tok.lifetime_source == "expires_at"


def test_salesforce_issued_at_millis_no_expiry_no_refresh(config: PasswordGrantConfig) -> None:
    body = {
        "access_token": "00D!x",
        "instance_url": "https://na1.salesforce.com",
        "id": "https://login/id/1",
        "token_type": "Bearer",
        "issued_at": str(int((SENT.wall - 600) * 1000)),
        "signature": "sig==",
    }
    tok = parse(attrs.evolve(config, default_expires_in=7200), 200, body)
    assert tok.lifetime == pytest.approx(6600) and tok.lifetime_source == "issued_at"
    assert tok.refresh_token is None
    assert tok.extra["instance_url"] == "https://na1.salesforce.com"
    assert tok.describe()["extra"]["signature"] == "********"


@pytest.mark.parametrize("server_type", ["bearer", "BEARER", None, ""])
def test_token_type_is_canonical_whatever_the_server_says(config: PasswordGrantConfig, server_type) -> None:
    body = {"access_token": "a", "expires_in": 60}
    if server_type is not None:
        body["token_type"] = server_type
    tok = parse(config, 200, body)
    assert tok.authorization == "Bearer a" and tok.token_type == "Bearer"


def test_raw_token_and_custom_scheme(config: PasswordGrantConfig) -> None:
    assert parse(attrs.evolve(config, use_raw_token=True), 200, {"access_token": "a"}).authorization == "a"
    assert parse(attrs.evolve(config, auth_scheme="AR-JWT"), 200, {"access_token": "a"}).authorization == "AR-JWT a"


def test_extra_fields_kept(config: PasswordGrantConfig) -> None:
    tok = parse(
        config,
        200,
        {
            "access_token": "a",
            "not-before-policy": 0,
            "refresh_expires_in": 1800,
            "refresh_token": "r",
            "session_state": "s",
        },
    )
    assert tok.extra["not-before-policy"] == 0 and tok.extra["session_state"] == "s"
    assert tok.refresh_expires_at == SENT.monotonic + 1800


def test_json_with_content_type_parameters_or_wrong_type(config: PasswordGrantConfig) -> None:
    for ctype in ("application/json; charset=utf-8", "text/html", "text/plain", ""):
        tok = parse(config, 200, orjson.dumps({"access_token": "a"}), headers={"content-type": ctype})
        assert tok.access_token.reveal() == "a"


def test_form_encoded_response(config: PasswordGrantConfig) -> None:
    tok = parse(
        config,
        200,
        b"access_token=abc123&expires_in=120&token_type=bearer",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert tok.access_token.reveal() == "abc123" and tok.lifetime == 120


def test_plain_text_token_and_json_string_literal(config: PasswordGrantConfig) -> None:
    jwt = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    tok = parse(config, 200, jwt + b"\n", headers={"content-type": "text/plain"})
    assert tok.access_token.reveal() == jwt.decode() and tok.lifetime_source == "default"
    tok = parse(config, 200, orjson.dumps("ivanti-session-key"), headers={"content-type": "application/json"})
    assert tok.access_token.reveal() == "ivanti-session-key"


def test_dotted_token_path(config: PasswordGrantConfig) -> None:
    tok = parse(attrs.evolve(config, token_path="data.token"), 200, {"data": {"token": "deep"}})
    assert tok.access_token.reveal() == "deep"


# --- errors: body first, then status --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "grant", "expected"),
    [
        ("invalid_grant", 400, "password", InvalidCredentials),
        ("invalid_grant", 401, "password", InvalidCredentials),
        ("invalid_grant", 200, "password", InvalidCredentials),
        ("invalid_grant", 500, "password", InvalidCredentials),
        ("invalid_grant", 400, "refresh_token", RefreshTokenRejected),
        ("invalid_client", 401, "password", InvalidClient),
        ("unauthorized_client", 400, "password", InvalidClient),
        ("unsupported_grant_type", 400, "password", UnsupportedGrantType),
        ("invalid_scope", 400, "password", InvalidScope),
        ("invalid_request", 400, "password", InvalidRequest),
        ("server_error", 401, "password", InvalidCredentials),  # ServiceNow's wrong password
        ("server_error", 500, "password", TransientTokenError),
        ("temporarily_unavailable", 503, "password", TransientTokenError),
        ("something_odd", 400, "password", TokenRequestRejected),
        ("something_odd", 403, "refresh_token", RefreshTokenRejected),  # Atlassian Cloud's 403
    ],
)
def test_error_classification(config, code, status, grant, expected) -> None:
    with pytest.raises(expected) as info:
        parse(config, status, {"error": code, "error_description": "nope"}, grant=grant)
    assert info.value.error_code == code and info.value.status == status
    assert "nope" in str(info.value)


def test_description_field_variants(config: PasswordGrantConfig) -> None:
    with pytest.raises(InvalidCredentials, match="Bad credentials"):
        parse(config, 400, {"error": "invalid_grant", "description": "Bad credentials"})


@pytest.mark.parametrize("status", [401, 403])
def test_unparsable_401_403_is_rejected_credentials(config: PasswordGrantConfig, status: int) -> None:
    with pytest.raises(InvalidCredentials):
        parse(config, status, b"<html>denied</html>", headers={"content-type": "text/html"})


def test_429_and_503_carry_retry_after(config: PasswordGrantConfig) -> None:
    with pytest.raises(TransientTokenError) as info:
        parse(config, 429, b"slow down", headers={"retry-after": "7"})
    assert info.value.retry_after == 7
    date = "Tue, 14 Nov 2023 22:13:50 GMT"  # SENT.wall + 30
    with pytest.raises(TransientTokenError) as info:
        parse(config, 503, b"", headers={"retry-after": date})
    assert info.value.retry_after == pytest.approx(30, abs=1)


def test_other_5xx_is_transient_and_other_4xx_definitive(config: PasswordGrantConfig) -> None:
    with pytest.raises(TransientTokenError):
        parse(config, 502, b"bad gateway", headers={})
    with pytest.raises(TokenRequestRejected):
        parse(config, 404, b"not found", headers={})


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Login</body></html>", b"", b'{"access_token": "abc', b'{"token_type":"Bearer"}', b"[1,2]", b"OK"],
)
def test_2xx_without_a_token_is_a_response_error(config: PasswordGrantConfig, body: bytes) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse(config, 200, body, headers={"content-type": "text/html"})
    assert info.value.status == 200 and "Access Token URL" in str(info.value)


def test_errors_say_what_to_check(config: PasswordGrantConfig) -> None:
    with pytest.raises(UnsupportedGrantType, match="set Grant Type"):
        parse(config, 400, {"error": "unsupported_grant_type"})
    with pytest.raises(InvalidCredentials, match="Username and Password"):
        parse(config, 400, {"error": "invalid_grant"})


def test_refresh_keeps_old_refresh_token_when_none_returned(config: PasswordGrantConfig) -> None:
    old = parse(config, 200, {"access_token": "a", "refresh_token": "r1"})
    new = parse(config, 200, {"access_token": "b"}, grant="refresh_token", previous=old)
    assert new.refresh_token == Secret("r1")
    rotated = parse(config, 200, {"access_token": "c", "refresh_token": "r2"}, grant="refresh_token", previous=old)
    assert rotated.refresh_token == Secret("r2")


def test_error_messages_scrub_secrets(config: PasswordGrantConfig) -> None:
    body = orjson.dumps({"error": "invalid_grant", "error_description": f"password {PASSWORD} is wrong"})
    with pytest.raises(InvalidCredentials) as info:
        parse(config, 400, body)
    assert PASSWORD not in str(info.value)
    with pytest.raises(TokenResponseError) as info2:
        parse(config, 200, orjson.dumps({"refresh_token": "rt-secret-value", "echo": CLIENT_SECRET}))
    assert "rt-secret-value" not in str(info2.value) and CLIENT_SECRET not in str(info2.value)


def test_excerpt_is_short_and_printable() -> None:
    text = excerpt(b"\x00\x01line1\nline2\t" + b"x" * 1000)
    assert len(text) <= 163 and "\n" not in text and "\x00" not in text


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("-3", 0) == 0
    assert parse_retry_after("garbage", 0) is None
    assert parse_retry_after(None, 0) is None


def test_token_repr_shows_no_secret(config: PasswordGrantConfig) -> None:
    tok = parse(config, 200, {"access_token": "at-secret-1", "refresh_token": "rt-secret-1", "id_token": "idt"})
    for text in (repr(tok), str(tok), str(tok.describe())):
        assert "at-secret-1" not in text and "rt-secret-1" not in text and "idt" not in text
