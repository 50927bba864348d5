"""A refresh that got no answer is never sent again to a server that may rotate refresh tokens.

The server may have processed it (and rotated the refresh token) before the answer was lost: a
second use of that refresh token looks like theft to servers with reuse detection (Okta, Auth0),
which then revoke the whole token family. The provider logs in with the password instead, unless
the server has shown that its refresh tokens are reusable. A refresh that never reached the server
(connection refused) is retried as before. Real HTTP against the local server.
"""

from __future__ import annotations

import socket

import pytest

from oauthpw_async import TokenConnectError, TokenProvider, TokenTransportError
from oauthpw_async.testing import AuthServerState, Fault, LocalServer, Quirks

pytestmark = pytest.mark.anyio

#: Seconds the client waits for a token answer; the delayed answer comes well after it.
TIMEOUT = 0.3
LATE = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the local server runs on aiohttp in this process


def refreshes(state: AuthServerState) -> int:
    """Refresh requests the server received (answered in time or not)."""
    return state.count(grant="refresh_token")


async def test_a_rotating_refresh_that_timed_out_is_not_sent_again_and_a_login_follows() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    async with LocalServer(state) as server, TokenProvider(server.config(timeout=TIMEOUT)) as tokens:
        first = await tokens.get()
        state.inject(Fault("delay", delay=LATE))  # processed (rotated) at once, answered too late
        tokens.invalidate(first)
        second = await tokens.get()
        assert second.access_token.reveal() != first.access_token.reveal()
        assert refreshes(state) == 1  # sent once, never again
        assert state.count("password", "ok") == 2  # the login that replaced it
        assert state.count(outcome="reuse") == state.count(outcome="invalid_grant") == 0
        assert tokens.stats.refresh_unconfirmed == 1
        # The new login's refresh token works: the family was never revoked.
        tokens.invalidate(second)
        await tokens.get()
        assert state.count("refresh_token", "ok") == 2 and state.count(outcome="reuse") == 0


async def test_a_refresh_token_shown_to_be_reusable_is_sent_again_after_a_timeout() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=False))
    async with LocalServer(state) as server, TokenProvider(server.config(timeout=TIMEOUT)) as tokens:
        tokens.invalidate(await tokens.get())
        token = await tokens.get()  # one refresh answered with the same refresh token: not rotating
        assert tokens.refresh_reusable
        state.inject(Fault("delay", delay=LATE))
        tokens.invalidate(token)
        await tokens.get()
    assert state.count("password") == 1  # no login: the refresh was simply sent again
    assert refreshes(state) == 3 and tokens.stats.refresh_unconfirmed == 0


async def test_until_a_refresh_was_answered_the_provider_assumes_rotation() -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=False))
    async with LocalServer(state) as server, TokenProvider(server.config(timeout=TIMEOUT)) as tokens:
        assert not tokens.refresh_reusable
        state.inject(Fault("delay", delay=LATE))
        tokens.invalidate(await tokens.get())
        await tokens.get()
    assert refreshes(state) == 1 and state.count("password") == 2


async def test_a_refresh_that_could_not_connect_keeps_its_refresh_token() -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused, nothing sent
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/token"
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    async with LocalServer(state) as server:
        config = server.config(timeout=TIMEOUT, refresh_token_url=closed)
        async with TokenProvider(config) as tokens:
            tokens.invalidate(await tokens.get())
            with pytest.raises(TokenConnectError) as caught:
                await tokens.get()
    assert isinstance(caught.value, TokenTransportError) and not caught.value.may_have_been_processed
    assert tokens.stats.refresh_unconfirmed == 0
    assert state.count("password") == 1  # the refresh token was kept: no login replaced it


@pytest.mark.parametrize(
    ("fault", "resent"),
    [
        (Fault("status", status=502), False),  # a gateway: the server behind it may have acted
        (Fault("status", status=504), False),
        (Fault("status", status=500), False),
        (Fault("malformed"), False),  # a 200 that is no token: it may have been used
        (Fault("status", status=503), True),  # 503, 429, 408: not acted on, sent again
        (Fault("status", status=429, retry_after="0"), True),
        (Fault("status", status=408), True),
    ],
    ids=["502", "504", "500", "malformed-200", "503", "429", "408"],
)
async def test_only_answers_that_say_the_refresh_was_not_used_let_it_be_sent_again(fault: Fault, resent: bool) -> None:
    state = AuthServerState(quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    async with LocalServer(state) as server, TokenProvider(server.config()) as tokens:
        first = await tokens.get()
        state.inject(fault)  # on the refresh that follows
        tokens.invalidate(first)
        await tokens.get()
    if resent:  # the retry was a refresh, answered: no login
        assert state.count("refresh_token", "ok") == 1 and state.count("password") == 1
    else:  # never sent again: a login instead (the fault answered the one refresh sent)
        assert state.count("refresh_token") == 0 and state.count("password") == 2
        assert tokens.stats.refresh_unconfirmed == 1
    assert state.count(outcome="reuse") == 0


@pytest.mark.parametrize(
    ("status", "code", "maybe"),
    [
        (500, None, True),
        (502, None, True),
        (504, None, True),
        (503, None, False),
        (429, None, False),
        (408, None, False),
        (500, "temporarily_unavailable", False),  # RFC 6749: the server says it did not act
        (400, "slow_down", False),
    ],
)
def test_which_failures_may_have_been_processed(status: int, code: str | None, maybe: bool) -> None:
    from oauthpw_async import TransientTokenError

    assert TransientTokenError("x", status=status, error_code=code).may_have_been_processed is maybe
