"""The public API is what the package re-exports; the sans-IO layers import no HTTP client."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import oauthpw_async

PUBLIC = {
    "FileLocked", "OutputLocked", "StateLocked", "StateMismatch", "StorageError", "SinkError", "StateWriteError",
    "AiohttpTokenEndpoint", "Clock", "ConfigError", "CrawlError", "CredentialsLockedOut", "DefinitiveTokenError",
    "FieldProblem", "LoginResponseError", "FileTokenStore", "ForeignOriginError", "HTTPStatusError", "Instant",
    "InvalidClient",
    "InvalidCredentials", "InvalidRequest", "InvalidScope", "MemoryTokenStore", "OAuthPWError", "PageShapeError",
    "PasswordGrantConfig", "ProviderClosed", "RefreshPolicy", "RefreshTokenRejected", "RetryPolicy", "Retrying",
    "Secret", "SecretExposureError", "StateError", "SystemClock", "Token", "TokenEndpoint", "TokenError",
    "TokenEvent", "TokenProvider", "TokenRedirectError", "TokenRequest", "TokenRequestRejected", "TokenResponse",
    "TokenResponseError", "TokenStats", "TokenStore", "TokenConnectError", "TokenTransportError", "TransientTokenError",
    "UnauthorizedError", "UnsupportedGrantType", "UsageError", "build_password_request", "build_refresh_request",
    "exchange", "load_config", "parse_token_response", "rate_limit_delay",
    "APIResponse", "AuthorizedSession", "SessionStats", "StaticToken", "TokenSource", "load_token_source",
    "StaticTokenConfig", "StaticTokenRejected",
    "CheckResult", "check_connection",
    "LoginBudget", "LoginBudgetExhausted", "StoredToken", "TokenEndpointRateLimited", "TokenRequestsPaused",
    "UnsafeTokenStore",
}  # fmt: skip


CRAWLER = {
    "API_RETRY", "ExportCursor", "SyncStats", "parse_timestamp", "tombstone",
    "CallableSink", "Checkpoints", "CrawlEngine", "CrawlStats", "Crawler", "Cursor", "JsonLinesSink",
    "LinkHeader", "ListSink", "NextUrl", "ODataNextLink", "Offset", "Page", "PageNumber", "PageRequest",
    "Paginator", "Partition", "PartitionStats", "Sink", "StreamSink", "parse_link_header",
}  # fmt: skip


def test_the_public_api_is_pinned() -> None:
    from oauthpw_async import crawler

    assert set(oauthpw_async.__all__) == PUBLIC
    assert set(crawler.__all__) == CRAWLER
    for name in PUBLIC:
        assert getattr(oauthpw_async, name) is not None
    for name in CRAWLER:
        assert getattr(crawler, name) is not None


def test_every_module_declares_all_and_its_names_exist() -> None:
    for info in pkgutil.walk_packages(oauthpw_async.__path__, "oauthpw_async."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.__all__ names a missing {name}"


def test_every_error_is_in_the_hierarchy() -> None:
    errors = [getattr(oauthpw_async, n) for n in PUBLIC if n.endswith(("Error", "Closed", "Rejected", "LockedOut"))]
    errors += [oauthpw_async.InvalidClient, oauthpw_async.InvalidCredentials, oauthpw_async.UnsupportedGrantType]
    for cls in errors:
        assert issubclass(cls, oauthpw_async.OAuthPWError), cls
    assert issubclass(oauthpw_async.ConfigError, ValueError)
    assert issubclass(oauthpw_async.UsageError, ValueError)
    assert issubclass(oauthpw_async.ProviderClosed, RuntimeError)
    assert issubclass(oauthpw_async.StateError, ValueError)
    assert issubclass(oauthpw_async.SecretExposureError, TypeError)


def test_sans_io_layers_do_not_import_aiohttp() -> None:
    code = (
        "import sys\n"
        "import oauthpw_async.grant, oauthpw_async.config, oauthpw_async.retry, oauthpw_async.responses\n"
        "import oauthpw_async\n"
        "oauthpw_async.PasswordGrantConfig\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'\n"
        "oauthpw_async.AiohttpTokenEndpoint\n"
        "assert 'aiohttp' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
