"""What an API answer means for the request that got it: pure, no I/O, no clock of its own.

The crawler and the authorized session act on the same verdicts, so one answer is handled the
same way everywhere:

* ``ok``: 2xx, use the body.
* ``renew``: 401, the token was refused; renew it (once per rejected token) and retry.
* ``redirect``: 301/302/303/307/308 with a ``Location``; follow it, checking the origin first.
* ``pause``: 429, 503, or a 403 that says the rate limit is spent; every request to that host
  waits (``wait`` from the server's headers when it gave one).
* ``retry``: no answer (status 0), 408 or another 5xx; back off and retry.
* ``fail``: any other status; retrying cannot help.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from ._httputil import rate_limit_delay

__all__ = ["Action", "Verdict", "classify_api_response"]

Action = Literal["ok", "renew", "redirect", "pause", "retry", "fail"]

#: Redirect statuses followed by hand (RFC 9110 §15.4); 300 and 304 are not followed.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@attrs.frozen
class Verdict:
    """The action for one answer and, for ``pause``/``retry``, the wait the server asked for."""

    action: Action
    #: Seconds the server asked to wait (``Retry-After`` or a rate-limit reset header), if any.
    wait: float | None = None


_OK = Verdict("ok")
_RENEW = Verdict("renew")
_REDIRECT = Verdict("redirect")
_RETRY = Verdict("retry")
_FAIL = Verdict("fail")


def _rate_limit_spent(headers: Mapping[str, str]) -> bool:
    for name in ("X-RateLimit-Remaining", "X-Rate-Limit-Remaining", "RateLimit-Remaining"):
        value = headers.get(name) or headers.get(name.lower())
        if value is not None and value.strip() == "0":
            return True
    return False


def classify_api_response(status: int, headers: Mapping[str, str], now_wall: float) -> Verdict:
    """The :class:`Verdict` for an API answer with ``status`` (0: no answer) and ``headers``.

    ``now_wall`` is epoch seconds, for ``Retry-After`` dates and reset times.
    """
    if 200 <= status < 300:
        return _OK
    if status == 401:
        return _RENEW
    if status in REDIRECT_STATUSES:
        return _REDIRECT if (headers.get("Location") or headers.get("location")) else _FAIL
    if status in (429, 503) or (status == 403 and _rate_limit_spent(headers)):
        return Verdict("pause", rate_limit_delay(headers, now_wall))
    if status == 0 or status == 408 or status >= 500:
        wait = rate_limit_delay(headers, now_wall) if status else None
        return _RETRY if wait is None else Verdict("retry", wait)
    return _FAIL
