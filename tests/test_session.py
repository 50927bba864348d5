"""AuthorizedSession over real HTTP: header after the slot, renewals, origins, retries, scrubbing, TLS."""

from __future__ import annotations

import collections
import html
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web

from oauthpw_async import (
    AuthorizedSession,
    ConfigError,
    CrawlError,
    ForeignOriginError,
    HTTPStatusError,
    RetryPolicy,
    StaticToken,
    TokenProvider,
    UnauthorizedError,
    UsageError,
)
from oauthpw_async.testing import AuthServerState, FakeClock, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02)
# A token with every character the usual escapes touch, around a plain core to look for.
ODD_TOKEN = "s3cr3tTOKENcore/with+odd&chars<\"'>=="
CORE = "s3cr3tTOKENcore"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp


class Extras:
    """Routes beside the demo API: a JSON echo, redirects, an error page echoing the header."""

    def __init__(self, api: DemoAPI | None = None) -> None:
        self.api = api or DemoAPI()
        self.statuses: collections.deque[int] = collections.deque()  # answers queued for /api/echo
        self.echo_calls = 0

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        self.api(app, auth)

        async def echo(request: web.Request) -> web.Response:
            self.echo_calls += 1
            if not auth.check_authorization(request.headers.get("Authorization")):
                return web.json_response({"error": "invalid_token"}, status=401)
            if self.statuses:
                return web.json_response({"error": "busy"}, status=self.statuses.popleft())
            body = await request.read()
            return web.json_response(
                {
                    "method": request.method,
                    "content_type": request.content_type,
                    "body": body.decode(),
                    "query": dict(request.query),
                    "x_custom": request.headers.get("X-Custom"),
                }
            )

        async def redirect(request: web.Request) -> web.Response:
            status = int(request.query.get("status", "302"))
            return web.Response(status=status, headers={"Location": request.query["to"]})

        async def leak(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            mode = request.query.get("mode", "raw")
            if mode == "json":  # escaped the way PHP and Java encoders do
                escaped = "".join(f"\\u{ord(c):04x}" if c in "<>&'\"" else c for c in header).replace("/", "\\/")
                text = '{"echo": {"Authorization": "' + escaped + '"}}'
            elif mode == "html":
                text = f"<pre>Authorization: {html.escape(header)}</pre>"
            elif mode == "url":
                text = f"sent=Authorization%3A%20{quote(header, safe='')}"
            elif mode == "cut":  # the token where a naive excerpt would cut the body
                text = " " * 1270 + header
            else:
                text = f"you sent Authorization: {header}"
            return web.Response(status=int(request.query.get("status", "400")), text=text)

        app.router.add_route("*", "/api/echo", echo)
        app.router.add_route("*", "/api/redirect", redirect)
        app.router.add_get("/api/leak", leak)


class Landing:
    """A second origin that records what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        async def landing(request: web.Request) -> web.Response:
            self.seen.append(
                {
                    "method": request.method,
                    "authorization": request.headers.get("Authorization"),
                    "cookie": request.headers.get("Cookie"),
                    "body": (await request.read()).decode(),
                }
            )
            return web.json_response({"landed": True})

        app.router.add_route("*", "/landing", landing)


async def many(tasks: int, rounds: int, one: Callable[[], Awaitable[None]]) -> None:
    async def worker() -> None:
        for _ in range(rounds):
            await one()

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)


# --- feels like aiohttp --------------------------------------------------------------------------


async def test_get_with_params_post_with_json_and_form_read_like_aiohttp() -> None:
    extras = Extras()
    async with (
        LocalServer(api=extras) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url, headers={"X-Custom": "on every request"}) as s,
    ):
        r = await s.get("/api/offset/items", params={"project": "beta", "limit": 3})
        data = await r.json()
        assert r.status == 200 and r.ok and [i["project"] for i in data["items"]] == ["beta"] * 3
        assert r.headers["content-type"].startswith("application/json")
        assert "?" in r.url and "Bearer" not in repr(r)

        async with s.post("/api/echo", json={"name": "ticket", "n": 1}) as posted:
            echoed = await posted.json()
        assert echoed["method"] == "POST" and echoed["content_type"] == "application/json"
        assert orjson.loads(echoed["body"]) == {"name": "ticket", "n": 1}
        assert echoed["x_custom"] == "on every request"

        form = await (await s.put("/api/echo", data={"a": "1", "b": "x y"}, headers={"X-Custom": "mine"})).json()
        assert form["method"] == "PUT" and form["content_type"] == "application/x-www-form-urlencoded"
        assert form["body"] == "a=1&b=x+y" and form["x_custom"] == "mine"

        text = await (await s.delete("/api/echo", data=b"raw bytes")).text()
        assert '"method": "DELETE"' in text and "raw bytes" in text
        assert await (await s.head("/api/ping")).read() == b""
    assert s.stats.unauthorized == 0 and s.stats.retries == 0


async def test_misuse_is_refused_with_what_to_do() -> None:
    tokens = StaticToken("abcdefgh")
    with pytest.raises(UsageError, match="base_url"):
        AuthorizedSession(tokens)
    with pytest.raises(UsageError, match="sets Authorization itself"):
        AuthorizedSession(tokens, base_url="http://127.0.0.1:1", headers={"authorization": "x"})
    async with AuthorizedSession(tokens, base_url="http://127.0.0.1:1") as s:
        with pytest.raises(UsageError, match="cannot be sent again"):
            await s.post("/x", data=iter([b"once"]))  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="json= or data="):
            await s.post("/x", json={}, data=b"")
    with pytest.raises(UsageError, match="closed"):
        await s.get("/x")


# --- the header is taken once the request can be sent --------------------------------------------


async def test_thousand_tasks_on_a_hundred_connections_never_send_an_expired_token() -> None:
    # Time is the server's work: each API request served moves the shared clock 0.5 ms, so a
    # request that waits behind 900 others for a connection waits 0.45 s of token lifetime,
    # whatever the machine's speed. 1-second tokens, 4 rounds of 1,000 tasks: several renewals.
    clock = FakeClock()
    api = DemoAPI()
    api.on_request = lambda n: clock.advance(0.0005)
    state = AuthServerState(token_lifetime=1.0, clock=clock.monotonic)
    async with LocalServer(state, api=api) as server:
        url = f"{server.base_url}/api/ping"

        # The obvious way first, on the same server: header taken, then a wait for the pool.
        async with (
            TokenProvider(server.config(), clock=clock) as tokens,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as plain,
        ):

            async def naive() -> None:
                header = await tokens.authorization()
                async with plain.get(url, headers={"Authorization": header}) as r:
                    await r.read()

            await many(1000, 4, naive)
        naive_401 = api.counts["ping:401"]
        assert naive_401 > 0  # the scenario does expose the hazard

        api.counts.clear()
        statuses: collections.Counter[int] = collections.Counter()
        start = clock.now
        async with (
            TokenProvider(server.config(), clock=clock) as tokens,
            AuthorizedSession(tokens, base_url=server.base_url, limit=100) as s,
        ):

            async def with_session() -> None:
                statuses[(await s.get("/api/ping")).status] += 1

            await many(1000, 4, with_session)
        assert statuses == {200: 4000}
        assert api.counts["ping:401"] == 0 and s.stats.unauthorized == 0 and s.stats.requests == 4000
        assert clock.now - start >= 1.9  # the run spanned several token lifetimes
        assert 2 <= tokens.stats.token_requests <= 1 + (clock.now - start) / 0.65 + 1


async def test_a_slot_is_a_connection_and_requests_are_served_in_turn() -> None:
    api = DemoAPI(latency=0.002)
    async with LocalServer(api=api) as server, TokenProvider(server.config()) as tokens:
        async with AuthorizedSession(tokens, base_url=server.base_url, limit=5) as s:

            async def one() -> None:
                await s.get("/api/offset/items", params={"limit": 1})

            await many(60, 1, one)
        assert api.max_inflight == 5

        # One slot, ten tasks each sending six requests in a row: a task that is done does not
        # get straight back in ahead of those waiting (no fast path that keeps the pool).
        order: list[int] = []
        async with AuthorizedSession(tokens, base_url=server.base_url, limit=1) as s:

            async def six(i: int) -> None:
                for _ in range(6):
                    await s.get("/api/offset/items", params={"limit": 1})
                    order.append(i)

            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(six, i)
    assert order == list(range(10)) * 6


# --- 401: one renewal per refused token ---------------------------------------------------------


async def test_tokens_revoked_mid_run_cost_one_refresh() -> None:
    api = DemoAPI()
    state = AuthServerState()
    revoked: list[int] = []
    api.on_request = lambda n: revoked.append(state.revoke_access_tokens()) if n >= 300 and not revoked else None
    ok = 0
    async with (
        LocalServer(state, api=api) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url) as s,
    ):

        async def one() -> None:
            nonlocal ok
            status = (await s.get("/api/ping")).status
            ok += status == 200

        await many(1000, 2, one)
    assert revoked == [1] and ok == 2000
    assert s.stats.unauthorized >= 1 and tokens.stats.invalidations == 1
    assert state.count("refresh_token", "ok") == 1 and state.count("password") == 1


async def test_a_newer_token_refused_again_gets_its_own_renewal() -> None:
    api = DemoAPI()
    api.inject(ApiFault("revoke"), ApiFault("status", status=500), ApiFault("revoke"))
    async with (
        LocalServer(api=api) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url, retry=FAST_RETRY) as s,
    ):
        assert (await s.get("/api/ping")).status == 200
    assert s.stats.unauthorized == 2 and tokens.stats.invalidations == 2 and s.stats.retries == 1


async def test_an_account_that_lost_access_fails_after_a_bounded_number_of_requests() -> None:
    api = DemoAPI()
    api.deny_all = True
    errors: list[BaseException] = []
    async with (
        LocalServer(api=api) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url, limit=20) as s,
    ):

        async def one() -> None:
            try:
                await s.get("/api/ping")
            except UnauthorizedError as exc:
                errors.append(exc)

        await many(200, 1, one)
        assert len(errors) == 200 and "lost access" in str(errors[0])
        assert api.counts["ping:401"] <= 200 + 3 * 20  # one each, plus a pool per renewal
        assert tokens.stats.invalidations <= 3
        with pytest.raises(UnauthorizedError):  # a single request: bounded renewals too
            await s.get("/api/ping")


# --- origins ------------------------------------------------------------------------------------


async def test_the_token_never_follows_a_redirect_to_another_origin() -> None:
    landing = Landing()
    extras = Extras()
    async with (
        LocalServer(api=extras) as server,
        LocalServer(api=landing) as other,
        TokenProvider(server.config()) as tokens,
    ):
        away = f"{other.base_url}/landing"
        async with AuthorizedSession(tokens, base_url=server.base_url) as s:
            with pytest.raises(ForeignOriginError, match=r"127\.0\.0\.1:\d+.*allowed_origins") as info:
                await s.get("/api/redirect", params={"to": away})
            assert info.value.origin == f"http://127.0.0.1:{other.port}"
            with pytest.raises(ForeignOriginError):  # nor a first hop there
                await s.get(away)
        assert landing.seen == []

        async with AuthorizedSession(
            tokens, base_url=server.base_url, foreign_origins="follow_without_token", headers={"Cookie": "sid=1"}
        ) as s:
            r = await s.post("/api/redirect", params={"to": away, "status": "307"}, json={"keep": "me"})
            assert await r.json() == {"landed": True} and r.url == away
        assert landing.seen == [{"method": "POST", "authorization": None, "cookie": None, "body": '{"keep":"me"}'}]

        async with AuthorizedSession(tokens, base_url=server.base_url, allowed_origins=[other.base_url]) as s:
            r = await s.post("/api/redirect", params={"to": away, "status": "303"}, json={"dropped": 1})
            assert r.method == "GET" and r.status == 200
        assert landing.seen[1]["method"] == "GET" and landing.seen[1]["body"] == ""
        assert landing.seen[1]["authorization"] == (await tokens.get()).authorization


# --- retries --------------------------------------------------------------------------------------


async def test_transient_failures_are_retried_for_idempotent_methods_only() -> None:
    extras = Extras()
    api = extras.api
    api.inject(ApiFault("status", status=502), ApiFault("drop"), ApiFault("status", status=429, retry_after="0"))
    async with (
        LocalServer(api=extras) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url, retry=FAST_RETRY) as s,
    ):
        assert (await s.get("/api/ping")).status == 200
        assert s.stats.retries == 2 and api.counts["fault:drop"] == 1
        assert (await s.get("/api/ping")).status == 200
        assert s.stats.rate_limit_pauses == 1

        extras.statuses.extend([503])
        with pytest.raises(HTTPStatusError, match=r"not retried: POST.*idempotent=True.*HTTP 503") as info:
            await s.post("/api/echo", json={})
        assert info.value.status == 503 and extras.echo_calls == 1

        extras.statuses.extend([503, 500])
        r = await s.post("/api/echo", json={"n": 1}, idempotent=True)
        assert r.status == 200 and extras.echo_calls == 4

        extras.statuses.extend([503] * 4)
        with pytest.raises(HTTPStatusError, match="gave up after 4 attempts"):
            await s.put("/api/echo", json={})
        extras.statuses.extend([404])
        r = await s.get("/api/echo", raise_for_status=False)
        assert r.status == 404 and not r.ok
        with pytest.raises(HTTPStatusError, match="HTTP 404"):
            r.raise_for_status()


async def test_no_answer_at_all_is_retried_then_reported() -> None:
    async with AuthorizedSession(StaticToken("abcdefgh"), base_url="http://127.0.0.1:9", retry=FAST_RETRY) as s:
        with pytest.raises(HTTPStatusError, match=r"GET got no answer \(\w+\); gave up after 4 attempts") as info:
            await s.get("/nothing-listens-here")
        assert info.value.status == 0 and s.stats.requests == 4
        with pytest.raises(HTTPStatusError, match=r"POST got no answer.*not retried"):
            await s.post("/nothing-listens-here", data=b"x")
        assert s.stats.requests == 5


# --- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["raw", "json", "html", "url", "cut"])
async def test_an_error_page_echoing_the_header_never_puts_the_token_in_the_error(mode: str) -> None:
    async with (
        LocalServer(api=Extras()) as server,
        AuthorizedSession(StaticToken(ODD_TOKEN), base_url=server.base_url) as s,
    ):
        with pytest.raises(HTTPStatusError) as info:
            await s.get("/api/leak", params={"mode": mode})
        r = await s.get("/api/leak", params={"mode": mode}, raise_for_status=False)
        assert CORE in r.body.decode()  # the body is the caller's; the error message is not
        with pytest.raises(HTTPStatusError) as again:
            r.raise_for_status()
    for exc in (info.value, again.value):
        assert exc.status == 400
        for text in (str(exc), repr(exc), exc.excerpt, exc.url):
            assert CORE not in text and "3cr3t" not in text
    assert "***" in info.value.excerpt or mode == "cut"


async def test_a_401_page_echoing_the_token_is_scrubbed_from_unauthorized_error() -> None:
    async with (
        LocalServer(api=Extras()) as server,
        TokenProvider(server.config()) as tokens,
        AuthorizedSession(tokens, base_url=server.base_url) as s,
    ):
        with pytest.raises(UnauthorizedError, match="lost access") as info:
            await s.get("/api/leak", params={"status": "401"})
        last = (await tokens.get()).access_token.reveal()  # the one the last page echoed
    assert tokens.stats.invalidations == 2  # three tokens refused: two renewals, then the error
    assert "you sent Authorization: ***" in info.value.excerpt and last not in str(info.value)


# --- TLS ---------------------------------------------------------------------------------------------


async def test_the_connections_tls_settings_apply_to_api_requests() -> None:
    token = "tls-static-token"

    async def ping(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {token}"
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/api/ping", ping)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(DATA / "tls-cert.pem", DATA / "tls-key.pem")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with AuthorizedSession(StaticToken(token), base_url=base) as s:
            with pytest.raises(CrawlError, match=r"TLS certificate of https://127\.0\.0\.1.*verify_tls and ca_bundle"):
                await s.get("/api/ping")
        for source in (
            StaticToken(token, ca_bundle=str(DATA / "tls-cert.pem")),
            StaticToken(token, verify_tls=False),
        ):
            async with AuthorizedSession(source, base_url=base) as s:
                assert await (await s.get("/api/ping")).json() == {"ok": True}
        with pytest.raises(ConfigError, match="ca_bundle"):
            AuthorizedSession(StaticToken(token, ca_bundle=str(DATA / "missing.pem")), base_url=base)
    finally:
        await runner.cleanup()
