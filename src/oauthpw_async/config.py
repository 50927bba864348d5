"""The connection an admin configures, validated at load time.

Field names follow the admin form ("Client Id", "Access Token URL", "Use Raw Token",
"Body Parameters", ...); snake_case keys work too. Secrets may be given as
``{"env": "VARIABLE"}`` to be read from the environment.

Body Parameters are sent as the admin wrote them. Three keys also have a dedicated field:
``client_id`` and ``client_secret`` are taken as Client Id / Client Secret (so they travel where
``client_auth`` says, never twice), and ``scope`` is sent once even when the scope field holds
the same value. A different value in both places is refused, as are the keys that would break
the grant itself (:data:`RESERVED_BODY_PARAMETERS`).
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import orjson

from ._httputil import safe_url
from ._secret import Secret
from .errors import ConfigError, FieldProblem
from .headers import header_problem
from .redact import is_secret_name

__all__ = [
    "CLIENT_AUTH_CHOICES",
    "RESERVED_BODY_PARAMETERS",
    "BodyEncoding",
    "ClientAuth",
    "PasswordGrantConfig",
    "TokenResponseFormat",
    "load_config",
]

ClientAuth = Literal["body", "basic", "basic_plain", "none"]
BodyEncoding = Literal["form", "json"]
TokenResponseFormat = Literal["auto", "json", "text"]

#: How the client may authenticate: form fields; HTTP Basic with id and secret form-encoded
#: first (RFC 6749 §2.3.1); HTTP Basic with them as they are (RFC 7617, for servers that do not
#: decode them); none (a public client).
CLIENT_AUTH_CHOICES: tuple[str, ...] = ("body", "basic", "basic_plain", "none")

#: Body Parameters that would break the grant itself, and what to do instead.
RESERVED_BODY_PARAMETERS: Mapping[str, str] = {
    "grant_type": "set Grant Type (grant_type) instead",
    "username": "set Username (username) instead",
    "password": "set Password (password) instead",
    "refresh_token": "remove it: each refresh sends the current refresh token by itself",
}

_SECRET_FIELDS = frozenset({"client_secret", "password"})
_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Python refuses to convert integers longer than this to or from text (``sys.get_int_max_str_digits``).
_MAX_DIGITS = 4300
_MAX_LIFETIME = 366 * 86400
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: The admin form's labels; other fields get a label made from their name (``Verify TLS``).
_LABELS = {
    "access_token_url": "Access Token URL",
    "client_id": "Client Id",
    "client_secret": "Client Secret",
    "username": "Username",
    "password": "Password",
    "grant_type": "Grant Type",
    "headers": "Headers",
    "refresh_token_url": "Refresh Token URL",
    "use_raw_token": "Use Raw Token",
    "body_parameters": "Body Parameters",
    "client_auth": "Client Authentication",
}
_ACRONYMS = {"url": "URL", "tls": "TLS", "ca": "CA", "id": "Id"}


def _label(field: str) -> str:
    return _LABELS.get(field) or " ".join(_ACRONYMS.get(w, w.capitalize()) for w in field.split("_"))


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(url: str, allow_insecure_http: bool) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"must be an http(s) URL, got scheme {parts.scheme or '(none)'!r}"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@); use Username/Password or Client Id/Secret"
    if parts.fragment:
        return "must not have a #fragment"
    if parts.scheme == "http" and not _loopback(parts.hostname) and not allow_insecure_http:
        return (
            f"plain http:// to {parts.hostname} would send the password unencrypted; "
            "use https:// or set allow_insecure_http = true"
        )
    return None


def _secret_or_none(value: object) -> Any:
    # Anything but a str, a Secret or None is kept as given and reported by the validation.
    return Secret(value) if isinstance(value, str) else value


def _str_map(value: object) -> Any:
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else value


def _text_ok(value: str) -> bool:
    """Whether ``value`` can be sent at all (a lone surrogate cannot be encoded as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@attrs.frozen(kw_only=True)
class PasswordGrantConfig:
    """One connection: where and how to exchange a username and password for tokens.

    Build it with :func:`load_config` (mapping, JSON or TOML, admin labels or snake_case,
    every problem reported at once) or directly; both validate the same way and report every
    bad field, wrong types included, as one :class:`~oauthpw_async.ConfigError`.
    """

    #: Access Token URL: where username and password are exchanged for a token.
    access_token_url: str
    #: Client Id of the application registered with the authorization server.
    client_id: str | None = None
    #: Client Secret; masked everywhere.
    client_secret: Secret | None = attrs.field(default=None, converter=_secret_or_none, repr=False)
    #: Username of the account on the external system.
    username: str | None = None
    #: Password of that account; masked everywhere.
    password: Secret | None = attrs.field(default=None, converter=_secret_or_none, repr=False)
    #: Grant Type sent as ``grant_type`` on a login.
    grant_type: str = "password"
    #: Extra headers on token requests (header values are treated as secrets in reprs).
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map, repr=False)
    #: Refresh Token URL; the Access Token URL when unset.
    refresh_token_url: str | None = None
    #: Use Raw Token: send ``Authorization: <token>`` without a scheme.
    use_raw_token: bool = False
    #: Body Parameters: extra fields sent as given in the token request body (``scope``,
    #: ``resource``, ``audience``...). ``client_id`` / ``client_secret`` given here are moved to
    #: :attr:`client_id` / :attr:`client_secret` when the object is built.
    body_parameters: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map)
    #: Send Body Parameters on refresh requests too (servers such as AD FS and Entra want
    #: ``resource`` / ``scope`` there). Client credentials go on every request regardless.
    body_parameters_on_refresh: bool = True
    #: How the client authenticates: ``body`` (form fields), ``basic`` (HTTP Basic, id and
    #: secret form-encoded first, RFC 6749 §2.3.1), ``basic_plain`` (HTTP Basic without that
    #: encoding, RFC 7617) or ``none`` (public client).
    client_auth: ClientAuth = "body"
    #: Token request body encoding: ``form`` (RFC 6749) or ``json`` (some servers accept only JSON).
    body_encoding: BodyEncoding = "form"
    #: Authorization scheme for API requests (``Bearer``, ``OAuth``, ``AR-JWT``, ``SSWS``...).
    auth_scheme: str = "Bearer"
    #: Space-separated scope sent on login.
    scope: str | None = None
    #: Total time allowed for one token request, in seconds.
    timeout: float = 30.0
    #: Verify TLS certificates (keep on outside tests; see :attr:`security_warnings`).
    verify_tls: bool = True
    #: A CA bundle (PEM file) to trust instead of the system store.
    ca_bundle: str | None = None
    #: Lifetime assumed when a response gives no expiry, in seconds.
    default_expires_in: float = 3600.0
    #: Where the access token is in a JSON response: a field name or dotted path.
    token_path: str = "access_token"
    #: ``auto``: JSON object, JSON string literal, or a bare token as plain text; ``json``; ``text``.
    token_response: TokenResponseFormat = "auto"
    #: Allow plain http:// to a non-loopback host (passwords then cross the network in clear).
    allow_insecure_http: bool = False
    #: Largest token response accepted, in bytes (at most 64 MiB).
    max_response_bytes: int = 1_048_576

    def __attrs_post_init__(self) -> None:
        problems = _check_types(self)
        if not problems:
            problems = _fold_body_parameters(self)
            problems += _validate(self)
        if problems:
            raise ConfigError(problems)

    @property
    def effective_refresh_url(self) -> str:
        """The Refresh Token URL, or the Access Token URL when none is set."""
        return self.refresh_token_url or self.access_token_url

    @property
    def credential_key(self) -> str:
        """A stable, secret-free identifier of the token this configuration obtains.

        The account (:attr:`account_key`) plus what shapes the token or its header: Grant Type,
        Scope, Refresh Token URL, Body Parameters (an ``audience``...; secret-bearing names left
        out), the header's form (Use Raw Token, ``auth_scheme``) and where the token is read from
        (``token_path``, ``token_response``). Configurations that differ in any of these never share
        a stored token or one another process renewed.
        """
        shaping = {k: v for k, v in self.body_parameters.items() if not is_secret_name(k)}
        raw = "\0".join(
            [
                self.account_key,
                self.grant_type,
                self.scope or "",
                self.refresh_token_url or "",
                repr(sorted(shaping.items())),
                f"{self.use_raw_token}:{self.auth_scheme}",
                f"{self.token_path}:{self.token_response}",
            ]
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def account_key(self) -> str:
        """A stable, secret-free identifier of the account (URL, client, user).

        What login budgets and the "password rejected" state are counted by: a server's lockout
        counts the user's logins whatever scope they ask for.
        """
        raw = f"{self.access_token_url}\0{self.client_id or ''}\0{self.username or ''}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def security_warnings(self) -> tuple[str, ...]:
        """Settings that weaken transport security, one message each (empty when none).

        A token provider logs each of these once, when it starts: ``verify_tls = false``, and
        plain ``http://`` to a host that is not loopback (allowed by ``allow_insecure_http``).
        """
        out: list[str] = []
        if not self.verify_tls:
            out.append(
                f"TLS certificate verification is off for {safe_url(self.access_token_url)} (verify_tls = false): "
                "anyone on the network path can read the password and tokens; turn it back on, "
                "with ca_bundle for a private CA"
            )
        for url in dict.fromkeys((self.access_token_url, self.effective_refresh_url)):
            host = urlsplit(url).hostname or ""
            if url.startswith("http://") and not _loopback(host):
                out.append(
                    f"token requests to {safe_url(url)} use plain http:// (allow_insecure_http = true): "
                    "the password and tokens cross the network unencrypted"
                )
        return tuple(out)

    def __repr__(self) -> str:
        refresh = safe_url(self.refresh_token_url) if self.refresh_token_url else None
        return (
            f"PasswordGrantConfig(access_token_url={safe_url(self.access_token_url)!r}, "
            f"refresh_token_url={refresh!r}, client_id={self.client_id!r}, username={self.username!r}, "
            f"grant_type={self.grant_type!r}, client_auth={self.client_auth!r}, "
            f"headers={sorted(self.headers)!r}, body_parameters={sorted(self.body_parameters)!r})"
        )


# --- validation ---------------------------------------------------------------------------

_REQUIRED_TEXT = ("access_token_url", "grant_type", "auth_scheme", "token_path")
_OPTIONAL_TEXT = ("client_id", "username", "refresh_token_url", "scope", "ca_bundle")

_BOOLS = ("use_raw_token", "verify_tls", "allow_insecure_http", "body_parameters_on_refresh")
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "client_auth": CLIENT_AUTH_CHOICES,
    "body_encoding": ("form", "json"),
    "token_response": ("auto", "json", "text"),
}


def _kind(value: object) -> str:
    return type(value).__name__


def _check_types(c: PasswordGrantConfig) -> list[FieldProblem]:
    """Every field of the wrong type, so later checks can rely on the types (no TypeError escapes)."""
    p: list[FieldProblem] = []
    for name in _REQUIRED_TEXT + _OPTIONAL_TEXT:
        value = getattr(c, name)
        if value is None and name in _OPTIONAL_TEXT:
            continue
        if not isinstance(value, str):
            p.append(FieldProblem(name, f"must be a string, got {_kind(value)}"))
        elif not _text_ok(value):
            p.append(FieldProblem(name, "is not valid text (it holds a lone surrogate)"))
    for name in sorted(_SECRET_FIELDS):
        value = getattr(c, name)
        if value is not None and not isinstance(value, Secret):
            # Never echo the value: only its type.
            p.append(FieldProblem(name, f"must be a string, got {_kind(value)}"))
        elif isinstance(value, Secret) and not _text_ok(value.reveal()):
            p.append(FieldProblem(name, "is not valid text (it holds a lone surrogate)"))
    for name in _BOOLS:
        if not isinstance(getattr(c, name), bool):
            p.append(FieldProblem(name, f"must be true or false, got {_kind(getattr(c, name))}"))
    for name, choices in _CHOICES.items():
        if getattr(c, name) not in choices:
            p.append(FieldProblem(name, f"must be one of {', '.join(choices)}"))
    # NaN and infinity fail these comparisons too: an infinite timeout would never end a request.
    for name, low, high, rule in (
        ("timeout", 0.0, 600.0, "more than 0 and at most 600 seconds"),
        ("default_expires_in", 1.0, float(_MAX_LIFETIME), "between 1 second and a year"),
    ):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            p.append(FieldProblem(name, f"must be a number of seconds, got {_kind(value)}"))
        elif not (low <= value <= high and value > 0):
            p.append(FieldProblem(name, f"must be {rule}"))
    m = c.max_response_bytes
    if isinstance(m, bool) or not isinstance(m, int):
        p.append(FieldProblem("max_response_bytes", f"must be a whole number of bytes, got {_kind(m)}"))
    elif not 1024 <= m <= _MAX_RESPONSE_BYTES:
        p.append(FieldProblem("max_response_bytes", f"must be between 1024 and {_MAX_RESPONSE_BYTES} bytes"))
    for name in ("headers", "body_parameters"):
        value = getattr(c, name)
        if not isinstance(value, dict):
            p.append(FieldProblem(name, f'must be an object like {{"key": "value"}}, got {_kind(value)}'))
            continue
        for key, item in value.items():
            if not isinstance(key, str) or not key or not _text_ok(key):
                p.append(FieldProblem(name, f"keys must be non-empty strings, got {key!r}"))
            elif not isinstance(item, str) or not _text_ok(item):
                p.append(FieldProblem(name, f"the value of {key!r} must be a string, got {_kind(item)}"))
    return p


def _fold_body_parameters(c: PasswordGrantConfig) -> list[FieldProblem]:
    """Take ``client_id`` / ``client_secret`` out of Body Parameters into their fields.

    They then travel where ``client_auth`` says (form body or Authorization header), once: a
    body ``client_id`` next to HTTP Basic would be refused by Okta ("Cannot supply multiple
    client credentials"), and RFC 6749 §2.3.1 allows one authentication method per request.
    """
    p: list[FieldProblem] = []
    params = dict(c.body_parameters)
    for key in ("client_id", "client_secret"):
        if key not in params:
            continue
        value = params.pop(key)
        current = getattr(c, key)
        current_text = current.reveal() if isinstance(current, Secret) else current
        if not current_text:
            object.__setattr__(c, key, Secret(value) if key == "client_secret" else value)
        elif not hmac.compare_digest(current_text.encode(), value.encode()):
            p.append(
                FieldProblem(
                    "body_parameters",
                    f"{key!r} differs from {_label(key)}; give the {_label(key).lower()} in one place only",
                )
            )
    scope = params.get("scope")
    if scope is not None and c.scope and c.scope != scope:
        p.append(FieldProblem("body_parameters", "'scope' differs from the scope field; give the scope in one place"))
    object.__setattr__(c, "body_parameters", params)
    return p


def _validate(c: PasswordGrantConfig) -> list[FieldProblem]:
    p: list[FieldProblem] = []
    if not c.access_token_url:
        p.append(FieldProblem("access_token_url", "is required (the Access Token URL)"))
    else:
        err = _check_url(c.access_token_url, c.allow_insecure_http)
        if err:
            p.append(FieldProblem("access_token_url", err))
    if c.refresh_token_url:
        err = _check_url(c.refresh_token_url, c.allow_insecure_http)
        if err:
            p.append(FieldProblem("refresh_token_url", err))
    if not c.grant_type or not re.fullmatch(r"[\x21-\x7e]+", c.grant_type):
        p.append(FieldProblem("grant_type", "must be a non-empty value without spaces"))
    if c.grant_type == "password":
        if not c.username or not c.username.strip():
            p.append(FieldProblem("username", "is required for the password grant"))
        if c.password is None:
            p.append(FieldProblem("password", "is required for the password grant"))
        elif not c.password:
            p.append(FieldProblem("password", "is empty; the password grant needs the account's password"))
    if c.client_auth in ("basic", "basic_plain") and not c.client_id:
        p.append(FieldProblem("client_id", f"is required when client_auth is {c.client_auth}"))
    elif c.client_auth == "basic_plain" and c.client_id and ":" in c.client_id:
        p.append(
            FieldProblem(
                "client_id",
                "contains ':' which HTTP Basic cannot carry unencoded (RFC 7617); use client_auth = basic or body",
            )
        )
    elif c.client_auth == "none" and c.client_secret:
        p.append(
            FieldProblem(
                "client_secret",
                "must be empty when client_auth is none (public clients must not send a secret)",
            )
        )
    if not c.use_raw_token and not _HEADER_NAME.fullmatch(c.auth_scheme):
        p.append(FieldProblem("auth_scheme", "must be a single word such as Bearer, OAuth or SSWS"))
    for key, value in c.headers.items():
        if (problem := header_problem(key, value)) is not None:  # RFC 9110, as for every header source
            p.append(FieldProblem("headers", problem))
        elif key.lower() == "authorization" and c.client_auth in ("basic", "basic_plain"):
            p.append(FieldProblem("headers", f"Authorization is set by client_auth = {c.client_auth}; remove it"))
    for key in c.body_parameters:
        if key in RESERVED_BODY_PARAMETERS:
            p.append(
                FieldProblem(
                    "body_parameters",
                    f"{key!r} would break the grant; {RESERVED_BODY_PARAMETERS[key]}",
                )
            )
    if not c.token_path or any(not part for part in c.token_path.split(".")):
        p.append(FieldProblem("token_path", "must be a field name or a dotted path like data.token"))
    return p


# --- loading ------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in attrs.fields(PasswordGrantConfig)}
_ALIASES = {
    "client_authentication": "client_auth",
    "refresh_url": "refresh_token_url",
    "token_url": "access_token_url",
    "body_params": "body_parameters",
}


def _normalise_key(key: str) -> str:
    k = re.sub(r"[\s\-]+", "_", key.strip()).lower()
    return _ALIASES.get(k, k)


def _coerce_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off", ""):
        return False
    return None


def _json_object(field: str, value: object, problems: list[FieldProblem]) -> dict[str, str] | None:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            problems.append(FieldProblem(field, f'is not valid JSON ({exc.msg}); expected {{"key": "value"}}'))
            return None
    if not isinstance(value, Mapping):
        problems.append(
            FieldProblem(field, f'must be a JSON object like {{"key": "value"}}, got {type(value).__name__}')
        )
        return None
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            out[str(k)] = "true" if v else "false"
        elif isinstance(v, (str, int, float)):
            out[str(k)] = str(v)
        else:
            problems.append(
                FieldProblem(field, f"the value of {k!r} must be a string or number, got {type(v).__name__}")
            )
    return out


def _suggest(raw_key: str, key: str) -> str | None:
    """The known field closest to an unknown key, in the style the user wrote it in."""
    candidates = [*_FIELDS, *_ALIASES]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        return None
    field = _ALIASES.get(close[0], close[0])
    label_style = raw_key != raw_key.lower() or " " in raw_key.strip()
    return _label(field) if label_style else field


#: What a field's value may be, for messages: the value itself or a reference to where it is kept.
VALUE_FORMS = '{"env": "NAME"} or {"file": "path"}'


def is_reference(value: object) -> bool:
    """Whether ``value`` is ``{"env": "NAME"}`` or ``{"file": "path"}`` rather than a value."""
    return isinstance(value, Mapping) and len(value) == 1 and ("env" in value or "file" in value)


def resolve_reference(
    key: str, value: object, env: Mapping[str, str], problems: list[FieldProblem]
) -> tuple[Any, str] | None:
    """``value`` with a reference read, and where it came from; ``None`` (a problem noted) if unreadable.

    The one rule for every connection file (password grant and static token), JSON or TOML:
    ``{"env": "NAME"}`` is the variable's text; ``{"file": "path"}`` is the file's UTF-8 text
    without the line end editors and secret mounts put after it. Anything else is the value itself.
    """
    if not is_reference(value):
        return value, "the configuration"
    assert isinstance(value, Mapping)
    if "env" in value:
        name = value["env"]
        if not isinstance(name, str) or not name:
            problems.append(FieldProblem(key, 'must name an environment variable: {"env": "NAME"}'))
            return None
        if name not in env:
            problems.append(FieldProblem(key, f"environment variable {name} is not set"))
            return None
        return env[name], f"environment variable {name}"
    path = value["file"]
    if not isinstance(path, str) or not path:
        problems.append(FieldProblem(key, 'must name the file: {"file": "path"}'))
        return None
    what = "token file" if key.startswith("token") else "file"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
            problems.append(FieldProblem(key, f"the {what} {path} is not a regular file"))
            return None
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(FieldProblem(key, f"cannot read the {what} {path} ({exc.strerror})"))
        return None
    except UnicodeDecodeError:
        problems.append(FieldProblem(key, f"the {what} {path} is not UTF-8 text"))
        return None
    return text.removesuffix("\n").removesuffix("\r"), f"file {path}"


def _number(key: str, value: object, problems: list[FieldProblem]) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(FieldProblem(key, f"must be a number, got {_kind(value)}"))
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # not a number, or an integer beyond a double
        problems.append(FieldProblem(key, "must be a number (a finite one, within range)"))
        return None
    if key != "max_response_bytes":
        return number  # range (and NaN / infinity) checked by the config itself
    if not math.isfinite(number) or number != int(number):
        problems.append(FieldProblem(key, "must be a whole number of bytes"))
        return None
    return int(number)


#: :func:`_field_value`'s answer for a value it noted a problem with.
_BAD: Any = object()


def _field_value(key: str, value: object, problems: list[FieldProblem]) -> Any:
    """A known field's value as the config takes it (``_BAD``, a problem noted, when it cannot be)."""
    if key in ("headers", "body_parameters"):
        mapping = _json_object(key, value, problems)
        return _BAD if mapping is None else mapping
    if key in _BOOLS:
        b = _coerce_bool(value)
        if b is None:
            problems.append(FieldProblem(key, "must be true or false"))
            return _BAD
        return b
    if key in ("timeout", "default_expires_in", "max_response_bytes"):
        number = _number(key, value, problems)
        return _BAD if number is None else number
    if value is not None and not isinstance(value, str):
        if key in _SECRET_FIELDS:
            problems.append(FieldProblem(key, f"must be a string, {VALUE_FORMS}"))
            return _BAD
        if isinstance(value, (Mapping, list)):
            problems.append(FieldProblem(key, f"must be a string, got {_kind(value)}"))
            return _BAD
        if isinstance(value, int) and abs(value).bit_length() > 64:
            problems.append(FieldProblem(key, "must be a string, got a number too long to be one"))
            return _BAD
        return str(value)
    if value == "" and key != "password":
        # An empty form field means "not set" (an empty password is refused by the config).
        return None if _FIELDS[key].default is None else value
    return value


def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
) -> PasswordGrantConfig:
    """Build a :class:`PasswordGrantConfig` from a mapping or a ``.json`` / ``.toml`` file.

    Keys may be admin labels ("Client Id") or snake_case (``client_id``). A secret may be
    ``{"env": "NAME"}``, read from ``env`` (default: the process environment), or
    ``{"file": "path"}`` (a secret mount; the line end after the value is dropped). In a file,
    the connection may sit at the top level or under a ``[connection]`` table.

    Raises:
        ConfigError: listing every bad field at once, each problem once; secrets are never echoed.
    """
    env = os.environ if env is None else env
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        data = _read_file(Path(source))
    if "connection" in data and isinstance(data["connection"], Mapping):
        data = data["connection"]
    problems: list[FieldProblem] = []
    kwargs: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    suggested: set[str] = set()
    for raw_key, value in data.items():
        raw = str(raw_key)
        key = _normalise_key(raw)
        if key not in _FIELDS:
            hint = _suggest(raw, key)
            if hint is not None:
                suggested.add(_normalise_key(hint))
            problems.append(FieldProblem(raw, f"unknown field; did you mean {hint!r}?" if hint else "unknown field"))
            continue
        if key in given_as:
            problems.append(FieldProblem(key, f"is given twice (as {given_as[key]!r} and {raw!r}); keep one"))
            continue
        given_as[key] = raw
        resolved = resolve_reference(key, value, env, problems)
        if resolved is None:
            continue
        value = _field_value(key, resolved[0], problems)
        if value is _BAD:
            continue
        kwargs[key] = value
    kwargs.setdefault("access_token_url", "")
    config: PasswordGrantConfig | None = None
    try:
        config = PasswordGrantConfig(**kwargs)
    except ConfigError as exc:
        # A misspelt key already explains why its field is missing: say it once.
        problems += [q for q in exc.problems if not (q.field in suggested and q.message.startswith("is required"))]
    problems = list(dict.fromkeys(problems))
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([FieldProblem(str(path), f"cannot read the file ({exc.strerror})")]) from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        data = tomllib.loads(raw.decode("utf-8")) if kind == "TOML" else orjson.loads(raw)
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldProblem(str(path), f"is not UTF-8 text (byte {exc.start})")]) from None
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError) as exc:
        # Parser messages quote the offending text, which may be a secret: give the position only.
        raise ConfigError([FieldProblem(str(path), f"is not valid {kind}{_position(exc)}")]) from None
    except RecursionError:
        raise ConfigError(
            [FieldProblem(str(path), f"nests {kind} tables or arrays too deeply to read; a connection is flat")]
        ) from None
    except ValueError:  # tomllib: an integer beyond Python's digit limit for conversions
        raise ConfigError(
            [FieldProblem(str(path), f"holds a number too long to read (over {_MAX_DIGITS} digits); fix that value")]
        ) from None
    if not isinstance(data, Mapping):
        raise ConfigError([FieldProblem(str(path), "must hold an object of fields")])
    return data


def _position(exc: Exception) -> str:
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if line is None:  # tomllib before Python 3.14 puts the position in the message only
        m = re.search(r"at line (\d+), column (\d+)", str(exc))
        if m:
            line, column = int(m.group(1)), int(m.group(2))
    if line is None:
        return ""
    return f" (line {line}, column {column})" if column is not None else f" (line {line})"
