"""HTTP helpers without I/O: printable URLs, origins, rate-limit headers.

Shared by the sans-IO grant, the token transport, the authorized session and the crawler,
so each rule (what a URL prints as, how long a server asked us to wait) lives in one place.
Scrubbing secrets out of text lives in :mod:`oauthpw_async.redact` (re-exported here).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from .redact import MASK, excerpt, holds_secret, scrub

__all__ = [
    "MASK",
    "excerpt",
    "holds_secret",
    "origin",
    "parse_retry_after",
    "rate_limit_delay",
    "safe_url",
    "scrub",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        if p.port:
            host = f"{host}:{p.port}"
        return urlunsplit((p.scheme, host, p.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def origin(url: str) -> str:
    """The RFC 6454 origin of ``url`` as ``scheme://host:port`` (default port made explicit).

    Two URLs may share a token only when their origins are equal. An unparsable URL has the
    origin ``"null"``, which equals no configured origin.
    """
    try:
        p = urlsplit(url)
        scheme = p.scheme.lower()
        host = (p.hostname or "").lower()
        port = p.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "null"
    if not scheme or not host or port is None:
        return "null"
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# --- rate-limit signals ----------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive; plain dicts here hold lower-cased names.
    return headers.get(name) or headers.get(name.lower())


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when.timestamp() - now_wall
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _reset_at(value: str, now_wall: float) -> float | None:
    try:
        reset = float(value)
    except ValueError:
        try:
            reset = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    if not math.isfinite(reset):
        return None
    # Epoch milliseconds: no epoch in seconds is that large before the year 5000.
    return max(0.0, (reset / 1000 if reset > 1e11 else reset) - now_wall)


def rate_limit_delay(headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds the server asked us to wait, from its headers; ``None`` when none is usable.

    Reads, in order: ``Retry-After`` (seconds or HTTP-date), ``X-RateLimit-Reset`` and
    ``X-Rate-Limit-Reset`` (epoch seconds or milliseconds, or ISO 8601) and ``RateLimit-Reset``
    (delta seconds, IETF draft). One parser for token endpoints and APIs alike.
    """
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now_wall)
    if retry_after is not None:
        return retry_after
    for name in ("X-RateLimit-Reset", "X-Rate-Limit-Reset"):
        value = _header(headers, name)
        if value:
            delay = _reset_at(value, now_wall)
            if delay is not None:
                return delay
    value = _header(headers, "RateLimit-Reset")
    if value:
        try:
            delta = float(value)
        except ValueError:
            return None
        return max(0.0, delta) if math.isfinite(delta) else None
    return None
