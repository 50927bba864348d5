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

from ._httputil import rate_limit_delay
from ._paths import dig
from ._secret import Secret
from .config import PasswordGrantConfig
from .errors import (
    InvalidClient,
    InvalidCredentials,
    InvalidRequest,
    InvalidScope,
    LoginResponseError,
    RefreshTokenRejected,
    TokenError,
    TokenRedirectError,
    TokenRequestRejected,
    TokenResponseError,
    TransientTokenError,
    UnsupportedGrantType,
)
from .redact import MASK, MIN_SECRET_LENGTH, excerpt, holds_secret, is_secret_name

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
#: A bare token answered as plain text (BMC): base64url/JWT characters only.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/=:]{8,16384}")
#: What an access token may hold: it is sent in an HTTP header, so visible ASCII only (RFC 9110
#: §5.5 field values; RFC 6750's b64token is a subset). No spaces, no controls, no non-ASCII.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,65536}")
#: Lifetimes are capped at a year: a bogus answer must not pin a token for ever (a 401 still renews).
_MAX_LIFETIME = 366 * 86400.0
#: Nesting kept in Token.extra (deeper values are replaced): keeps it storable and printable.
_MAX_EXTRA_DEPTH = 32


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
        """A secret-free summary for logs and ``check`` output.

        In ``extra``, strings under secret-looking keys (``id_token``, ``signature``...) and any
        string holding the access or refresh token are masked; numbers, booleans and null are
        shown as they are (``refresh_token_expires_in: 86400`` is not a secret).
        """
        tokens = [t.reveal() for t in (self.access_token, self.refresh_token) if t]
        rexp = self.refresh_expires_at
        return {
            "token_type": self.token_type,
            "expires_in": round(self.lifetime, 3),
            "lifetime_source": self.lifetime_source,
            "refresh_token": "issued" if self.refresh_token else "none",
            "refresh_expires_in": None if rexp is None else round(rexp - self.issued.monotonic, 3),
            "scope": self.scope,
            "extra": _masked(dict(self.extra), tokens, 0),
            "access_token": f"{MASK} (sha256:{self.access_token.fingerprint()})",
        }


def _masked(value: Any, tokens: list[str], depth: int, secretish: bool = False) -> Any:
    """``value`` for display: secret strings masked, scalars kept, nesting bounded."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if secretish or any(len(t) >= MIN_SECRET_LENGTH and t in value for t in tokens):
            return MASK
        return value
    if depth >= 8:
        return "..."
    if isinstance(value, Mapping):
        return {str(k): _masked(v, tokens, depth + 1, secretish or is_secret_name(str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, tokens, depth + 1, secretish) for v in value]
    return MASK  # an unknown type: nothing to show safely


# --- building requests --------------------------------------------------------------------


def _encode_body(config: PasswordGrantConfig, fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    if config.body_encoding == "json":
        return orjson.dumps(dict(fields)), "application/json"
    return urlencode(fields).encode("utf-8"), "application/x-www-form-urlencoded"


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


def basic_credentials(client_id: str, client_secret: str, *, form_encode: bool = True) -> str:
    """The HTTP Basic header value for a client.

    With ``form_encode`` (``client_auth = basic``), id and secret are form-urlencoded before
    base64, as RFC 6749 §2.3.1 says, so ``+ / : %`` in a secret survive. Without it
    (``client_auth = basic_plain``), they are joined as they are (RFC 7617, UTF-8), for servers
    that do not decode them.
    """
    if form_encode:
        client_id, client_secret = quote_plus(client_id), quote_plus(client_secret)
    raw = f"{client_id}:{client_secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _basic_forms(client_id: str, client_secret: str) -> list[str]:
    # Both spellings of the Basic credentials: an echoed Authorization header holds one of them.
    return [basic_credentials(client_id, client_secret, form_encode=f)[6:] for f in (True, False)]


def _request(
    config: PasswordGrantConfig, grant: Grant, url: str, fields: list[tuple[str, str]], secret: str | None = None
) -> TokenRequest:
    fields = [*fields, *_client_fields(config)]
    if grant == "password" or config.body_parameters_on_refresh:
        fields.extend(config.body_parameters.items())
    # RFC 6749 §3.2: parameters MUST NOT be sent more than once; the config refuses every
    # conflict, so a repeat here is a bug, not a server quirk.
    assert len({k for k, _ in fields}) == len(fields), "duplicate token request parameter"
    body, content_type = _encode_body(config, fields)
    headers: dict[str, str] = {"Accept": "application/json", "Content-Type": content_type}
    if config.client_auth in ("basic", "basic_plain") and config.client_id:
        client_secret = config.client_secret.reveal() if config.client_secret else ""
        headers["Authorization"] = basic_credentials(
            config.client_id, client_secret, form_encode=config.client_auth == "basic"
        )
    headers.update(config.headers)
    secrets = tuple(_secrets_of(config, secret))
    return TokenRequest(grant=grant, url=url, headers=tuple(headers.items()), body=body, secrets=secrets)


def build_password_request(config: PasswordGrantConfig) -> TokenRequest:
    """The login request: username and password for a token.

    Body Parameters are added as given; the scope field is sent unless Body Parameters
    already carry the same ``scope`` (never twice).
    """
    fields = [("grant_type", config.grant_type)]
    if config.username is not None:
        fields.append(("username", config.username))
    if config.password is not None:
        fields.append(("password", config.password.reveal()))
    if config.scope and "scope" not in config.body_parameters:
        fields.append(("scope", config.scope))
    return _request(config, "password", config.access_token_url, fields)


def build_refresh_request(config: PasswordGrantConfig, refresh_token: Secret) -> TokenRequest:
    """The refresh request, sent to the Refresh Token URL.

    Body Parameters go along when ``body_parameters_on_refresh`` is on (the default: AD FS and
    Entra want ``resource`` / ``scope`` there). The scope *field* is a login setting and is not
    sent: the refreshed token keeps the scope granted (RFC 6749 §6).
    """
    fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.reveal())]
    return _request(config, "refresh_token", config.effective_refresh_url, fields, refresh_token.reveal())


# --- parsing answers ----------------------------------------------------------------------


def _secrets_of(config: PasswordGrantConfig, request_secret: str | None) -> list[str]:
    """Every value an error message about this credential must never show."""
    out = [s.reveal() for s in (config.password, config.client_secret) if s]
    out.extend(v for v in config.headers.values() if len(v) >= MIN_SECRET_LENGTH)
    out.extend(v for k, v in config.body_parameters.items() if len(v) >= MIN_SECRET_LENGTH and is_secret_name(k))
    if config.client_id and config.client_secret:
        out.extend(_basic_forms(config.client_id, config.client_secret.reveal()))
    if request_secret:
        out.append(request_secret)
    return out


def _decode(response: TokenResponse) -> tuple[Any, bool]:
    """Return (decoded body, is_structured). Tries JSON whatever the content type says.

    orjson refuses nesting deeper than 1024 and numbers beyond a double (``1e400``): such a
    body counts as malformed, never as an exception of another type.
    """
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
        try:
            f = float(value)
        except OverflowError:  # an int beyond a double
            return None
    elif isinstance(value, str) and len(value) <= 64:
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
    # expires_in: 0 or negative means the token is already expired (a server handing back a
    # token it issued earlier, counted down), never "missing": the default would make it live on.
    expires_in = _number(data.get("expires_in"))
    if expires_in is not None:
        return min(max(expires_in, 0.0), _MAX_LIFETIME), "expires_in"
    # Absolute times are compared with our wall clock: one already past more likely means a
    # skewed clock than an expired token, so it falls through to the next source.
    for field in ("expires_on", "expires_at"):
        at = _number(data.get(field))
        if at is not None:
            remaining = _epoch_seconds(at) - sent.wall
            if remaining > 0:
                return min(remaining, _MAX_LIFETIME), field
    issued_at = _number(data.get("issued_at"))
    if issued_at is not None:
        # The session lives `default` seconds from issue; a server clock slightly ahead of
        # ours must not lengthen it past what counting from our send time gives.
        remaining = min(_epoch_seconds(issued_at) + default - sent.wall, default)
        if remaining > 0:
            return remaining, "issued_at"
    return default, "default"


def _refresh_lifetime(data: Mapping[str, Any], sent: Instant) -> float | None:
    """Seconds the refresh token stays valid, from the answer; ``None`` when it does not say.

    ``refresh_expires_in`` (Keycloak) and ``refresh_token_expires_in`` are seconds; 0 means no
    time limit (Keycloak's offline tokens), a negative value means already expired.
    ``refresh_token_expires_at`` is epoch seconds or milliseconds. The earliest one wins.
    """
    found: list[float] = []
    for field in ("refresh_expires_in", "refresh_token_expires_in"):
        seconds = _number(data.get(field))
        if seconds is not None and seconds != 0:
            found.append(max(seconds, 0.0))
    at = _number(data.get("refresh_token_expires_at"))
    if at is not None and at > 0:
        found.append(max(_epoch_seconds(at) - sent.wall, 0.0))
    return min(min(found), _MAX_LIFETIME) if found else None


# --- error answers ------------------------------------------------------------------------

# How an answer is classified (body first, then status), in this order:
#   1. an OAuth `error` code with one meaning: invalid_grant (a rejected password, or refresh
#      token), invalid_client / unauthorized_client, unsupported_grant_type, invalid_scope;
#   2. "come back later": 408, 429, 503, or the codes temporarily_unavailable / slow_down ->
#      transient, whatever the wording (a throttle is not a verdict on the password);
#   3. on a password login, the wording of the code and the description (error_description,
#      description, message, error.message, detail... or a plain-text body, never an HTML
#      page, whose sign-in form always says "password"): password / username -> InvalidCredentials;
#      else client id / secret / credentials / authentication -> InvalidClient; else credentials /
#      locked / lockout / disabled / "authentication failed" / "login failed" -> InvalidCredentials.
#      Servers word a wrong password every way (invalid_request, server_error on 500, 400 with
#      {"error": {"message": ...}}, 200 {"success": false}) and sending it again risks a
#      lockout, so the wording decides;
#   4. invalid_request -> InvalidRequest;
#   5. the status: 401/403 -> rejected credentials (or refresh token); other 5xx -> transient;
#      other 4xx -> rejected (a refresh token, on a refresh); 3xx -> redirect; 2xx (no token)
#      -> LoginResponseError on a login (definitive), TokenResponseError on a refresh.

_CODE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_ACCOUNT_WORDS = re.compile(r"pass[\s_-]?words?|passwd|user[\s_-]?names?", re.IGNORECASE)
_CLIENT_WORDS = re.compile(r"client[\s_-]*(?:id|secret|credential|auth)", re.IGNORECASE)
_CREDENTIAL_WORDS = re.compile(
    r"credential|locked|lock[\s_-]?out|disabled|(?:authentication|login|log[\s_-]?in|sign[\s_-]?in)[\s_-]+failed",
    re.IGNORECASE,
)
_DESCRIPTION_KEYS = ("error_description", "description", "message", "error_message", "detail", "title")
_LATER = frozenset({"temporarily_unavailable", "slow_down"})

_ERRORS: Mapping[str, type[TokenError]] = {
    "invalid_client": InvalidClient,
    "unauthorized_client": InvalidClient,
    "unsupported_grant_type": UnsupportedGrantType,
    "invalid_scope": InvalidScope,
}


@attrs.frozen
class _Answer:
    """What an answer says about itself: the OAuth code, a description, and whether it reads as an error."""

    code: str | None = None
    description: str | None = None
    #: Text to read for the wording rule (code + descriptions, or a plain-text body).
    wording: str = ""
    #: The body marks itself as an error (an `error` field, ``success: false``...).
    flagged: bool = False


def _text(value: object) -> str | None:
    # Only strings are read: str() of a hostile nested object can raise RecursionError. They are
    # kept whole: cutting before the excerpt scrubs them could cut a secret in half.
    return value if isinstance(value, str) and value.strip() else None


def _read_answer(response: TokenResponse, data: Any, structured: bool) -> _Answer:
    texts: list[str] = []
    code: str | None = None
    flagged = False
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, str) and err.strip():
            flagged = True
            if _CODE.fullmatch(err.strip()):
                code = err.strip()
            else:
                texts.append(err)  # a sentence in `error`: "Invalid username or password."
        elif isinstance(err, Mapping) and err:
            flagged = True
            inner = _text(err.get("code")) or (str(err["code"]) if type(err.get("code")) is int else None)
            if inner and _CODE.fullmatch(inner.strip()):
                code = inner.strip()
            texts += [t for t in (_text(err.get(k)) for k in ("message", "description", "error_description")) if t]
        elif err is True:
            flagged = True
        texts += [t for t in (_text(data.get(k)) for k in _DESCRIPTION_KEYS) if t]
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            texts += [t for t in (_text(errors[0].get(k)) for k in ("message", "detail")) if t]
            flagged = True
        if data.get("success") is False or data.get("ok") is False or data.get("status") in ("error", "fail"):
            flagged = True
    elif isinstance(data, str) and structured:
        texts.append(data)  # a JSON string literal: "Invalid credentials"
    description = texts[0] if texts else None
    if not structured and not _looks_like_html(response):
        # A plain-text answer: its first words are read for the rule; the message quotes the body.
        texts.append(response.body[:2000].decode("utf-8", "replace"))
    wording = " ".join([code or "", *(t[:2000] for t in texts)])  # the reason is in the first words
    return _Answer(code=code, description=description, wording=wording, flagged=flagged)


def _looks_like_html(response: TokenResponse) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    return "html" in ctype or response.body.lstrip()[:1] == b"<"


def _wording_says(wording: str) -> type[TokenError] | None:
    if _ACCOUNT_WORDS.search(wording):
        return InvalidCredentials
    if _CLIENT_WORDS.search(wording):
        return InvalidClient
    if _CREDENTIAL_WORDS.search(wording):
        return InvalidCredentials
    return None


def _client_hint(config: PasswordGrantConfig) -> str:
    other = {
        "body": "client_auth = basic (HTTP Basic, form-encoded) or basic_plain (HTTP Basic, as is)",
        "basic": "client_auth = basic_plain (HTTP Basic without form-encoding, RFC 7617: some servers "
        "do not decode '+ / : %') or body (form fields)",
        "basic_plain": "client_auth = basic (HTTP Basic, form-encoded as RFC 6749 §2.3.1 says) or body (form fields)",
        "none": "client_auth = body or basic with the Client Secret (the server wants client authentication)",
    }[config.client_auth]
    return f"check Client Id and Client Secret; if they are right, the server may want {other}"


def _rejected(grant: Grant) -> type[TokenError]:
    return InvalidCredentials if grant == "password" else RefreshTokenRejected


def _classify(
    config: PasswordGrantConfig,
    response: TokenResponse,
    grant: Grant,
    answer: _Answer,
    retry_after: float | None,
    scrub: list[str],
    what: str = "token request failed",
) -> TokenError:
    status = response.status
    code = answer.code.lower() if answer.code else None
    msg = what
    if answer.description:
        msg += f": {excerpt(answer.description.encode(), scrub, 200)}"
    elif answer.code is None:
        body = excerpt(response.body, scrub)
        msg += f": {body!r}" if body else " with an empty body"
    # The code is shown in messages too: scrub it like the description (a server may echo anything).
    shown_code = excerpt(answer.code.encode(), scrub, 64) if answer.code else None
    kw: dict[str, Any] = {"status": status, "error_code": shown_code, "grant": grant, "retry_after": retry_after}

    def make(cls: type[TokenError]) -> TokenError:
        if cls is InvalidClient:
            return cls(msg, hint=_client_hint(config), **kw)
        return cls(msg, **kw)

    if code == "invalid_grant":
        return make(_rejected(grant))
    if code is not None and code in _ERRORS:
        return make(_ERRORS[code])
    if status in (408, 429, 503) or code in _LATER:
        return make(TransientTokenError)
    if grant == "password":
        said = _wording_says(answer.wording)
        if said is not None:
            return make(said)
    if code == "invalid_request":
        return make(InvalidRequest)
    if status in (401, 403):
        return make(_rejected(grant))
    if status >= 500:
        return make(TransientTokenError)
    if 400 <= status < 500:
        return make(RefreshTokenRejected if grant == "refresh_token" else TokenRequestRejected)
    if 300 <= status < 400:
        return make(TokenRedirectError)
    return make(LoginResponseError if grant == "password" else TokenResponseError)


def _extra(fields: Mapping[str, Any], token_path: str, tokens: list[str], secrets: list[str]) -> dict[str, Any]:
    """Response fields not otherwise understood, without anything holding a secret.

    The object a dotted ``token_path`` points into (``data`` for ``data.token``) is left out
    whole, and so is any entry holding the access or refresh token, or a secret of the request
    (a server echoing the password), anywhere inside it. Entries nested deeper than
    :data:`_MAX_EXTRA_DEPTH` are replaced (they could not be stored).
    """
    skip = {*_KNOWN_FIELDS, token_path.split(".", 1)[0]}
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in skip:
            continue
        holds, too_deep = _inspect(value, tokens, secrets)
        if holds:
            continue
        out[key] = "(omitted: nested too deeply)" if too_deep else value
    return out


def _holds_any(text: str, tokens: list[str], secrets: list[str]) -> bool:
    # Like the scrubbing, values under MIN_SECRET_LENGTH are not searched for (they are everywhere).
    return any(len(t) >= MIN_SECRET_LENGTH and t in text for t in tokens) or holds_secret(text, secrets)


def _inspect(value: Any, tokens: list[str], secrets: list[str]) -> tuple[bool, bool]:
    """(holds a token or secret somewhere, nested deeper than allowed), without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    too_deep = False
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _holds_any(item, tokens, secrets):
                return True, too_deep
        elif isinstance(item, (Mapping, list)):
            if depth >= _MAX_EXTRA_DEPTH:
                too_deep = True
                continue
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)
    return False, too_deep


def _access_of(config: PasswordGrantConfig, response: TokenResponse, data: Any, structured: bool) -> Any:
    """The access token as the answer holds it (any type; ``None`` when it holds none)."""
    access: Any = None
    if config.token_response != "text":
        if isinstance(data, Mapping):
            access = dig(data, config.token_path)
        elif isinstance(data, str) and structured and _HEADER_SAFE.fullmatch(data):
            access = data  # a JSON string literal holding just the token (Ivanti); else a message
    if access is None and not structured and config.token_response in ("auto", "text"):
        text = response.body.strip().decode("utf-8", "replace")
        if _TOKEN_CHARS.fullmatch(text):
            access = text
    return access


def _refuse_unusable(
    config: PasswordGrantConfig, response: TokenResponse, grant: Grant, access: Any, scrub: list[str]
) -> None:
    """Raise for a token that must never be sent: one of the request's secrets, or not header-safe."""
    if not isinstance(access, str):
        return
    cls = LoginResponseError if grant == "password" else TokenResponseError
    if access in scrub:
        # A server echoing the request back (the password as a bare text body, say): sending
        # that as a bearer token would hand the password to every API request.
        raise cls(
            "token endpoint answered one of the request's own secrets as the token; refused",
            status=response.status,
            grant=grant,
        )
    if access and not _HEADER_SAFE.fullmatch(access):
        raise cls(
            "token endpoint answered a token that cannot be sent in an HTTP header (spaces, control "
            f"or non-ASCII characters); body: {excerpt(response.body, [*scrub, access])!r}",
            status=response.status,
            grant=grant,
            hint="check token_path (it may point at the wrong field) and token_response",
        )


def _no_token(
    config: PasswordGrantConfig,
    response: TokenResponse,
    grant: Grant,
    data: Any,
    structured: bool,
    answer: _Answer,
    retry_after: float | None,
    scrub: list[str],
) -> TokenError:
    """The error for a successful status whose answer holds no usable token."""
    where = f"field {config.token_path!r}" if config.token_response != "text" else "a bare token"
    what = "malformed JSON" if response.body.strip()[:1] in (b"{", b"[") and not structured else "no token"
    if not response.body.strip():
        what = "an empty body"
    what = f"token endpoint answered {what} (expected {where})"
    # A body that marks itself as an error is classified; so is a bare message on a login
    # ("Invalid credentials" as text). A JSON object without such a mark is more likely a
    # token somewhere else (token_path), whatever words it holds.
    bare_message = not isinstance(data, Mapping) and _wording_says(answer.wording) is not None
    if answer.flagged or (grant == "password" and bare_message):
        return _classify(config, response, grant, answer, retry_after, scrub, what=what)
    cls = LoginResponseError if grant == "password" else TokenResponseError
    return cls(f"{what}; body: {excerpt(response.body, scrub)!r}", status=response.status, grant=grant)


def _refresh_of(
    fields: Mapping[str, Any], sent: Instant, grant: Grant, previous: Token | None
) -> tuple[Secret | None, float | None]:
    """The refresh token to keep (the answer's, or the one refreshed with) and when it expires."""
    refresh_raw = fields.get("refresh_token")
    if isinstance(refresh_raw, str) and refresh_raw:
        seconds = _refresh_lifetime(fields, sent)
        return Secret(refresh_raw), None if seconds is None else sent.monotonic + seconds
    if previous is not None and grant == "refresh_token" and previous.refresh_token is not None:
        return previous.refresh_token, previous.refresh_expires_at
    return None, None


def _shown_type_and_scope(
    config: PasswordGrantConfig, fields: Mapping[str, Any], tokens: list[str], scrub: list[str]
) -> tuple[str, str | None]:
    """``token_type`` and ``scope`` as reprs and describe() show them: plain values holding no secret."""
    raw_type = fields.get("token_type")
    token_type = config.auth_scheme
    if (
        isinstance(raw_type, str)
        and re.fullmatch(r"[A-Za-z0-9._~+/-]{1,64}", raw_type.strip())
        and raw_type.strip().lower() != "bearer"
        and not _holds_any(raw_type, tokens, scrub)
    ):
        token_type = raw_type.strip()
    scope = fields.get("scope")
    if not isinstance(scope, str) or _holds_any(scope, tokens, scrub):
        scope = None
    return token_type, scope


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
    status, even on 200), then by status; see the rule above :func:`_classify`. Whatever
    the bytes, only a :class:`Token` or a :class:`TokenError` comes out, and no message
    holds a secret. ``previous`` is the token being refreshed: its refresh token is kept
    when the answer carries none.
    """
    grant = request.grant
    scrub = list(request.secrets) or _secrets_of(config, None)
    retry_after = rate_limit_delay(response.headers, sent.wall)
    data, structured = _decode(response)
    status = response.status
    answer = _read_answer(response, data, structured)

    if answer.code is not None or not 200 <= status < 300:
        raise _classify(config, response, grant, answer, retry_after, scrub)

    fields: Mapping[str, Any] = data if config.token_response != "text" and isinstance(data, Mapping) else {}
    access = _access_of(config, response, data, structured)
    _refuse_unusable(config, response, grant, access, scrub)
    if not isinstance(access, str) or not access:
        raise _no_token(config, response, grant, data, structured, answer, retry_after, scrub)
    lifetime, source = _lifetime(fields, sent, config.default_expires_in)
    refresh, refresh_expires_at = _refresh_of(fields, sent, grant, previous)
    tokens = [access, *([refresh.reveal()] if refresh else [])]
    token_type, scope = _shown_type_and_scope(config, fields, tokens, scrub)
    header = access if config.use_raw_token else f"{config.auth_scheme} {access}"
    return Token(
        access_token=Secret(access),
        authorization=header,
        token_type=token_type,
        issued=sent,
        lifetime=lifetime,
        lifetime_source=source,
        refresh_token=refresh,
        refresh_expires_at=refresh_expires_at,
        scope=scope,
        extra=_extra(fields, config.token_path, tokens, scrub),
    )
