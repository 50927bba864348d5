"""Sans-IO grant: request building and every real-server response shape and error."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

import attrs
import orjson
import pytest

from oauthpw_async import (
    DefinitiveTokenError,
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    LoginResponseError,
    PasswordGrantConfig,
    RefreshTokenRejected,
    Secret,
    TokenError,
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


# --- Body Parameters mean what the admin meant ----------------------------------------------------


def form_pairs(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


def test_body_parameters_are_sent_as_given_each_key_once(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(
        config,
        scope="openid",
        body_parameters={"scope": "openid", "client_id": "my-client", "resource": "https://api", "audience": "crm"},
    )
    pairs = form_pairs(build_password_request(cfg).body)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names))  # RFC 6749 §3.2: no parameter twice
    form = dict(pairs)
    assert form["scope"] == "openid" and form["client_id"] == "my-client"
    assert form["resource"] == "https://api" and form["audience"] == "crm"


def test_client_id_in_body_parameters_with_basic_goes_only_in_the_header(config: PasswordGrantConfig) -> None:
    # Okta refuses a body client_id next to HTTP Basic ("Cannot supply multiple client credentials").
    cfg = attrs.evolve(config, client_id=None, client_auth="basic", body_parameters={"client_id": "from-params"})
    assert cfg.client_id == "from-params" and "client_id" not in cfg.body_parameters
    req = build_password_request(cfg)
    assert "client_id" not in dict(form_pairs(req.body))
    raw = base64.b64decode(dict(req.headers)["Authorization"].removeprefix("Basic ")).decode()
    assert raw.startswith("from-params:")


def test_client_secret_in_body_parameters_is_treated_as_the_client_secret(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, client_secret=None, body_parameters={"client_secret": "body-secret-value"})
    assert cfg.client_secret == Secret("body-secret-value") and cfg.body_parameters == {}
    assert "body-secret-value" not in repr(cfg)
    req = build_password_request(cfg)
    assert dict(form_pairs(req.body))["client_secret"] == "body-secret-value"
    assert "body-secret-value" in req.secrets  # scrubbed from any message about the answer


def test_body_parameters_go_on_refresh_unless_switched_off(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, scope="openid", body_parameters={"resource": "https://api", "audience": "crm"})
    form = dict(form_pairs(build_refresh_request(cfg, Secret("rt-1")).body))
    assert form["resource"] == "https://api" and form["audience"] == "crm"
    assert "scope" not in form  # the scope *field* is a login setting (RFC 6749 §6: scope stays as granted)
    assert form["client_id"] == "my-client" and form["client_secret"] == CLIENT_SECRET
    off = attrs.evolve(cfg, body_parameters_on_refresh=False)
    form = dict(form_pairs(build_refresh_request(off, Secret("rt-1")).body))
    assert "resource" not in form and "audience" not in form and form["client_id"] == "my-client"


def test_scope_in_body_parameters_goes_on_refresh_once(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, scope="openid offline_access", body_parameters={"scope": "openid offline_access"})
    for req in (build_password_request(cfg), build_refresh_request(cfg, Secret("rt"))):
        assert [v for k, v in form_pairs(req.body) if k == "scope"] == ["openid offline_access"]


def test_json_body_carries_body_parameters_once(config: PasswordGrantConfig) -> None:
    cfg = attrs.evolve(config, body_encoding="json", scope="s", body_parameters={"scope": "s", "tenant": "t"})
    body = orjson.loads(build_password_request(cfg).body)
    assert body["scope"] == "s" and body["tenant"] == "t" and body["client_id"] == "my-client"


# --- HTTP Basic: both encodings ----------------------------------------------------------------------


def test_basic_plain_sends_id_and_secret_as_they_are(config: PasswordGrantConfig) -> None:
    req = build_password_request(attrs.evolve(config, client_auth="basic_plain"))
    raw = base64.b64decode(dict(req.headers)["Authorization"].removeprefix("Basic ")).decode()
    assert raw == f"my-client:{CLIENT_SECRET}"  # RFC 7617: no form-encoding
    assert "client_secret" not in dict(form_pairs(req.body))


@pytest.mark.parametrize(
    ("client_auth", "suggested"),
    [("body", ["= basic", "basic_plain"]), ("basic", ["basic_plain", "body"]), ("basic_plain", ["= basic ", "body"])],
)
def test_invalid_client_hint_suggests_the_other_encodings(config, client_auth: str, suggested: list[str]) -> None:
    with pytest.raises(InvalidClient) as info:
        parse(attrs.evolve(config, client_auth=client_auth), 401, {"error": "invalid_client"})
    for other in suggested:
        assert other in info.value.hint


# --- a wrong password, however it is worded -----------------------------------------------------------

PASSWORD_WORDINGS = [
    # (status, body, content type, expected)
    (400, {"error": "invalid_request", "error_description": "Invalid user credentials"}, None, InvalidCredentials),
    (400, {"error": "invalid_request", "description": "Bad username or password"}, None, InvalidCredentials),
    (400, {"error": "invalid_request", "message": "User account is locked"}, None, InvalidCredentials),
    (400, {"error": {"code": "E0000004", "message": "Authentication failed"}}, None, InvalidCredentials),
    (400, {"error": {"code": 1001, "message": "Account disabled"}}, None, InvalidCredentials),
    (400, {"error": "Invalid username or password."}, None, InvalidCredentials),
    (400, {"errors": [{"message": "Invalid credentials"}]}, None, InvalidCredentials),
    (400, {"detail": "Incorrect password"}, "application/problem+json", InvalidCredentials),
    (400, b"Invalid username or password", "text/plain", InvalidCredentials),
    (401, b"Unauthorized", "text/plain", InvalidCredentials),
    (200, {"success": False, "message": "Invalid credentials"}, None, InvalidCredentials),
    (200, b"Invalid credentials", "text/plain", InvalidCredentials),
    (200, orjson.dumps("Invalid credentials"), None, InvalidCredentials),
    (500, {"error": "server_error", "error_description": "Invalid user credentials"}, None, InvalidCredentials),
    (500, b"Login failed for user", "text/plain", InvalidCredentials),
    (400, {"error": "invalid_request", "error_description": "Client authentication failed"}, None, InvalidClient),
    (400, {"error": "invalid_request", "error_description": "missing parameter: resource"}, None, InvalidRequest),
    # Throttles are not verdicts on the password, whatever they say: wait and try again.
    (429, b"Too many login attempts for this username", "text/plain", TransientTokenError),
    (503, {"error": "temporarily_unavailable", "error_description": "password db down"}, None, TransientTokenError),
    # A sign-in page names the password field whatever happened: not read for wording, but definitive.
    (200, b"<html><form>Username <input> Password <input></form></html>", "text/html", LoginResponseError),
    (400, b"<html><p>Password</p></html>", "text/html", TokenRequestRejected),
    (500, {"message": "internal error"}, None, TransientTokenError),
]


@pytest.mark.parametrize(("status", "body", "ctype", "expected"), PASSWORD_WORDINGS)
def test_password_rejection_recognised_by_wording(config, status, body, ctype, expected) -> None:
    headers = {"content-type": ctype or "application/json"}
    with pytest.raises(expected) as info:
        parse(config, status, body, headers=headers)
    assert type(info.value) is expected


def test_wording_rule_applies_to_password_logins_only(config: PasswordGrantConfig) -> None:
    body = {"error": "invalid_request", "error_description": "the password grant is not enabled here"}
    with pytest.raises(InvalidRequest):
        parse(config, 400, body, grant="refresh_token")
    with pytest.raises(TransientTokenError):  # Keycloak's lost session on refresh: 500, retried
        parse(config, 500, {"error": "x", "error_description": "Invalid credentials"}, grant="refresh_token")


def test_a_2xx_without_token_is_definitive_on_login_only(config: PasswordGrantConfig) -> None:
    with pytest.raises(LoginResponseError) as info:
        parse(config, 200, b"<html>Sign in</html>", headers={"content-type": "text/html"})
    assert isinstance(info.value, DefinitiveTokenError) and isinstance(info.value, TokenResponseError)
    assert not isinstance(info.value, TransientTokenError)
    with pytest.raises(TokenResponseError) as info2:
        parse(config, 200, b"<html>Sign in</html>", headers={"content-type": "text/html"}, grant="refresh_token")
    assert not isinstance(info2.value, DefinitiveTokenError) and not isinstance(info2.value, TransientTokenError)


def test_a_json_object_without_token_is_not_read_as_a_password_verdict(config: PasswordGrantConfig) -> None:
    # Most likely the token is elsewhere (token_path): the words must not blame the password.
    with pytest.raises(LoginResponseError, match="token_path"):
        parse(config, 200, {"data": {"jwt": "x" * 20}, "message": "Login OK for username alice"})


# --- lifetimes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"refresh_expires_in": 1800}, 1800),  # Keycloak
        ({"refresh_token_expires_in": "7200"}, 7200),
        ({"refresh_token_expires_at": SENT.wall + 600}, 600),  # epoch seconds
        ({"refresh_token_expires_at": (SENT.wall + 900) * 1000}, 900),  # epoch milliseconds
        ({"refresh_expires_in": 1800, "refresh_token_expires_at": SENT.wall + 60}, 60),  # the earliest wins
        ({"refresh_expires_in": -1}, 0),  # already expired: never presented
        ({"refresh_token_expires_at": SENT.wall - 5}, 0),
    ],
)
def test_refresh_token_lifetimes_are_understood(config, fields, seconds) -> None:
    tok = parse(config, 200, {"access_token": "a", "refresh_token": "r", **fields})
    assert tok.refresh_expires_at == pytest.approx(SENT.monotonic + seconds)
    assert tok.describe()["refresh_expires_in"] == pytest.approx(seconds)


@pytest.mark.parametrize("fields", [{}, {"refresh_expires_in": 0}, {"refresh_token_expires_in": "soon"}])
def test_unstated_refresh_lifetime_is_unknown(config, fields) -> None:
    # Keycloak's offline tokens carry refresh_expires_in: 0, meaning no time limit.
    assert parse(config, 200, {"access_token": "a", "refresh_token": "r", **fields}).refresh_expires_at is None


def test_refresh_keeps_the_old_refresh_lifetime_with_the_old_token(config: PasswordGrantConfig) -> None:
    old = parse(config, 200, {"access_token": "a", "refresh_token": "r1", "refresh_expires_in": 100})
    new = parse(config, 200, {"access_token": "b"}, grant="refresh_token", previous=old)
    assert new.refresh_token == Secret("r1") and new.refresh_expires_at == old.refresh_expires_at


HUGE = [b"1e300", b"1" + b"0" * 30, b'"1e999"', b"9223372036854775808", b'"1' + b"0" * 60 + b'"']


@pytest.mark.parametrize("huge", HUGE)
def test_huge_lifetimes_are_capped_at_a_year_or_ignored(config, huge: bytes) -> None:
    tok = parse(config, 200, b'{"access_token": "a", "expires_in": ' + huge + b"}")
    assert 0 < tok.lifetime <= 366 * 86400


def test_describe_masks_secret_values_only(config: PasswordGrantConfig) -> None:
    tok = parse(
        config,
        200,
        {
            "access_token": "at-value-123",
            "refresh_token": "rt-value-456",
            "refresh_token_expires_in": 86400,
            "not-before-policy": 0,
            "id_token": "eyJ.id.token",
            "token_reused": False,
            "session": {"token_count": 2, "api_key": "k-123456", "note": "see at-value-123"},
            "tokens": ["abc", 5],
            "instance_url": "https://na1.example.com",
        },
    )
    extra = tok.describe()["extra"]
    assert extra["refresh_token_expires_in"] == 86400 and extra["not-before-policy"] == 0
    assert extra["token_reused"] is False and extra["instance_url"] == "https://na1.example.com"
    assert extra["id_token"] == "********" and extra["tokens"] == ["********", 5]
    assert "session" not in extra  # it holds the access token: not kept at all
    text = str(tok.describe())
    assert "at-value-123" not in text and "rt-value-456" not in text and "eyJ" not in text


def test_token_path_object_is_not_kept_in_extra(config: PasswordGrantConfig) -> None:
    body = {"data": {"token": "deep-token-1", "user": "alice"}, "meta": {"copy": "deep-token-1"}, "ok": True}
    tok = parse(attrs.evolve(config, token_path="data.token"), 200, body)
    assert tok.access_token.reveal() == "deep-token-1"
    assert dict(tok.extra) == {"ok": True}


def test_success_answer_echoing_the_password_is_not_kept(config: PasswordGrantConfig) -> None:
    from urllib.parse import quote_plus

    body = {"access_token": "at-1", "echo": f"password={quote_plus(PASSWORD)}", "scope": PASSWORD}
    tok = parse(config, 200, body)
    assert "echo" not in tok.extra and tok.scope is None
    assert PASSWORD not in repr(tok) + str(tok.describe())


# --- hostile answers: typed errors only ---------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["abc\x00def", "abc\r\nX-Evil: 1", "abc def", "t\u00e9st-token", "tok\u2028en", "\x7f" * 10, "a" * 70000],
)
def test_tokens_that_cannot_be_sent_in_a_header_are_refused(config: PasswordGrantConfig, token: str) -> None:
    with pytest.raises(TokenResponseError, match="cannot be sent in an HTTP header") as info:
        parse(config, 200, {"access_token": token})
    assert token not in str(info.value)


@pytest.mark.parametrize("value", [123, 1.5, True, None, [], {"t": "x"}, ["abc"], ""])
def test_access_token_of_the_wrong_type_is_no_token(config: PasswordGrantConfig, value: object) -> None:
    with pytest.raises(LoginResponseError, match="no token"):
        parse(config, 200, {"access_token": value})


def test_wrong_types_in_other_fields_are_ignored(config: PasswordGrantConfig) -> None:
    tok = parse(
        config,
        200,
        {"access_token": "a", "token_type": ["Bearer"], "scope": 5, "refresh_token": 12, "expires_in": {"s": 1}},
    )
    assert tok.token_type == "Bearer" and tok.scope is None and tok.refresh_token is None
    assert tok.lifetime_source == "default"


def nested(key: str, depth: int, leaf: bytes = b'"x"') -> bytes:
    return (b'{"' + key.encode() + b'":') * depth + leaf + b"}" * depth


@pytest.mark.parametrize("status", [200, 400, 401, 500])
@pytest.mark.parametrize(
    "body",
    [
        nested("error", 900),  # within orjson's depth limit: str() of it would raise RecursionError
        nested("error", 2000),  # beyond it: malformed
        b'{"error": "invalid_request", "error_description": ' + nested("a", 900) + b"}",
        b'{"error": {"code": ' + nested("c", 900) + b', "message": ' + nested("m", 900) + b"}}",
        b'{"access_token": "a", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"error_description": "' + b"\\u0000" * 1000 + b'"}',
        b'{"expires_in": NaN, "access_token": "a"}',
        b'{"expires_in": 1e400, "access_token": "a"}',
    ],
)
def test_deeply_nested_and_odd_json_gives_typed_errors(config: PasswordGrantConfig, status: int, body: bytes) -> None:
    error: TokenError | None = None
    try:
        tok = parse(config, status, body)
    except TokenError as exc:  # any other exception type fails the test
        error = exc
    if error is not None:
        assert len(str(error)) < 2000
    else:
        assert 200 <= status < 300 and tok.access_token.reveal() == "a"
        orjson.dumps(dict(tok.extra))  # storable: deep nesting was replaced


def test_error_code_field_is_scrubbed_too(config: PasswordGrantConfig) -> None:
    from urllib.parse import quote_plus

    for code in (CLIENT_SECRET, quote_plus(CLIENT_SECRET), f"bad:{quote_plus(CLIENT_SECRET)}"):
        with pytest.raises(TokenError) as info:
            parse(config, 400, {"error": code})
        assert CLIENT_SECRET not in str(info.value) and quote_plus(CLIENT_SECRET) not in str(info.value)
        assert quote_plus(CLIENT_SECRET) not in (info.value.error_code or "")


def test_config_repr_drops_url_queries() -> None:
    cfg = PasswordGrantConfig(
        access_token_url="https://a.example.com/token?api_key=qs-secret-1", username="u", password="p"
    )
    assert "qs-secret-1" not in repr(cfg) and "https://a.example.com/token" in repr(cfg)


# --- excerpts: scrub first, then cut -------------------------------------------------------------------


@pytest.mark.parametrize("before", [0, 150, 155, 159, 1000, 3000, 10_000, 60_000])
def test_a_secret_at_any_edge_of_an_excerpt_never_shows_in_part(before: int) -> None:
    for body in (b"a" * before + PASSWORD.encode() + b"z" * 50, b" " * before + PASSWORD.encode()):
        text = excerpt(body, [PASSWORD])
        assert all(PASSWORD[:n] not in text and PASSWORD[-n:] not in text for n in range(4, len(PASSWORD) + 1))


def test_long_secrets_are_masked_whole_and_in_pieces() -> None:
    import secrets as rnd

    jwt = "eyJhbGciOiJSUzI1NiJ9." + rnd.token_urlsafe(1500)
    for body in (b"x" * 100 + jwt.encode(), b" " * 5000 + jwt.encode()[:700], b"token " + jwt.encode()[300:900]):
        text = excerpt(body, [jwt, f"Bearer {jwt}"])
        assert not any(jwt[i : i + 16] in text for i in range(len(jwt) - 16)), text
