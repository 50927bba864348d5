"""The configuration of a static token: a personal access token or API key the admin already has.

Many systems (Jira and Confluence Data Center, GitHub, GitLab, most SaaS APIs) hand out a
long-lived token instead of a password grant. It is configured in the same file format as a
password-grant connection, with its own few fields::

    [connection]
    "Token" = { env = "JIRA_PAT" }      # or { file = "/run/secrets/pat" }, or "Token File" = "..."
    "Auth Scheme" = "Bearer"            # GitHub classic tokens: "token"; or "Use Raw Token" = true

The token is a :class:`~oauthpw_async.Secret`: never printed, logged or put in an exception.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._secret import Secret
from .config import VALUE_FORMS, _coerce_bool, _normalise_key, _read_file, is_reference, resolve_reference
from .errors import ConfigError, FieldProblem

__all__ = ["PASSWORD_GRANT_ONLY_FIELDS", "STATIC_TOKEN_FIELDS", "StaticTokenConfig", "load_static_config"]

#: Keys (snake_case) that make a connection a static token; the aliases name the same field.
STATIC_TOKEN_FIELDS = frozenset(
    {"token", "token_file", "access_token", "api_key", "api_token", "personal_access_token"}
)
_TOKEN_ALIASES = dict.fromkeys(("access_token", "api_key", "api_token", "personal_access_token"), "token")
_SHARED_FIELDS = ("auth_scheme", "use_raw_token", "verify_tls", "ca_bundle")
#: Keys that belong to a password-grant connection only: refused next to a static token.
PASSWORD_GRANT_ONLY_FIELDS = frozenset(
    {
        "access_token_url",
        "refresh_token_url",
        "client_id",
        "client_secret",
        "username",
        "password",
        "grant_type",
        "headers",
        "body_parameters",
        "client_auth",
        "body_encoding",
        "scope",
        "default_expires_in",
        "token_path",
        "token_response",
        "max_response_bytes",
    }
)
_SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What may not be in a header value (RFC 9110 §5.5): line breaks and other control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _secret(value: object) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


@attrs.frozen(kw_only=True)
class StaticTokenConfig:
    """A static token and how to send it; validated when built.

    ``auth_scheme`` and ``use_raw_token`` mean what they mean for a password-grant connection:
    ``Authorization: Bearer <token>`` by default, another scheme (``token`` for GitHub classic
    tokens, ``SSWS`` for Okta API tokens), or the value as is (``use_raw_token``, e.g. a ready
    ``Basic ...`` value). ``verify_tls`` and ``ca_bundle`` apply to the API requests.
    """

    #: The token; masked everywhere.
    token: Secret = attrs.field(converter=_secret, repr=False)
    #: Authorization scheme sent before the token.
    auth_scheme: str = "Bearer"
    #: Send ``Authorization: <token>`` without a scheme.
    use_raw_token: bool = False
    #: Verify TLS certificates of the API.
    verify_tls: bool = True
    #: A CA bundle (PEM file) to trust instead of the system store.
    ca_bundle: str | None = None
    #: Where the token came from, for error messages ("environment variable JIRA_PAT"); never the value.
    token_from: str = "the configuration"

    def __attrs_post_init__(self) -> None:
        problems: list[FieldProblem] = []
        value = self.token.reveal()
        if not value.strip():
            problems.append(FieldProblem("token", f"is empty (from {self.token_from})"))
        elif value != value.strip() or _CONTROL.search(value):
            problems.append(
                FieldProblem(
                    "token",
                    f"has leading/trailing spaces or a line break or control character (from {self.token_from})",
                )
            )
        elif not self.use_raw_token and " " in value:
            problems.append(
                FieldProblem(
                    "token", "contains a space: give the token alone, or the whole header value with use_raw_token"
                )
            )
        if not self.use_raw_token and not _SCHEME.fullmatch(self.auth_scheme):
            problems.append(FieldProblem("auth_scheme", "must be a single word such as Bearer, token or SSWS"))
        if problems:
            raise ConfigError(problems)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        value = self.token.reveal()
        return value if self.use_raw_token else f"{self.auth_scheme} {value}"

    def __repr__(self) -> str:
        return (
            f"StaticTokenConfig(token_from={self.token_from!r}, auth_scheme={self.auth_scheme!r}, "
            f"use_raw_token={self.use_raw_token!r}, verify_tls={self.verify_tls!r})"
        )


def _token_value(
    key: str, value: object, env: Mapping[str, str], problems: list[FieldProblem]
) -> tuple[str, str] | None:
    """The token and where it came from (``None``, a problem noted, when unusable)."""
    if key == "token_file":  # the path itself, the same as {"file": path}
        if not isinstance(value, str):
            problems.append(FieldProblem(key, "must be the path of a file holding the token"))
            return None
        value = {"file": value}
    resolved = resolve_reference(key, value, env, problems)
    if resolved is None:
        return None
    if not isinstance(resolved[0], str):
        problems.append(FieldProblem(key, f"must be a string, {VALUE_FORMS}"))
        return None
    # A token holds no whitespace: what surrounds one kept elsewhere is an editor's or a shell's.
    return (resolved[0].strip() if is_reference(value) else resolved[0]), resolved[1]


def _shared_value(
    key: str, value: object, env: Mapping[str, str], problems: list[FieldProblem], kwargs: dict[str, Any]
) -> None:
    """Put a field both connection kinds have into ``kwargs`` (or note its problem)."""
    resolved = resolve_reference(key, value, env, problems)
    if resolved is None:
        return
    value = resolved[0]
    if key in ("use_raw_token", "verify_tls"):
        flag = _coerce_bool(value)
        if flag is None:
            problems.append(FieldProblem(key, "must be true or false"))
        else:
            kwargs[key] = flag
    elif not isinstance(value, str):
        problems.append(FieldProblem(key, "must be a string"))
    elif value or key == "auth_scheme":
        kwargs[key] = value


def load_static_config(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
) -> StaticTokenConfig:
    """Build a :class:`StaticTokenConfig` from a mapping or a ``.json`` / ``.toml`` file.

    Fields (admin labels or snake_case): ``Token`` (also ``Access Token``, ``API Key``,
    ``API Token``, ``Personal Access Token``) as a string, ``{"env": "NAME"}`` or ``{"file": "path"}``; or
    ``Token File`` (a path; surrounding whitespace is dropped); ``Auth Scheme``; ``Use Raw
    Token``; ``Verify TLS``; ``CA Bundle``.

    Raises:
        ConfigError: listing every bad field at once; the token is never echoed.
    """
    env = os.environ if env is None else env
    data: Mapping[str, Any] = source if isinstance(source, Mapping) else _read_file(Path(source))
    if "connection" in data and isinstance(data["connection"], Mapping):
        data = data["connection"]
    problems: list[FieldProblem] = []
    kwargs: dict[str, Any] = {}
    token: tuple[str, str] | None = None
    token_keys: list[str] = []
    for raw_key, value in data.items():
        key = _normalise_key(str(raw_key))
        key = _TOKEN_ALIASES.get(key, key)
        if key in ("token", "token_file"):
            token_keys.append(str(raw_key))
            token = _token_value(key, value, env, problems) or token
        elif key in PASSWORD_GRANT_ONLY_FIELDS:
            problems.append(
                FieldProblem(
                    str(raw_key),
                    "belongs to a password-grant connection; a static-token connection has only "
                    "Token (or Token File), Auth Scheme, Use Raw Token, Verify TLS and CA Bundle",
                )
            )
        elif key in _SHARED_FIELDS:
            _shared_value(key, value, env, problems, kwargs)
        else:
            known = [*sorted(STATIC_TOKEN_FIELDS), *_SHARED_FIELDS]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            problems.append(
                FieldProblem(str(raw_key), "unknown field" + (f"; did you mean {close[0]!r}?" if close else ""))
            )
    if len(token_keys) > 1:
        problems.append(FieldProblem("token", f"is given more than once ({', '.join(token_keys)}): keep one"))
    elif not token_keys:
        problems.append(FieldProblem("token", f"is required: the token itself, {VALUE_FORMS}"))
    if token is not None:
        kwargs["token"], kwargs["token_from"] = token
    try:
        config = StaticTokenConfig(**kwargs) if "token" in kwargs else None
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems or config is None:
        raise ConfigError(problems)
    return config
