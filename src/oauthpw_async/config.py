"""The connection an admin configures, validated at load time.

Field names follow the admin form ("Client Id", "Access Token URL", "Use Raw Token",
"Body Parameters", ...); snake_case keys work too. Secrets may be given as
``{"env": "VARIABLE"}`` to be read from the environment.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import orjson

from ._secret import Secret
from .errors import ConfigError, FieldProblem

__all__ = [
    "RESERVED_BODY_PARAMETERS",
    "BodyEncoding",
    "ClientAuth",
    "PasswordGrantConfig",
    "TokenResponseFormat",
    "load_config",
]

ClientAuth = Literal["body", "basic", "none"]
BodyEncoding = Literal["form", "json"]
TokenResponseFormat = Literal["auto", "json", "text"]

#: Form fields the library sets itself, and the config field to use instead.
RESERVED_BODY_PARAMETERS: Mapping[str, str] = {
    "grant_type": "grant_type (Grant Type)",
    "username": "username (Username)",
    "password": "password (Password)",
    "client_id": "client_id (Client Id)",
    "client_secret": "client_secret (Client Secret)",
    "refresh_token": "nothing: the provider sends the current refresh token itself",
    "scope": "scope",
}

_SECRET_FIELDS = frozenset({"client_secret", "password"})


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


def _secret_or_none(value: object) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value))


def _str_map(value: object) -> Mapping[str, str]:
    if value is None:
        return {}
    return dict(value)  # type: ignore[call-overload, no-any-return]


@attrs.frozen(kw_only=True)
class PasswordGrantConfig:
    """One connection: where and how to exchange a username and password for tokens.

    Build it with :func:`load_config` (mapping, JSON or TOML, admin labels or snake_case,
    every problem reported at once) or directly; both validate the same way.
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
    #: Body Parameters: extra fields in every token request body (``scope``, ``resource``, ...).
    body_parameters: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map)
    #: How the client authenticates: ``body`` (form fields), ``basic`` (HTTP Basic), ``none``.
    client_auth: ClientAuth = "body"
    #: Token request body encoding: ``form`` (RFC 6749) or ``json`` (some servers accept only JSON).
    body_encoding: BodyEncoding = "form"
    #: Authorization scheme for API requests (``Bearer``, ``OAuth``, ``AR-JWT``, ``SSWS``...).
    auth_scheme: str = "Bearer"
    #: Space-separated scope sent on login.
    scope: str | None = None
    #: Total time allowed for one token request, in seconds.
    timeout: float = 30.0
    #: Verify TLS certificates (keep on outside tests).
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
    #: Largest token response accepted, in bytes.
    max_response_bytes: int = 1_048_576

    def __attrs_post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ConfigError(problems)

    @property
    def effective_refresh_url(self) -> str:
        """The Refresh Token URL, or the Access Token URL when none is set."""
        return self.refresh_token_url or self.access_token_url

    @property
    def credential_key(self) -> str:
        """A stable, secret-free identifier of this credential (URL, client, user)."""
        raw = f"{self.access_token_url}\0{self.client_id or ''}\0{self.username or ''}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"PasswordGrantConfig(access_token_url={self.access_token_url!r}, "
            f"client_id={self.client_id!r}, username={self.username!r}, "
            f"grant_type={self.grant_type!r}, client_auth={self.client_auth!r}, "
            f"headers={sorted(self.headers)!r}, body_parameters={sorted(self.body_parameters)!r})"
        )


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
        if not c.username:
            p.append(FieldProblem("username", "is required for the password grant"))
        if c.password is None:
            p.append(FieldProblem("password", "is required for the password grant"))
    if c.client_auth not in ("body", "basic", "none"):
        p.append(FieldProblem("client_auth", "must be one of body, basic, none"))
    elif c.client_auth == "basic" and not c.client_id:
        p.append(FieldProblem("client_id", "is required when client_auth is basic"))
    elif c.client_auth == "none" and c.client_secret:
        p.append(
            FieldProblem(
                "client_secret",
                "must be empty when client_auth is none (public clients must not send a secret)",
            )
        )
    if c.body_encoding not in ("form", "json"):
        p.append(FieldProblem("body_encoding", "must be form or json"))
    if c.token_response not in ("auto", "json", "text"):
        p.append(FieldProblem("token_response", "must be auto, json or text"))
    if not c.use_raw_token and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", c.auth_scheme):
        p.append(FieldProblem("auth_scheme", "must be a single word such as Bearer, OAuth or SSWS"))
    for key, value in c.headers.items():
        if not isinstance(key, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key):
            p.append(FieldProblem("headers", f"{key!r} is not a valid header name"))
        elif not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
            p.append(FieldProblem("headers", f"the value of {key} must be a string without line breaks"))
        elif key.lower() == "authorization" and c.client_auth == "basic":
            p.append(FieldProblem("headers", "Authorization is set by client_auth = basic; remove it"))
    for key, value in c.body_parameters.items():
        if key in RESERVED_BODY_PARAMETERS:
            p.append(
                FieldProblem(
                    "body_parameters",
                    f"{key!r} is set by the library; use {RESERVED_BODY_PARAMETERS[key]} instead",
                )
            )
        elif not isinstance(value, str):
            p.append(FieldProblem("body_parameters", f"the value of {key!r} must be a string"))
    if not (0 < c.timeout <= 600):
        p.append(FieldProblem("timeout", "must be between 0 and 600 seconds"))
    if not (1 <= c.default_expires_in <= 366 * 86400):
        p.append(FieldProblem("default_expires_in", "must be between 1 second and a year"))
    if not c.token_path or any(not part for part in c.token_path.split(".")):
        p.append(FieldProblem("token_path", "must be a field name or a dotted path like data.token"))
    if c.max_response_bytes < 1024:
        p.append(FieldProblem("max_response_bytes", "must be at least 1024"))
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


def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
) -> PasswordGrantConfig:
    """Build a :class:`PasswordGrantConfig` from a mapping or a ``.json`` / ``.toml`` file.

    Keys may be admin labels ("Client Id") or snake_case (``client_id``). A secret may be
    ``{"env": "NAME"}``, read from ``env`` (default: the process environment). In a file,
    the connection may sit at the top level or under a ``[connection]`` table.

    Raises:
        ConfigError: listing every bad field at once; secrets are never echoed.
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
    for raw_key, value in data.items():
        key = _normalise_key(str(raw_key))
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(FieldProblem(str(raw_key), f"unknown field{hint}"))
            continue
        if isinstance(value, Mapping) and set(value) == {"env"}:
            name = str(value["env"])
            if name not in env:
                problems.append(FieldProblem(key, f"environment variable {name} is not set"))
                continue
            value = env[name]
        if key in ("headers", "body_parameters"):
            value = _json_object(key, value, problems)
            if value is None:
                continue
        elif key in ("use_raw_token", "verify_tls", "allow_insecure_http"):
            b = _coerce_bool(value)
            if b is None:
                problems.append(FieldProblem(key, "must be true or false"))
                continue
            value = b
        elif key in ("timeout", "default_expires_in", "max_response_bytes"):
            try:
                value = float(value) if key != "max_response_bytes" else int(value)
            except (TypeError, ValueError):
                problems.append(FieldProblem(key, "must be a number"))
                continue
        elif value is not None and not isinstance(value, str):
            if key in _SECRET_FIELDS:
                problems.append(FieldProblem(key, 'must be a string or {"env": "NAME"}'))
                continue
            value = str(value)
        elif isinstance(value, str) and value == "" and key not in _SECRET_FIELDS:
            value = None if _FIELDS[key].default is None else value
        kwargs[key] = value
    kwargs.setdefault("access_token_url", "")
    try:
        config = PasswordGrantConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    except (TypeError, ValueError) as exc:  # pragma: no cover - attrs type errors
        raise ConfigError([*problems, FieldProblem("config", str(exc))]) from None
    if problems:
        raise ConfigError(problems)
    return config


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([FieldProblem(str(path), f"cannot read the file ({exc.strerror})")]) from None
    loader: Callable[[bytes], Any]
    if path.suffix.lower() == ".toml":

        def loader(b: bytes) -> Any:
            return tomllib.loads(b.decode("utf-8"))

        decode_error: tuple[type[Exception], ...] = (tomllib.TOMLDecodeError, UnicodeDecodeError)
    else:
        loader = orjson.loads
        decode_error = (orjson.JSONDecodeError,)
    try:
        data = loader(raw)
    except decode_error as exc:
        # Parser messages quote the offending line, which may hold a secret: give the position only.
        where = getattr(exc, "lineno", None)
        pos = f" near line {where}" if where else ""
        raise ConfigError([FieldProblem(str(path), f"is not valid {path.suffix.lstrip('.') or 'JSON'}{pos}")]) from None
    if not isinstance(data, Mapping):
        raise ConfigError([FieldProblem(str(path), "must hold an object of fields")])
    return data
