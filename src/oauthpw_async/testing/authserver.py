"""A real authorization server for tests, benchmarks, the demo, and users' own crawler tests.

:class:`AuthServerState` is the server's logic without I/O (so trio tests can call it in
memory); :class:`LocalServer` serves it with aiohttp.web on an ephemeral 127.0.0.1 port.
"""

from __future__ import annotations

import base64
import collections
import html
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import attrs
import orjson

__all__ = ["AuthServerState", "BadPasswordStyle", "Fault", "Quirks", "Reply"]

FaultKind = Literal["status", "delay", "drop", "html", "malformed", "empty", "huge"]

#: How a rejected password is worded; each is a shape real servers use.
BadPasswordStyle = Literal[
    "invalid_grant",  # RFC 6749: 400 {"error": "invalid_grant"}
    "servicenow",  # 401 {"error": "server_error", "error_description": "access_denied"}
    "invalid_request",  # 400 invalid_request, the reason in error_description
    "description_field",  # 400 invalid_request, the reason in "description"
    "message_field",  # 400 invalid_request, the reason in "message"
    "sentence_in_error",  # 400 {"error": "Invalid username or password."}
    "nested_error",  # 400 {"error": {"code": "E0000004", "message": "..."}}
    "plain_401",  # 401 text/plain "Unauthorized"
    "plain_400",  # 400 text/plain "Invalid username or password"
    "success_false",  # 200 {"success": false, "message": "Invalid credentials"}
    "html_login",  # 200 text/html: the sign-in page again
    "server_error_500",  # 500 server_error "Invalid user credentials"
    "throttled_429",  # 429 text/plain with Retry-After: a throttle, not a verdict
]


@attrs.define
class Quirks:
    """Switches that make the server answer like one real product or another."""

    #: ``number`` (RFC), ``string`` ("3599", Entra v1) or ``missing`` (Salesforce, old Zendesk).
    expires_in: Literal["number", "string", "missing"] = "number"
    #: ``token_type`` to send; ``None`` leaves it out; ``"bearer"`` mimics Zendesk/Box/AD FS.
    token_type: str | None = "Bearer"
    #: ``json`` object, bare ``text`` (BMC), or a JSON ``json_string`` literal (Ivanti).
    token_format: Literal["json", "text", "json_string"] = "json"
    #: Salesforce: ``issued_at`` as epoch milliseconds in a string, ``instance_url``, no refresh token.
    salesforce: bool = False
    #: Grant type name the server expects for a login.
    grant_type_name: str = "password"
    #: A header the server requires on token requests, e.g. ("X-Tenant", "acme").
    required_header: tuple[str, str] | None = None
    #: A body parameter the server requires, e.g. ("resource", "https://api").
    required_body_param: tuple[str, str] | None = None
    #: Accept only JSON request bodies (Zendesk's token endpoint, Atlassian Cloud).
    json_only: bool = False
    #: ``body``, ``basic`` (rejects both together, as Okta does), ``either`` or ``none``.
    client_auth: Literal["body", "basic", "either", "none"] = "either"
    #: Issue refresh tokens at all.
    issue_refresh_token: bool = True
    #: Single-use refresh tokens: each refresh returns a new one and revokes the old.
    rotate_refresh_tokens: bool = True
    #: Refresh answers carry no refresh_token (the client must keep the old one).
    refresh_omits_refresh_token: bool = False
    #: Presenting a used refresh token revokes its whole family (Okta, Auth0).
    reuse_detection: bool = False
    #: How a wrong password is answered (see :data:`BadPasswordStyle`).
    bad_password_style: BadPasswordStyle = "invalid_grant"
    #: How the server reads HTTP Basic client credentials: ``form`` (form-decodes id and secret,
    #: RFC 6749 §2.3.1) or ``plain`` (takes them as they are, RFC 7617, as many servers do).
    basic_encoding: Literal["form", "plain"] = "form"
    #: Refuse a parameter sent twice (RFC 6749 §3.2: "MUST NOT be included more than once").
    reject_repeated_params: bool = True
    #: Error answers quote the request back (body and Authorization header), as some servers do:
    #: ``off``, ``json`` (inside error_description), ``html`` (an escaped HTML page) or ``text``.
    echo_request: Literal["off", "json", "html", "text"] = "off"
    #: Which field states the refresh token's lifetime (when ``refresh_token_lifetime`` is set):
    #: seconds in ``refresh_expires_in`` (Keycloak) or ``refresh_token_expires_in``, or epoch
    #: milliseconds in ``refresh_token_expires_at``.
    refresh_lifetime_field: Literal["refresh_expires_in", "refresh_token_expires_in", "refresh_token_expires_at"] = (
        "refresh_expires_in"
    )
    #: Extra fields added to every token answer (e.g. {"not-before-policy": 0}).
    extra_fields: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class Fault:
    """One injected failure, applied to the next token request."""

    kind: FaultKind
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0


@attrs.define
class Reply:
    """What the server answers: status, headers, body (or a dropped connection)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)
    drop: bool = False
    delay: float = 0.0


@attrs.define
class _Family:
    revoked: bool = False


@attrs.define
class _Issued:
    expires_at: float
    family: _Family


class AuthServerState:
    """The authorization server's behaviour, without I/O.

    Thread-unsafe by design: it is driven by one event loop.
    """

    def __init__(
        self,
        *,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret+/:%",
        username: str = "demo.user@example.com",
        password: str = "correct horse battery staple",
        token_lifetime: float = 3600.0,
        refresh_token_lifetime: float | None = None,
        lockout_after: int = 5,
        quirks: Quirks | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self.token_lifetime = token_lifetime
        #: Refresh tokens expire this many seconds after issue (stated in the answer); ``None``: never.
        self.refresh_token_lifetime = refresh_token_lifetime
        self.wall = wall
        self.lockout_after = lockout_after
        self.quirks = quirks or Quirks()
        self.latency = latency
        self.clock = clock
        #: ``instance_url`` sent with the Salesforce quirk (LocalServer sets its own URL).
        self.instance_url: str | None = None
        self.faults: collections.deque[Fault] = collections.deque()
        #: Token requests by ``"<grant>:<outcome>"``, e.g. ``"password:ok"``, ``"refresh_token:invalid_grant"``.
        self.counts: collections.Counter[str] = collections.Counter()
        #: API requests refused with 401 (filled in by the protected API).
        self.failed_logins = 0
        self.locked = False
        self._access: dict[str, _Issued] = {}
        self._refresh_tokens: dict[str, tuple[_Family, bool]] = {}
        self._refresh_expiry: dict[str, float] = {}
        #: The request being answered (for ``echo_request``).
        self._echo = ""
        self._prune_at = 1024

    # --- controls ---------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies to one upcoming token request, in order."""
        self.faults.extend(faults)

    def revoke_access_tokens(self) -> int:
        """Revoke every access token issued so far (refresh tokens stay valid)."""
        n = len(self._access)
        self._access.clear()
        return n

    def issue_static_token(self) -> str:
        """An access token that never expires (a ceiling for benchmarks); returns its value."""
        token = secrets.token_urlsafe(24)
        self._access[token] = _Issued(float("inf"), _Family())
        return token

    def unlock(self) -> None:
        """Clear the lockout and the failed-login count."""
        self.locked = False
        self.failed_logins = 0

    @property
    def token_requests(self) -> int:
        """Token requests answered so far, all grants and outcomes."""
        return sum(self.counts.values())

    def count(self, grant: str | None = None, outcome: str | None = None) -> int:
        """Token requests so far, filtered by grant and/or outcome."""
        total = 0
        for key, n in self.counts.items():
            g, _, o = key.partition(":")
            if (grant is None or g == grant) and (outcome is None or o == outcome):
                total += n
        return total

    # --- bearer validation for protected APIs -----------------------------------------------

    def check_authorization(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a live token this server issued."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        token = value if value else scheme
        if value and scheme != "Bearer":
            return False
        issued = self._access.get(token)
        if issued is None or issued.family.revoked:
            return False
        return self.clock() < issued.expires_at

    # --- token endpoint -----------------------------------------------------------------------

    def handle_token(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one token request (``headers`` with lower-case names)."""
        delay = self.latency
        if self.faults:
            fault = self.faults.popleft()
            reply = self._fault_reply(fault)
            if reply is not None:
                self.counts[f"fault:{fault.kind}"] += 1
                reply.delay += delay
                return reply
            delay += fault.delay
        reply, grant, outcome = self._token_reply(headers, body)
        self.counts[f"{grant}:{outcome}"] += 1
        reply.delay = delay
        return reply

    def _fault_reply(self, fault: Fault) -> Reply | None:
        if fault.kind == "delay":
            return None
        if fault.kind == "drop":
            return Reply(0, drop=True)
        if fault.kind == "html":
            return Reply(200, b"<html><body>Sign in to continue</body></html>", {"content-type": "text/html"})
        if fault.kind == "malformed":
            return Reply(200, b'{"access_token": "abc', {"content-type": "application/json"})
        if fault.kind == "empty":
            return Reply(200, b"", {"content-type": "application/json"})
        if fault.kind == "huge":
            return Reply(200, b'{"pad":"' + b"x" * 3_000_000 + b'"}', {"content-type": "application/json"})
        headers = {"content-type": "text/plain"}
        if fault.retry_after is not None:
            headers["retry-after"] = fault.retry_after
        return Reply(fault.status, b"try again later", headers)

    def _error(self, status: int, code: str, description: str, **headers: str) -> Reply:
        echo = self.quirks.echo_request
        if echo == "html":
            page = f"<html><body><h1>{code}</h1><p>{html.escape(description)}</p><pre>{html.escape(self._echo)}</pre>"
            return Reply(status, (page + "</body></html>").encode(), {"content-type": "text/html", **headers})
        if echo == "text":
            text = f"{code}: {description}; {self._echo}".encode()
            return Reply(status, text, {"content-type": "text/plain", **headers})
        if echo == "json":
            description = f"{description}; received {self._echo}"
        body = orjson.dumps({"error": code, "error_description": description})
        return Reply(status, body, {"content-type": "application/json", **headers})

    def _parse_body(self, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str] | None, list[str]]:
        """The request's parameters, and the names sent more than once."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None, []
            return ({str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None), []
        if self.quirks.json_only:
            return None, []
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return None, []
        names = [k for k, _ in pairs]
        return dict(pairs), sorted({k for k in names if names.count(k) > 1})

    def _client_ok(self, headers: Mapping[str, str], form: Mapping[str, str]) -> bool:
        basic = headers.get("authorization", "")
        mode = self.quirks.client_auth
        in_body = "client_id" in form
        if mode == "none":
            return "client_secret" not in form and not basic
        if basic.startswith("Basic "):
            if in_body or mode == "body":  # Okta: "Cannot supply multiple client credentials"
                return False
            try:
                raw = base64.b64decode(basic[6:], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            cid, _, csec = raw.partition(":")
            if self.quirks.basic_encoding == "form":
                cid, csec = unquote_plus(cid), unquote_plus(csec)
            return cid == self.client_id and csec == self.client_secret
        if mode == "basic":
            return False
        return form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret

    def _token_reply(self, headers: Mapping[str, str], body: bytes) -> tuple[Reply, str, str]:
        q = self.quirks
        self._echo = f"{body.decode('utf-8', 'replace')} authorization={headers.get('authorization', '')}"
        form, repeated = self._parse_body(headers, body)
        if form is None:
            what = "JSON body required" if q.json_only else "unreadable body"
            return self._error(400, "invalid_request", what), "unknown", "invalid_request"
        if repeated and q.reject_repeated_params:
            what = f"parameter sent more than once: {', '.join(repeated)}"
            return self._error(400, "invalid_request", what), "unknown", "repeated_parameter"
        grant = form.get("grant_type", "")
        kind = "password" if grant == q.grant_type_name else grant or "unknown"
        if grant not in (q.grant_type_name, "refresh_token"):
            return self._error(400, "unsupported_grant_type", "grant not supported"), kind, "unsupported_grant_type"
        if not self._client_ok(headers, form):
            return self._error(401, "invalid_client", "client authentication failed"), kind, "invalid_client"
        if q.required_header and headers.get(q.required_header[0].lower()) != q.required_header[1]:
            return (
                self._error(400, "invalid_request", f"missing header {q.required_header[0]}"),
                kind,
                "invalid_request",
            )
        if q.required_body_param and form.get(q.required_body_param[0]) != q.required_body_param[1]:
            return self._error(400, "invalid_request", "missing parameter"), kind, "invalid_request"
        if kind == "password":
            return self._login(form)
        return self._refresh(form)

    def _login(self, form: Mapping[str, str]) -> tuple[Reply, str, str]:
        if self.locked:
            return self._bad_password("account is locked"), "password", "locked"
        if form.get("username") != self.username or form.get("password") != self.password:
            self.failed_logins += 1
            if self.failed_logins >= self.lockout_after:
                self.locked = True
            return self._bad_password("invalid username or password"), "password", "invalid_grant"
        self.failed_logins = 0
        return (
            self._issue(_Family(), with_refresh=self.quirks.issue_refresh_token and not self.quirks.salesforce),
            "password",
            "ok",
        )

    def _bad_password(self, text: str) -> Reply:
        style = self.quirks.bad_password_style
        json_ct = {"content-type": "application/json"}
        if style == "servicenow":
            return self._error(401, "server_error", "access_denied")
        if style == "invalid_request":
            return self._error(400, "invalid_request", "Invalid user credentials")
        if style in ("description_field", "message_field"):
            key = "description" if style == "description_field" else "message"
            return Reply(400, orjson.dumps({"error": "invalid_request", key: f"Bad credentials: {text}"}), json_ct)
        if style == "sentence_in_error":
            return Reply(400, orjson.dumps({"error": "Invalid username or password."}), json_ct)
        if style == "nested_error":
            body = {"error": {"code": "E0000004", "message": "Authentication failed: invalid credentials"}}
            return Reply(400, orjson.dumps(body), json_ct)
        if style == "plain_401":
            return Reply(401, b"Unauthorized", {"content-type": "text/plain"})
        if style == "plain_400":
            return Reply(400, b"Invalid username or password", {"content-type": "text/plain"})
        if style == "success_false":
            return Reply(200, orjson.dumps({"success": False, "message": "Invalid credentials"}), json_ct)
        if style == "html_login":
            page = (
                b"<html><body><form method=post><label>Username</label><input name=username>"
                b"<label>Password</label><input type=password name=password></form></body></html>"
            )
            return Reply(200, page, {"content-type": "text/html"})
        if style == "server_error_500":
            return self._error(500, "server_error", "Invalid user credentials")
        if style == "throttled_429":
            return Reply(429, b"Too many login attempts", {"content-type": "text/plain", "retry-after": "1"})
        return self._error(400, "invalid_grant", text)

    def _refresh(self, form: Mapping[str, str]) -> tuple[Reply, str, str]:
        rt = form.get("refresh_token", "")
        entry = self._refresh_tokens.get(rt)
        if entry is None:
            return self._error(400, "invalid_grant", "unknown refresh token"), "refresh_token", "invalid_grant"
        if self.clock() >= self._refresh_expiry.get(rt, float("inf")):
            return self._error(400, "invalid_grant", "refresh token expired"), "refresh_token", "expired"
        family, used = entry
        if family.revoked:
            return self._error(400, "invalid_grant", "refresh token revoked"), "refresh_token", "invalid_grant"
        if used:
            if self.quirks.reuse_detection:
                family.revoked = True
                return self._error(400, "invalid_grant", "refresh token reuse"), "refresh_token", "reuse"
            return self._error(400, "invalid_grant", "refresh token already used"), "refresh_token", "invalid_grant"
        if self.quirks.rotate_refresh_tokens:
            self._refresh_tokens[rt] = (family, True)
        reply = self._issue(family, with_refresh=self.quirks.rotate_refresh_tokens, reuse_rt=rt)
        return reply, "refresh_token", "ok"

    def _issue(self, family: _Family, *, with_refresh: bool, reuse_rt: str | None = None) -> Reply:
        q = self.quirks
        now = self.clock()
        if len(self._access) > self._prune_at:
            self._access = {k: v for k, v in self._access.items() if v.expires_at > now}  # keeps static tokens
            self._prune_at = max(1024, 2 * len(self._access))
        access = secrets.token_urlsafe(24)
        self._access[access] = _Issued(now + self.token_lifetime, family)
        if q.token_format == "text":
            return Reply(200, access.encode(), {"content-type": "text/plain"})
        if q.token_format == "json_string":
            return Reply(200, orjson.dumps(access), {"content-type": "application/json"})
        data: dict[str, Any] = {"access_token": access}
        if q.token_type is not None:
            data["token_type"] = q.token_type
        if q.salesforce:
            data["issued_at"] = str(int(time.time() * 1000))
            data["instance_url"] = self.instance_url or "https://example.my.salesforce.com"
        elif q.expires_in == "number":
            data["expires_in"] = self.token_lifetime
        elif q.expires_in == "string":
            data["expires_in"] = str(int(self.token_lifetime))
        if with_refresh and not (reuse_rt and q.refresh_omits_refresh_token):
            rt = secrets.token_urlsafe(24)
            self._refresh_tokens[rt] = (family, False)
            data["refresh_token"] = rt
            life = self.refresh_token_lifetime
            if life is not None:
                self._refresh_expiry[rt] = now + life
                if q.refresh_lifetime_field == "refresh_token_expires_at":
                    data[q.refresh_lifetime_field] = int((self.wall() + life) * 1000)  # epoch milliseconds
                else:
                    data[q.refresh_lifetime_field] = life
        elif reuse_rt is not None and not q.refresh_omits_refresh_token:
            data["refresh_token"] = reuse_rt  # ServiceNow repeats the same refresh token
        data.update(q.extra_fields)
        return Reply(200, orjson.dumps(data), {"content-type": "application/json;charset=UTF-8"})
