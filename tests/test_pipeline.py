"""The one request pipeline, over real HTTP: nothing credential-like follows a hop to a foreign origin.

Three servers on 127.0.0.1 and 127.0.0.2: the API, another port on the API's host, and another
host. Every server records the headers of every request it gets. Hypothesis draws redirect chains
across them (every redirect status, every method, crawler and session, both foreign-origin
modes) and checks each request that arrived.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import AuthorizedSession, ForeignOriginError, StaticToken, UsageError
from oauthpw_async.crawler import Crawler, ListSink, Partition
from oauthpw_async.errors import CrawlError
from oauthpw_async.headers import CREDENTIAL_HEADERS, FORWARDABLE_HEADERS

TOKEN = "tok-3f9a2c7e1b5d4a8f"
API_COOKIE = "sid=api-session-77c1"
USER_HEADERS = {
    "X-Api-Key": "key-5be0c1d2e3f4",
    "X-Tenant-Secret": "tenant-9a8b7c",
    "X-Custom": "custom-value-1234",
    "Cookie": "explicit=cookie-4d4d",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
    "Accept-Language": "de-CH",
}
SECRET_VALUES = [TOKEN, "api-session-77c1", *(v for k, v in USER_HEADERS.items() if k != "Accept-Language")]


class Hop:
    """One server: records every request, redirects along the chain in its query, or serves records."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, str]] = []
        self.base = ""
        self.peers: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        chain = [c for c in request.query.get("chain", "").split(",") if c]
        if not chain:
            return web.json_response({"data": [{"id": self.name}]})
        target, status = chain[0].split(":")
        rest = ",".join(chain[1:])
        resp = web.Response(status=int(status), headers={"Location": f"{self.peers[target]}/hop?chain={rest}"})
        if self.name == "api":
            resp.headers["Set-Cookie"] = f"{API_COOKIE}; Path=/"
        return resp


@asynccontextmanager
async def three_servers(ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[dict[str, Hop]]:
    hops = {"api": Hop("api"), "port": Hop("port"), "host": Hop("host")}
    runners = []
    try:
        for name, host in (("api", "127.0.0.1"), ("port", "127.0.0.1"), ("host", "127.0.0.2")):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", hops[name].handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            tls = ssl_ctx if name == "api" else None
            await web.TCPSite(runner, host, 0, ssl_context=tls).start()
            scheme = "https" if tls else "http"
            hops[name].base = f"{scheme}://{host}:{runner.addresses[0][1]}"
        for hop in hops.values():
            hop.peers = {name: h.base for name, h in hops.items()}
        yield hops
    finally:
        for runner in runners:
            await runner.cleanup()


def check_foreign_requests(hops: dict[str, Hop]) -> None:
    """No request to a foreign server carried anything credential-like."""
    for name in ("port", "host"):
        for headers in hops[name].seen:
            assert not CREDENTIAL_HEADERS & headers.keys(), (name, sorted(headers))
            for key in headers:
                assert key in FORWARDABLE_HEADERS or key in ("host", "content-length", "connection"), (name, key)
            text = repr(headers)
            for secret in SECRET_VALUES:
                assert secret not in text, (name, secret)


def check_api_requests(hops: dict[str, Hop]) -> None:
    for headers in hops["api"].seen:
        assert headers.get("authorization") == f"Bearer {TOKEN}"


class Chain(Crawler):
    path = "/hop"
    records_path = "data"
    pagination = "next_url"
    headers = USER_HEADERS

    def __init__(self, chain: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.chain = chain

    def partitions(self) -> list[Partition]:
        return [Partition("p", {"chain": self.chain})]


class FollowChain(Chain):
    foreign_origins = "follow_without_token"


chains = st.lists(
    st.tuples(st.sampled_from(["api", "port", "host"]), st.sampled_from([301, 302, 303, 307, 308])),
    min_size=1,
    max_size=4,
)


async def run_chain(
    hops_chain: list[tuple[str, int]], *, who: str, mode: str, method: str, jar: bool
) -> tuple[dict[str, Hop], Any]:
    chain = ",".join(f"{t}:{s}" for t, s in hops_chain)
    async with three_servers() as hops, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=jar)) as http:
        base = hops["api"].base
        result: Any
        try:
            if who == "crawler":
                crawler = (Chain if mode == "fail" else FollowChain)(chain, base_url=base)
                sink = ListSink()
                await crawler.crawl(StaticToken(TOKEN), sink, session=http)
                result = sink.records
            else:
                async with AuthorizedSession(
                    StaticToken(TOKEN), base_url=base, foreign_origins=mode, headers=USER_HEADERS, session=http
                ) as api:  # type: ignore[arg-type]
                    kwargs: dict[str, Any] = {"json": {"a": 1}} if method != "GET" else {}
                    r = await api.request(method, f"/hop?chain={chain}", idempotent=True, **kwargs)
                    result = await r.json()
        except ForeignOriginError as exc:
            result = exc
        return hops, result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=chains,
    who=st.sampled_from(["crawler", "session"]),
    mode=st.sampled_from(["fail", "follow_without_token"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    jar=st.booleans(),
)
def test_nothing_credential_like_follows_any_redirect_chain_to_a_foreign_origin(
    chain: list[tuple[str, int]], who: str, mode: str, method: str, jar: bool
) -> None:
    hops, result = asyncio.run(run_chain(chain, who=who, mode=mode, method=method, jar=jar))
    check_foreign_requests(hops)
    check_api_requests(hops)
    goes_foreign = any(target != "api" for target, _ in chain)
    if mode == "fail" and goes_foreign:
        assert isinstance(result, ForeignOriginError)
        assert hops["port"].seen == [] and hops["host"].seen == []
    else:
        assert not isinstance(result, BaseException), result
        last = chain[-1][0]
        records = result if who == "crawler" else result["data"]
        assert records == [{"id": last}]


@pytest.mark.parametrize("who", ["crawler", "session"])
def test_a_cookie_the_api_set_never_reaches_another_port_on_its_host(who: str) -> None:
    # aiohttp's cookie jar ignores ports: this is the case it gets wrong on its own.
    hops, result = asyncio.run(
        run_chain([("api", 302), ("port", 302)], who=who, mode="follow_without_token", method="GET", jar=True)
    )
    assert not isinstance(result, BaseException)
    assert len(hops["api"].seen) == 2 and "sid=api-session-77c1" in hops["api"].seen[1].get("cookie", "")
    assert len(hops["port"].seen) == 1 and "cookie" not in hops["port"].seen[0]
    check_foreign_requests(hops)


@pytest.mark.parametrize("who", ["crawler", "session"])
def test_a_cookie_set_over_https_never_follows_a_redirect_to_plain_http(who: str, tmp_path: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def scenario() -> tuple[dict[str, Hop], Any]:
        async with (
            three_servers(server_ctx) as hops,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            tokens = StaticToken(TOKEN, ca_bundle=str(bundle))
            chain = "api:302,port:302"  # https://127.0.0.1:A -> http://127.0.0.1:B
            if who == "crawler":
                sink = ListSink()
                await FollowChain(chain, base_url=hops["api"].base).crawl(tokens, sink, session=http)
                return hops, sink.records
            async with AuthorizedSession(
                tokens, base_url=hops["api"].base, foreign_origins="follow_without_token", session=http
            ) as api:
                return hops, await (await api.get(f"/hop?chain={chain}")).json()

    hops, result = asyncio.run(scenario())
    assert (result if who == "crawler" else result["data"]) == [{"id": "port"}]
    assert hops["api"].base.startswith("https://") and hops["port"].base.startswith("http://")
    assert len(hops["api"].seen) == 2 and "cookie" in hops["api"].seen[1]
    assert len(hops["port"].seen) == 1 and "cookie" not in hops["port"].seen[0]
    check_foreign_requests(hops)


def test_a_header_marked_sensitive_stays_behind_even_when_it_could_be_forwarded() -> None:
    class Tenant(FollowChain):
        headers = {"User-Agent": "tenant-agent-0042", "Accept-Language": "fr"}
        sensitive_headers = ("user-agent",)

    async def scenario() -> dict[str, Hop]:
        async with three_servers() as hops:
            await Tenant("host:302", base_url=hops["api"].base).crawl(StaticToken(TOKEN), ListSink())
            async with AuthorizedSession(
                StaticToken(TOKEN),
                base_url=hops["api"].base,
                foreign_origins="follow_without_token",
                headers={"User-Agent": "tenant-agent-0042"},
                sensitive_headers=["User-Agent"],
            ) as api:
                await api.get("/hop?chain=host:307")
            return hops

    hops = asyncio.run(scenario())
    assert len(hops["host"].seen) == 2
    for headers in hops["host"].seen:
        assert "tenant-agent-0042" not in headers.get("user-agent", "")
    assert hops["host"].seen[0]["accept-language"] == "fr"  # what is harmless still goes along


@pytest.mark.parametrize("who", ["crawler", "session"])
def test_a_redirect_to_the_apis_own_origin_with_user_info_is_a_typed_error(who: str) -> None:
    async def scenario() -> BaseException | None:
        async with three_servers() as hops:
            api_base = hops["api"].base
            hops["api"].peers["api"] = api_base.replace("://", "://admin:hunter2pw@")
            try:
                if who == "crawler":
                    await Chain("api:302", base_url=api_base).crawl(StaticToken(TOKEN), ListSink())
                else:
                    async with AuthorizedSession(StaticToken(TOKEN), base_url=api_base) as api:
                        await api.get("/hop?chain=api:302")
            except Exception as exc:
                return exc
            return None

    error = asyncio.run(scenario())
    assert isinstance(error, CrawlError), repr(error)
    assert "user:password@" in str(error) and "hunter2pw" not in str(error) and "admin" not in str(error)


CONTROL = st.sampled_from(["\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x7f", "\r", "\n", "\r\n x"])


@settings(max_examples=40, deadline=None)
@given(bad=CONTROL, where=st.sampled_from(["session", "request", "crawler"]))
def test_a_header_value_with_a_control_character_is_a_usage_error_naming_the_header(bad: str, where: str) -> None:
    value = f"secret{bad}value-91"

    async def scenario() -> BaseException | None:
        async with three_servers() as hops:
            try:
                if where == "crawler":

                    class Bad(Chain):
                        headers = {"X-Bad": value}

                    await Bad("", base_url=hops["api"].base).crawl(StaticToken(TOKEN), ListSink())
                elif where == "session":
                    AuthorizedSession(StaticToken(TOKEN), base_url=hops["api"].base, headers={"X-Bad": value})
                else:
                    async with AuthorizedSession(StaticToken(TOKEN), base_url=hops["api"].base) as api:
                        await api.get("/hop", headers={"X-Bad": value})
            except Exception as exc:
                assert hops["api"].seen == []  # refused before anything was sent
                return exc
            return None

    error = asyncio.run(scenario())
    assert isinstance(error, UsageError), repr(error)
    assert "X-Bad" in str(error) and "secret" not in str(error) and "value-91" not in str(error)


_HOSTS = st.sampled_from(
    ["api.example.com", "API.example.com", "api.example.com.evil.test", "evil.test", "api.example.co"]
)
_URLS = st.builds(
    lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
    st.sampled_from(["https", "http"]),
    _HOSTS,
    st.sampled_from(["", ":443", ":8443", ":80"]),
    st.sampled_from(["", "/", "/x/1", "?a=1", "#f", "@evil.test/", ".evil.test/", ":1/x"]),
)


def _pipeline(foreign: str) -> Any:
    import anyio

    from oauthpw_async._api import HostGovernor, Origins, RequestStats
    from oauthpw_async.clock import SYSTEM_CLOCK
    from oauthpw_async.pipeline import RequestPipeline
    from oauthpw_async.retry import RetryPolicy

    return RequestPipeline(
        StaticToken("t" * 24),
        origins=Origins(["https://api.example.com"]),
        foreign_origins=foreign,
        slots=anyio.Semaphore(4),
        retry=RetryPolicy(),
        timeout=aiohttp.ClientTimeout(total=5),
        clock=SYSTEM_CLOCK,
        governor=lambda host: HostGovernor(None, SYSTEM_CLOCK),
        stats=RequestStats(),
        fix_hint="follow",
    )


def _decision(pipeline: Any, url: str) -> str:
    try:
        return "allowed" if pipeline.route(url).allowed else "foreign"
    except ForeignOriginError:
        return "refused"
    except CrawlError:
        return "unusable"


@settings(max_examples=300, deadline=None)
@given(st.lists(_URLS, min_size=1, max_size=12), st.sampled_from(["refuse", "follow_without_token"]))
def test_a_routed_url_gets_the_decision_of_a_fresh_pipeline_whatever_was_routed_before(
    urls: list[str], foreign: str
) -> None:
    # The route cache (by URL, by origin, and the origin routed last) never changes a decision:
    # a URL on another host, port or scheme, or with user info after a known origin's prefix,
    # is decided as if it were the first URL the pipeline saw.
    warm = _pipeline(foreign)
    for url in urls:
        assert _decision(warm, url) == _decision(_pipeline(foreign), url), url
