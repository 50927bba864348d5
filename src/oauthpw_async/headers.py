"""Request header rules, in one place: what a header may hold, and what may follow a foreign hop.

Every source of request headers (the connection's Headers field, ``Crawler.headers``,
``Partition(headers=)``, ``AuthorizedSession(headers=)`` and per-request headers) is checked
here with the rules of RFC 9110 §5.1 and §5.5, at the earliest point it is known:

* a field name is a ``token`` (letters, digits and ``!#$%&'*+-.^_`|~``);
* a field value is visible ASCII, spaces and tabs, and bytes >= 0x80 (``obs-text``): no
  control character (NUL, CR, LF, VT, ESC, DEL, ...), which could split a request or be read
  differently by the server and a proxy. Leading and trailing spaces are trimmed, as a
  recipient would.

A problem names the header and what is wrong, never the value (it may be a secret).

On a redirect hop to an origin the token may not go to, only the headers in
:data:`FORWARDABLE_HEADERS` go along: content negotiation, caching validators and the body's
own description. Every other header (``Authorization``, ``Cookie``, ``Proxy-Authorization``,
``X-Api-Key``, and every header a user or a connection set) stays behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import UsageError

__all__ = [
    "CREDENTIAL_HEADERS",
    "FORWARDABLE_HEADERS",
    "checked_headers",
    "foreign_hop_headers",
    "header_problem",
]

#: Headers that carry credentials by definition; never sent on a foreign hop.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

#: The only request headers that follow a redirect to a foreign origin (lower case).
FORWARDABLE_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-language",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "pragma",
        "range",
        "user-agent",
    }
)

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Anything but HTAB, SP, VCHAR and obs-text (RFC 9110 §5.5 field-vchar).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_problem(name: object, value: object) -> str | None:
    """What is wrong with one header, or ``None``; the text names the header, never its value."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 64 and name.isprintable() else "a header"
        return f"{shown!r} is not a valid header name (RFC 9110: letters, digits and !#$%&'*+-.^_`|~)"
    if not isinstance(value, str):
        return f"the value of {name} must be a string, not {type(value).__name__}"
    if (bad := _BAD_VALUE.search(value)) is not None:
        return (
            f"the value of {name} contains a control character (0x{ord(bad.group()):02X}); "
            "header values may hold visible characters, spaces and tabs only"
        )
    return None


def checked_headers(headers: Mapping[str, str] | None, *, where: str) -> dict[str, str]:
    """``headers`` as a plain dict with trimmed values, or :class:`UsageError` naming the bad one.

    ``where`` says where the headers came from (``"Crawler.headers"``, ``"request headers"``).
    """
    out: dict[str, str] = {}
    if not headers:
        return out
    if not isinstance(headers, Mapping):
        raise UsageError(f"{where} must be a mapping of header names to values, not {type(headers).__name__}")
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise UsageError(f"{where}: {problem}")
        out[name] = value.strip(" \t")
    return out


def foreign_hop_headers(headers: Mapping[str, str], extra_sensitive: Iterable[str] = ()) -> dict[str, str]:
    """The headers that may go to an origin the token must not reach (see :data:`FORWARDABLE_HEADERS`)."""
    blocked = {h.lower() for h in extra_sensitive}
    return {k: v for k, v in headers.items() if k.lower() in FORWARDABLE_HEADERS and k.lower() not in blocked}
