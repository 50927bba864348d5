"""Sans-IO protocol logic: build token requests and parse token-endpoint answers.

Nothing here does I/O or reads a clock: the time a request was sent is passed in.
Every server quirk the SDK knows about is handled here, so any transport can reuse it.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, quote_plus, urlencode

import attrs
import orjson

from ._httputil import MASK, excerpt, rate_limit_delay
from ._paths import dig
from ._secret import Secret
from .config import PasswordGrantConfig
from .errors import (
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    RefreshTokenRejected,
    TokenError,
    TokenRequestRejected,
    TokenResponseError,
    TransientTokenError,
    UnsupportedGrantType,
)

__all__ = [
    "Grant",
    "Instant",
    "Token",
    "TokenRequest",
    "TokenResponse",
    "basic_credentials",
    "build_password_request",
    "build_refresh_request",
    "parse_token_response",
]

Grant = Literal["password", "refresh_token"]

# Response fields that are understood and not copied into Token.extra.
_KNOWN_FIELDS = frozenset(
    {"access_token", "token_type", "expires_in", "refresh_token", "scope", "expires_on", "expires_at"}
)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/=:]{8,16384}")
_SECRETISH_KEY = re.compile(r"token|secret|password|assertion|signature|code", re.IGNORECASE)


@attrs.frozen
class Instant:
    """A moment on both clocks: ``monotonic`` for expiry arithmetic, ``wall`` (epoch) for display."""

    monotonic: float
    wall: float


@attrs.frozen
class TokenRequest:
    """A token request ready to send: method, URL, headers and body bytes.

    Headers and body hold the password or client secret, so neither is in the repr.
    """

    grant: Grant
    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    method: str = "POST"
    #: Secret values this request carries (scrubbed from any error message about its answer).
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class TokenResponse:
    """What a token endpoint answered: status, headers (lower-cased names) and body bytes."""

    status: int
    headers: Mapping[str, str] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)


@attrs.frozen
class Token:
    """An access token and what is known about its lifetime.

    ``expires_at`` is on the monotonic clock and counts from when the request was
    *sent*, so network delay never makes a token look longer-lived than it is.
    """

    access_token: Secret = attrs.field(repr=False)
    #: Value for the ``Authorization`` header (canonical scheme, or the bare token).
    authorization: str = attrs.field(repr=False)
    #: Canonical token type (``Bearer``), whatever casing the server used.
    token_type: str
    #: When the request that produced this token was sent.
    issued: Instant
    #: Lifetime in seconds (a float: never truncated).
    lifetime: float
    #: Where the lifetime came from: ``expires_in``, ``expires_on``, ``issued_at`` or ``default``.
    lifetime_source: str
    refresh_token: Secret | None = attrs.field(default=None, repr=False)
    #: Monotonic time the refresh token stops being valid, when the server said so.
    refresh_expires_at: float | None = None
    scope: str | None = None
    #: Other response fields (``instance_url``, ``id``, ...); token-like values are masked.
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def expires_at(self) -> float:
        """Monotonic time after which the token must not be used."""
        return self.issued.monotonic + self.lifetime

    @property
    def expires_at_wall(self) -> float:
        """Epoch seconds of :attr:`expires_at`."""
        return self.issued.wall + self.lifetime

    def describe(self) -> dict[str, Any]:
        """A secret-free summary for logs and ``check`` output."""
        return {
            "token_type": self.token_type,
            "expires_in": round(self.lifetime, 3),
            "lifetime_source": self.lifetime_source,
            "refresh_token": "issued" if self.refresh_token else "none",
            "scope": self.scope,
            "extra": {k: (MASK if _SECRETISH_KEY.search(k) else v) for k, v in self.extra.items()},
            "access_token": f"{MASK} (sha256:{self.access_token.fingerprint()})",
        }


# --- building requests --------------------------------------------------------------------


def _encode_body(config: PasswordGrantConfig, fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    if config.body_encoding == "json":
        return orjson.dumps(dict(fields)), "application/json"
    return urlencode(fields).encode("ascii"), "application/x-www-form-urlencoded"


def _client_fields(config: PasswordGrantConfig) -> list[tuple[str, str]]:
    if config.client_auth == "body":
        out = []
        if config.client_id:
            out.append(("client_id", config.client_id))
        if config.client_secret is not None:
            out.append(("client_secret", config.client_secret.reveal()))
        return out
    if config.client_auth == "none" and config.client_id:
        return [("client_id", config.client_id)]
    return []


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The HTTP Basic header value of RFC 6749 §2.3.1 (form-urlencode each part, then base64)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _request(
    config: PasswordGrantConfig, grant: Grant, url: str, fields: list[tuple[str, str]], secret: str | None = None
) -> TokenRequest:
    fields = [*fields, *_client_fields(config), *config.body_parameters.items()]
    body, content_type = _encode_body(config, fields)
    headers: dict[str, str] = {"Accept": "application/json", "Content-Type": content_type}
    if config.client_auth == "basic" and config.client_id:
        secret = config.client_secret.reveal() if config.client_secret else ""
        headers["Authorization"] = basic_credentials(config.client_id, secret)
    headers.update(config.headers)
    secrets = tuple(_secrets_of(config, secret))
    return TokenRequest(grant=grant, url=url, headers=tuple(headers.items()), body=body, secrets=secrets)


def build_password_request(config: PasswordGrantConfig) -> TokenRequest:
    """The login request: username and password for a token."""
    fields = [("grant_type", config.grant_type)]
    if config.username is not None:
        fields.append(("username", config.username))
    if config.password is not None:
        fields.append(("password", config.password.reveal()))
    if config.scope:
        fields.append(("scope", config.scope))
    return _request(config, "password", config.access_token_url, fields)


def build_refresh_request(config: PasswordGrantConfig, refresh_token: Secret) -> TokenRequest:
    """The refresh request, sent to the Refresh Token URL (scope omitted: it stays as granted)."""
    fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.reveal())]
    return _request(config, "refresh_token", config.effective_refresh_url, fields, refresh_token.reveal())


# --- parsing answers ----------------------------------------------------------------------


def _secrets_of(config: PasswordGrantConfig, request_secret: str | None) -> list[str]:
    out = [s.reveal() for s in (config.password, config.client_secret) if s]
    out.extend(v for v in config.headers.values() if len(v) >= 6)
    if request_secret:
        out.append(request_secret)
    return out


def _decode(response: TokenResponse) -> tuple[Any, bool]:
    """Return (decoded body, is_structured). Tries JSON whatever the content type says."""
    stripped = response.body.strip()
    if stripped[:1] in (b"{", b'"', b"["):
        try:
            return orjson.loads(stripped), True
        except orjson.JSONDecodeError:
            return None, False
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(stripped.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            return None, False
        return dict(pairs), True
    return None, False


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _epoch_seconds(value: float) -> float:
    # Some servers give epoch milliseconds; no epoch in seconds is that large before year 5000.
    return value / 1000.0 if value > 1e11 else value


def _lifetime(data: Mapping[str, Any], sent: Instant, default: float) -> tuple[float, str]:
    expires_in = _number(data.get("expires_in"))
    if expires_in is not None and expires_in > 0:
        return expires_in, "expires_in"
    for field in ("expires_on", "expires_at"):
        at = _number(data.get(field))
        if at is not None:
            remaining = _epoch_seconds(at) - sent.wall
            if remaining > 0:
                return remaining, field
    issued_at = _number(data.get("issued_at"))
    if issued_at is not None:
        # The session lives `default` seconds from issue; a server clock slightly ahead of
        # ours must not lengthen it past what counting from our send time gives.
        remaining = min(_epoch_seconds(issued_at) + default - sent.wall, default)
        if remaining > 0:
            return remaining, "issued_at"
    return default, "default"


_ERRORS: Mapping[str, type[TokenError]] = {
    "invalid_client": InvalidClient,
    "unauthorized_client": InvalidClient,
    "unsupported_grant_type": UnsupportedGrantType,
    "invalid_scope": InvalidScope,
    "invalid_request": InvalidRequest,
}


def _rejected(grant: Grant) -> type[TokenError]:
    return InvalidCredentials if grant == "password" else RefreshTokenRejected


def _classify(
    response: TokenResponse,
    grant: Grant,
    code: str | None,
    description: str | None,
    retry_after: float | None,
    scrub: list[str],
) -> TokenError:
    status = response.status
    msg = "token request failed"
    if description:
        msg += f": {excerpt(description.encode(), scrub, 200)}"
    elif code is None:
        body = excerpt(response.body, scrub)
        msg += f": {body!r}" if body else " with an empty body"
    kw: dict[str, Any] = {"status": status, "error_code": code, "grant": grant, "retry_after": retry_after}
    if code == "invalid_grant":
        return _rejected(grant)(msg, **kw)
    if code is not None and code in _ERRORS:
        return _ERRORS[code](msg, **kw)
    if code == "temporarily_unavailable" or status in (408, 429) or status >= 500:
        if status in (401, 403):  # e.g. ServiceNow: 401 with error=server_error for a bad password
            return _rejected(grant)(msg, **kw)
        return TransientTokenError(msg, **kw)
    if status in (401, 403):
        return _rejected(grant)(msg, **kw)
    if grant == "refresh_token" and 400 <= status < 500:
        return RefreshTokenRejected(msg, **kw)
    if 400 <= status < 500:
        return TokenRequestRejected(msg, **kw)
    return TokenResponseError(msg, **kw)


def parse_token_response(
    config: PasswordGrantConfig,
    request: TokenRequest,
    response: TokenResponse,
    sent: Instant,
    *,
    previous: Token | None = None,
) -> Token:
    """Turn a token endpoint's answer into a :class:`Token`, or raise a typed :class:`TokenError`.

    Errors are classified by the body first (an OAuth ``error`` code wins whatever the
    status, even on 200), then by status. ``previous`` is the token being refreshed: its
    refresh token is kept when the answer carries none.
    """
    grant = request.grant
    scrub = list(request.secrets) or _secrets_of(config, None)
    retry_after = rate_limit_delay(response.headers, sent.wall)
    data, structured = _decode(response)
    status = response.status

    if isinstance(data, Mapping) and data.get("error") is not None:
        code = str(data.get("error"))[:64]
        desc = data.get("error_description") or data.get("description") or data.get("message")
        raise _classify(response, grant, code, str(desc) if desc else None, retry_after, scrub)
    if not 200 <= status < 300:
        desc = None
        if isinstance(data, Mapping):
            d = data.get("error_description") or data.get("description") or data.get("message")
            desc = str(d) if d else None
        raise _classify(response, grant, None, desc, retry_after, scrub)

    access: Any = None
    fields: Mapping[str, Any] = {}
    if config.token_response != "text":
        if isinstance(data, Mapping):
            fields = data
            access = dig(data, config.token_path)
        elif isinstance(data, str) and structured:
            access = data  # a JSON string literal holding just the token
    if access is None and not structured and config.token_response in ("auto", "text"):
        text = response.body.strip().decode("utf-8", "replace")
        if _TOKEN_CHARS.fullmatch(text):
            access = text
    if not isinstance(access, str) or not access or any(c in access for c in "\r\n\0 "):
        where = f"field {config.token_path!r}" if config.token_response != "text" else "a bare token"
        what = "malformed JSON" if response.body.strip()[:1] in (b"{", b"[") and not structured else "no token"
        if not response.body.strip():
            what = "an empty body"
        raise TokenResponseError(
            f"token endpoint answered {what} (expected {where}); body: {excerpt(response.body, scrub)!r}",
            status=status,
            grant=grant,
        )

    lifetime, source = _lifetime(fields, sent, config.default_expires_in)
    refresh_raw = fields.get("refresh_token")
    refresh: Secret | None
    if isinstance(refresh_raw, str) and refresh_raw:
        refresh = Secret(refresh_raw)
    else:
        refresh = previous.refresh_token if previous is not None and grant == "refresh_token" else None
    refresh_expires_at: float | None = None
    rexp = _number(fields.get("refresh_expires_in"))
    if isinstance(refresh_raw, str) and refresh_raw and rexp is not None and rexp > 0:
        refresh_expires_at = sent.monotonic + rexp
    elif refresh is not None and previous is not None and refresh is previous.refresh_token:
        refresh_expires_at = previous.refresh_expires_at

    raw_type = fields.get("token_type")
    token_type = config.auth_scheme
    if isinstance(raw_type, str) and raw_type.strip() and raw_type.strip().lower() != "bearer":
        token_type = raw_type.strip()
    header = access if config.use_raw_token else f"{config.auth_scheme} {access}"
    scope = fields.get("scope")
    extra = {k: v for k, v in fields.items() if k not in _KNOWN_FIELDS}
    return Token(
        access_token=Secret(access),
        authorization=header,
        token_type=token_type,
        issued=sent,
        lifetime=lifetime,
        lifetime_source=source,
        refresh_token=refresh,
        refresh_expires_at=refresh_expires_at,
        scope=scope if isinstance(scope, str) else None,
        extra=extra,
    )
