"""Small shared helpers for the fleet tests (importable by worker subprocesses too)."""

from __future__ import annotations

import time

from oauthpw_async import PasswordGrantConfig
from oauthpw_async._secret import Secret
from oauthpw_async.fleet import Coordinator
from oauthpw_async.grant import Instant, Token
from oauthpw_async.testing import AuthServerState

TOKEN_KEY = "c2VjcmV0LXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmctLS0="  # 32 bytes, URL-safe base64 (tests only)
CREDENTIAL = "0123456789abcdef"


def make_token(n: int = 1, *, lifetime: float = 3600.0, refresh: bool = True) -> Token:
    """A token whose secrets say which one it is (``at-<n>``, ``rt-<n>``)."""
    access = f"at-{n}-{'x' * 24}"
    return Token(
        access_token=Secret(access),
        authorization=f"Bearer {access}",
        token_type="Bearer",
        issued=Instant(time.monotonic(), time.time()),
        lifetime=lifetime,
        lifetime_source="expires_in",
        refresh_token=Secret(f"rt-{n}-{'y' * 24}") if refresh else None,
        scope="read",
        extra={"instance_url": "https://api.example.com"},
    )


def coordinator(url: str, namespace: str, **options: object) -> Coordinator:
    """A coordinator for the test credential under ``namespace``."""
    opts: dict[str, object] = {"credential_key": CREDENTIAL, "token_key": TOKEN_KEY, "namespace": namespace}
    opts.update(options)
    return Coordinator(url, **opts)  # type: ignore[arg-type]


def config_for(state: AuthServerState, *, password: str | None = None) -> PasswordGrantConfig:
    """A connection to ``state``'s account (the URL matters only to the credential key)."""
    return PasswordGrantConfig(
        access_token_url="https://auth.example.com/oauth/token",
        client_id=state.client_id,
        client_secret=state.client_secret,
        username=state.username,
        password=password or state.password,
    )
