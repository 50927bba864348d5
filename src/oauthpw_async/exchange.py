"""One token request, sent and parsed, with transient failures retried under a :class:`RetryPolicy`.

anyio-only and talking to any :class:`~oauthpw_async.transport.TokenEndpoint`, so it runs on
asyncio and trio alike. Definitive answers (a rejected password, client or grant) are never
retried: each costs exactly one request.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .errors import TokenEndpointRateLimited, TransientTokenError
from .grant import Instant, Token, TokenRequest, TokenResponse
from .retry import DEFAULT_RETRY, RetryPolicy

if TYPE_CHECKING:
    from .transport import TokenEndpoint

__all__ = ["TOKEN_RETRY", "exchange"]

log = logging.getLogger("oauthpw_async.exchange")

TOKEN_RETRY = DEFAULT_RETRY
"""The default retries of one token request (:data:`~oauthpw_async.retry.DEFAULT_RETRY`)."""


async def exchange(
    endpoint: TokenEndpoint,
    request: TokenRequest,
    parse: Callable[[TokenResponse, Instant], Token],
    *,
    policy: RetryPolicy = TOKEN_RETRY,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    on_send: Callable[[TokenRequest, int], None] | None = None,
    resend_unanswered: bool = True,
) -> Token:
    """Send ``request`` and parse the answer, retrying transient failures per ``policy``.

    With ``resend_unanswered=False`` a request that failed after the server may have acted on it
    (no answer, a 500, 502 or 504: :attr:`TransientTokenError.may_have_been_processed`) is not
    sent again: the caller passes it for a refresh token that may be single-use (rotation), since
    the server may have used it up already and would take the second use for token theft (RFC 6819
    5.2.2.3, OAuth 2.0 Security BCP 4.14). 408, 429, 503 and failures to connect are retried.

    ``on_send`` is called before each send (attempt number from 0); an exception it raises
    propagates and the request is not sent. Waits between attempts are never shorter than
    the server asked for (``Retry-After`` or a rate-limit reset header).

    Raises:
        TokenEndpointRateLimited: the server asked to wait longer than ``policy.max_wait``;
            it names when requests are accepted again.
        TokenError: the parsed error of the last answer (definitive at once, transient once
            the policy gives up: attempts or deadline).
    """
    retrying = None
    attempt = 0
    while True:
        sent = Instant(clock.monotonic(), clock.wall())
        if on_send is not None:
            on_send(request, attempt)
        try:
            return parse(await endpoint.send(request), sent)
        except TransientTokenError as exc:
            if not resend_unanswered and exc.may_have_been_processed:
                log.warning("token request (%s) may have been processed and is not sent again: %s", request.grant, exc)
                raise
            now = clock.monotonic()
            if retrying is None:
                retrying = policy.start(sent.monotonic, rng)
            delay = retrying.next_delay(now, exc.retry_after)
            if delay is None:
                log.warning("token request (%s) failed, not retried: %s; %s", request.grant, retrying.stop_reason, exc)
                if exc.retry_after is not None and exc.retry_after > policy.max_wait:
                    raise _rate_limited(exc, sent.wall, policy) from None
                raise
            attempt += 1
            log.warning("token request (%s) failed, retry %d in %.2fs: %s", request.grant, attempt, delay, exc)
            await clock.sleep(delay)


def _rate_limited(exc: TransientTokenError, sent_wall: float, policy: RetryPolicy) -> TokenEndpointRateLimited:
    hint = exc.retry_after or 0.0
    return TokenEndpointRateLimited(
        f"{exc.detail}; the server asked to wait {hint:.0f}s, longer than max_wait ({policy.max_wait:g}s)",
        retry_at=sent_wall + hint,
        retry_after=hint,
        status=exc.status,
        error_code=exc.error_code,
        grant=exc.grant,
    )
