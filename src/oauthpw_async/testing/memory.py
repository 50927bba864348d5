"""An in-memory token endpoint backed by :class:`AuthServerState`: no sockets, any anyio backend."""

from __future__ import annotations

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TokenTransportError
from ..grant import TokenRequest, TokenResponse
from .authserver import AuthServerState

__all__ = ["InMemoryEndpoint"]


class InMemoryEndpoint:
    """Implements :class:`oauthpw_async.transport.TokenEndpoint` by calling the server state directly.

    Latency and injected delays are slept on ``clock``, so a :class:`FakeClock` controls them.
    """

    def __init__(self, state: AuthServerState, clock: Clock = SYSTEM_CLOCK) -> None:
        self.state = state
        self.clock = clock
        self.sent: list[TokenRequest] = []

    async def send(self, request: TokenRequest) -> TokenResponse:
        """Answer ``request`` from the state after its configured delay."""
        self.sent.append(request)
        headers = {k.lower(): v for k, v in request.headers}
        reply = self.state.handle_token(headers, request.body)
        if reply.delay:
            await self.clock.sleep(reply.delay)
        if reply.drop:
            raise TokenTransportError(f"token request to {request.url} failed (dropped)", grant=request.grant)
        return TokenResponse(status=reply.status, headers=reply.headers, body=reply.body)
