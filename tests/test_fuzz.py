"""Hostile token responses: only typed errors come out, and never a secret, in any encoding."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import html
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import attrs
import orjson
from aiohttp import web
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oauthpw_async import (
    AuthorizedSession,
    FileTokenStore,
    OAuthPWError,
    PasswordGrantConfig,
    RetryPolicy,
    Secret,
    StaticToken,
    TokenError,
    build_password_request,
    load_config,
    load_token_source,
    parse_token_response,
)
from oauthpw_async._httputil import excerpt
from oauthpw_async.cli import state as state_cli
from oauthpw_async.crawler import Checkpoints
from oauthpw_async.grant import Instant, TokenResponse, _client_hint, build_refresh_request
from oauthpw_async.static_config import load_static_config
from oauthpw_async.testing import LocalServer

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
    raw = secret.encode()
    forms["base64"] = base64.b64encode(raw).decode()
    forms["base64url_nopad"] = base64.urlsafe_b64encode(b"x=" + raw).decode().rstrip("=")
    forms["hex"] = raw.hex()
    forms["HEX"] = raw.hex().upper()
    forms["split_lines"] = secret[: len(secret) // 2] + "\n" + secret[len(secret) // 2 :]
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


# --- hostile files and answers at every entry point -------------------------------------------------

#: A secret the hostile inputs carry (a password in a file, a token in a store, the API's token).
HOSTILE_SECRET = "pw-Zq8!hostile-value"
#: Stands for an integer beyond Python's digit limit (4,300), spelled out when the file is written.
LONG = "\x00long\x00"
CONNECTION_KEYS = ["Access Token URL", "Username", "Password", "Client Id", "Headers", "timeout", "Token", "API Key"]
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.just(LONG),
    st.floats(),
    st.text(max_size=20),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=4),
    st.just(HOSTILE_SECRET),
    st.just("https://127.0.0.1:1/token"),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.just("env"), inner, max_size=3)
    ),
    max_leaves=8,
)


def _dumps(value: Any) -> str:
    """JSON text, with :data:`LONG` written as a 4,400-digit integer."""
    return json.dumps(value).replace(json.dumps(LONG), "7" * 4400)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _dumps(value)  # null, NaN and Infinity are not TOML: a syntax error, as in a real file


def _connection_file(kind: str, fields: dict[str, Any]) -> bytes:
    if kind == "json":
        return _dumps(fields).encode()
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in fields.items()).encode()


def _deep(kind: str, depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return (f'{{"Password": "{HOSTILE_SECRET}", "x": {inner}}}' if kind == "json" else f"x = {inner}").encode()


def _long_number(kind: str, digits: int) -> bytes:
    number = "7" * digits
    return (
        f'{{"timeout": {number}}}' if kind == "json" else f'Password = "{HOSTILE_SECRET}"\ntimeout = {number}'
    ).encode()


kinds = st.sampled_from(["json", "toml"])
connection_files = st.one_of(
    st.tuples(kinds, st.dictionaries(st.sampled_from(CONNECTION_KEYS) | st.text(max_size=8), hostile_values)).map(
        lambda t: (t[0], _connection_file(*t))
    ),
    st.tuples(kinds, st.integers(1, 1500)).map(lambda t: (t[0], _deep(*t))),
    st.tuples(kinds, st.integers(4000, 6000)).map(lambda t: (t[0], _long_number(*t))),
    st.tuples(kinds, st.binary(max_size=100)),
)


def _assert_typed_and_clean(exc: BaseException, *, secrets: bool = True) -> None:
    assert isinstance(exc, OAuthPWError), f"untyped {type(exc).__name__}: {exc!r}"[:300]
    if secrets:
        assert HOSTILE_SECRET not in str(exc) + repr(exc) + repr(exc.args)


@settings(max_examples=300, deadline=None)
@given(file=connection_files)
def test_hostile_connection_files_give_a_config_or_a_typed_error(file: tuple[str, bytes]) -> None:
    kind, blob = file
    text = blob.decode(errors="replace")
    # A variable's name or a file's path is the admin's to see: only a value there is secret.
    named = any(f'"{k}"{sep}"{HOSTILE_SECRET}"' in text for k in ("env", "file") for sep in (": ", " = "))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"connection.{kind}"
        path.write_bytes(blob)
        for load in (load_config, load_static_config, load_token_source):
            try:
                loaded = load(path, env={})
            except Exception as exc:
                _assert_typed_and_clean(exc, secrets=not named)
            else:
                assert HOSTILE_SECRET not in repr(loaded)


@settings(max_examples=200, deadline=None)
@given(
    doc=hostile_values | st.dictionaries(st.sampled_from(["version", "partitions", "cursors", "runs"]), hostile_values)
)
def test_hostile_state_files_give_positions_or_a_state_error(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_bytes(_dumps(doc).encode())
        try:
            checkpoints = Checkpoints(path)
            checkpoints.read()
            for name in checkpoints.document()["partitions"]:
                checkpoints.resume_from(name), checkpoints.pages(name), checkpoints.records(name)
        except Exception as exc:
            # A state file holds nothing secret by design: its errors may quote it (a bad version).
            _assert_typed_and_clean(exc, secrets=False)
        for as_json in (False, True):
            args = argparse.Namespace(state=str(path), state_command="show", json=as_json)
            with contextlib.redirect_stderr(io.StringIO()):
                assert state_cli.run(args, io.StringIO()) in (0, 2)


@settings(max_examples=200, deadline=None)
@given(
    record=hostile_values,
    field=st.sampled_from(["access_token", "authorization", "refresh_token", "extra", "lifetime"]),
)
def test_hostile_token_store_files_give_a_token_nothing_or_a_typed_error(record: Any, field: str) -> None:
    good = {
        "generation": 1,
        "access_token": HOSTILE_SECRET,
        "authorization": f"Bearer {HOSTILE_SECRET}",
        "token_type": "Bearer",
        "issued_wall": 1.7e9,
        "lifetime": 3600,
        "refresh_token": None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.json"
        for doc in ({"k": {**good, field: record}}, {"k": record}, record):
            path.write_bytes(_dumps(doc).encode())
            path.chmod(0o600)
            try:
                loaded = FileTokenStore(path).load("k")
            except Exception as exc:
                _assert_typed_and_clean(exc)
            else:
                if loaded is not None:
                    assert HOSTILE_SECRET not in repr(loaded)
                    assert loaded.token.access_token.reveal().isascii()


redirect_targets = st.one_of(
    st.sampled_from(
        [
            "/api/fuzz",
            "http://user:pw@127.0.0.1:{port}/api/fuzz",
            "http://127.0.0.1:99999/x",
            "http://127.0.0.1:1/elsewhere",
            "javascript:alert(1)",
            "//127.0.0.1:1/x",
            "http://[::1",
            f"/api/fuzz?access_token={HOSTILE_SECRET}",
        ]
    ),
    st.text(max_size=20),
)
api_answers = st.fixed_dictionaries(
    {
        "status": st.sampled_from([200, 201, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 429, 500, 503]),
        "location": redirect_targets,
        "retry_after": st.sampled_from(["", "1e400", "-5", "NaN", "Wed, 21 Oct 2015 07:28:00 GMT"])
        | st.text(max_size=10),
        "body": st.binary(max_size=80)
        | st.sampled_from(["raw", "base64", "hex", "lines"]).map(lambda how: how.encode()),
        "content_type": st.sampled_from(["application/json", "text/html", "text/plain; charset=utf-7", "x/\x7f"]),
    }
)


def _hostile_api(answer: dict[str, Any]) -> Callable[[web.Application, Any], None]:
    def install(app: web.Application, auth: Any) -> None:
        async def fuzz(request: web.Request) -> web.Response:
            token = request.headers.get("Authorization", "")
            body: bytes = answer["body"]
            echoes = {
                b"raw": token.encode(),
                b"base64": base64.b64encode(token.encode()),
                b"hex": token.encode().hex().encode(),
                b"lines": "\n".join(token).encode(),
            }
            headers = {"Content-Type": answer["content_type"]}
            location = answer["location"].replace("{port}", str(request.url.port))
            for name, value in (("Location", location), ("Retry-After", answer["retry_after"])):
                if value and value.isprintable():
                    headers[name] = value
            return web.Response(status=answer["status"], body=echoes.get(body, body), headers=headers)

        app.router.add_route("*", "/api/fuzz", fuzz)

    return install


async def _call_hostile_api(answer: dict[str, Any]) -> None:
    async with (
        LocalServer(api=_hostile_api(answer)) as server,
        AuthorizedSession(
            StaticToken(HOSTILE_SECRET), base_url=server.base_url, retry=RetryPolicy(max_attempts=1)
        ) as session,
    ):
        try:
            response = await session.get("/api/fuzz")
        except Exception as exc:
            _assert_typed_and_clean(exc)
        else:
            assert HOSTILE_SECRET not in repr(response)


@settings(max_examples=100, deadline=None)
@given(answer=api_answers)
def test_hostile_api_answers_and_redirects_give_a_response_or_a_typed_error(answer: dict[str, Any]) -> None:
    asyncio.run(_call_hostile_api(answer))
