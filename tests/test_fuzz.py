"""Hostile token responses: only typed errors come out, and never a secret, in any encoding."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, quote_plus

import attrs
import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oauthpw_async import PasswordGrantConfig, Secret, TokenError, build_password_request, parse_token_response
from oauthpw_async._httputil import excerpt
from oauthpw_async.grant import Instant, TokenResponse, _client_hint, build_refresh_request

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
SENT = Instant(5.0, 1.7e9)

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
        token = parse_token_response(CONFIG, request, TokenResponse(status, hdrs, body), SENT)
    except TokenError as exc:
        text = str(exc) + repr(exc) + repr(exc.args) + str(exc.error_code)
        known = SECRETS if refresh else [PASSWORD, CLIENT_SECRET]  # a login holds no refresh token
        for secret in known:
            assert secret not in text
    else:
        assert 200 <= status < 300
        assert token.lifetime >= 0 and token.access_token.reveal()
        text = repr(token) + str(token.describe()) + str(dict(token.extra))
        assert token.access_token.reveal() not in text
        for secret in SECRETS:
            assert secret not in text


# --- every encoding a server may echo a secret in ---------------------------------------------------


def encodings(secret: str, client_id: str) -> dict[str, str]:
    """Each spelling of ``secret`` a server might send back."""
    forms = {
        "raw": secret,
        "quote_plus": quote_plus(secret),
        "quote": quote(secret),
        "quote_all": quote(secret, safe=""),
        "json_ascii": json.dumps(secret)[1:-1],
        "json_utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "html": html.escape(secret),
        "html_decimal": "".join(f"&#{ord(c)};" for c in secret),
        "html_hex": "".join(f"&#x{ord(c):X};" for c in secret),
        "html_amp": html.escape(html.escape(secret)),
        "quote_plus_twice": quote_plus(quote_plus(secret)),
        "json_twice": json.dumps(json.dumps(secret))[1:-1],
        "html_of_quote": html.escape(quote(secret)),
    }
    # An echoed `Authorization: Basic ...` holds base64 of id:secret, form-encoded or not.
    forms["basic_form"] = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
    forms["basic_plain"] = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return forms


def shown(text: str) -> str:
    """What an excerpt turns text into (whitespace runs -> one space, anything unprintable -> '?')."""
    return excerpt(text.encode(), limit=10**6)


PADDING = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.\n\t", max_size=400) | st.builds(
    lambda n, tail: " " * n + tail, st.integers(0, 4000), st.text(alphabet="abcxyz ", max_size=20)
)
SHAPES = ["description", "error_code", "nested_message", "message", "text", "html", "success_echo"]
secrets_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="*", exclude_categories=("Cs",)), min_size=8, max_size=40
)


def body_for(shape: str, payload: str) -> tuple[bytes, str]:
    if shape == "description":
        return orjson.dumps({"error": "invalid_grant", "error_description": payload}), "application/json"
    if shape == "error_code":
        return orjson.dumps({"error": payload}), "application/json"
    if shape == "nested_message":
        return orjson.dumps({"error": {"code": "E1", "message": payload}}), "application/json"
    if shape == "message":
        return orjson.dumps({"success": False, "message": payload}), "application/json"
    if shape == "text":
        return payload.encode(), "text/plain"
    if shape == "html":
        return f"<html><body><p>{payload}</p></body></html>".encode(), "text/html"
    return orjson.dumps({"access_token": "tok-abcdef-123", "echo": payload, "scope": payload}), "application/json"


def _all_hints() -> str:
    classes, todo = [], [TokenError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    client = [_client_hint(attrs.evolve(CONFIG, client_auth=a)) for a in ("body", "basic", "basic_plain")]
    # Numbers every token's repr holds (a secret of digits may match them).
    return "\n".join([*(c.hint for c in classes), *client, repr(SENT), "3600.0"])


HINTS = _all_hints()


def windows(form: str, size: int) -> set[str]:
    padding_only = set("abcdefghijklmnopqrstuvwxyz ,.\n\t")
    size = min(size, len(form))
    return {form[i : i + size] for i in range(len(form) - size + 1)} - {
        w for w in (form[i : i + size] for i in range(len(form) - size + 1)) if set(w) <= padding_only
    }


@settings(max_examples=300, deadline=None)
@given(
    secret=secrets_text,
    role=st.sampled_from(["password", "client_secret", "refresh_token"]),
    client_auth=st.sampled_from(["body", "basic", "basic_plain"]),
    encoding=st.sampled_from(list(encodings("x", "c"))),
    shape=st.sampled_from(SHAPES),
    before=PADDING,
    after=PADDING,
    status=st.sampled_from([200, 400, 401, 429, 500]),
)
def test_a_secret_never_shows_in_any_encoding_or_in_part(
    secret, role, client_auth, encoding, shape, before, after, status
) -> None:
    assume(len(secret.strip()) >= 3)
    assume(role == "client_secret" or not encoding.startswith("basic"))  # Basic carries the client secret
    config = attrs.evolve(CONFIG, client_auth=client_auth, **({role: secret} if role != "refresh_token" else {}))
    if role == "refresh_token":
        request = build_refresh_request(config, Secret(secret))
    else:
        request = build_password_request(config)
    form = encodings(secret, "c")[encoding]

    def outcome(payload: str) -> str:
        body, ctype = body_for(shape, payload)
        response = TokenResponse(status, {"content-type": ctype}, body)
        try:
            token = parse_token_response(config, request, response, SENT)
        except TokenError as exc:
            return "\n".join([str(exc), repr(exc), repr(exc.args), str(exc.error_code), exc.detail])
        return "\n".join([repr(token), str(token.describe()), str(dict(token.extra)), str(token.scope)])

    text = outcome(before + form + after)
    # The message's own words: the same answer without the secret, and every hint there is (the
    # secret may change which error it is: a password "Passwd0!" reads like a credentials message).
    control = outcome(before + after) + HINTS
    leaked = {
        w
        for f, size in [(secret, 5), (shown(secret), 5), (form, 8), (shown(form), 8)]
        for w in windows(f, size)
        if w in text and w not in control
    }
    assert not leaked, (encoding, shape, leaked)
