"""Worker processes for the cross-process fleet tests: ``python -m tests.fleet.workers ROLE URL NAMESPACE ...``.

Each role prints one JSON line per event on stdout (flushed), so the test can follow it
and kill it at a chosen moment.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio

from oauthpw_async.fleet import ClaimLost

from .helpers import TOKEN_KEY, coordinator, make_token


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def lease_role(url: str, namespace: str, rounds: int) -> None:
    """Increment a plain counter ``rounds`` times with a non-atomic read-modify-write under the lease."""
    async with coordinator(url, namespace, lease_ttl=10.0) as fleet:
        client = fleet.link.client
        counter = f"{namespace}:plain-counter"
        for _ in range(rounds):
            handle = await fleet.lease.acquire(wait=120.0)
            assert handle is not None, "lease not acquired within 120 s"
            async with fleet.lease.keep(handle):
                value = int(await client.get(counter) or 0)
                await anyio.sleep(0.002)  # widen the window a lost update would need
                await client.set(counter, str(value + 1))
            emit(fence=handle.fence)


async def publish_role(url: str, namespace: str, rounds: int) -> None:
    """Renew ``rounds`` times by compare-and-set from whatever generation was read."""
    async with coordinator(url, namespace) as fleet:
        for i in range(rounds):
            shared = await fleet.tokens.read()
            base = shared.generation if shared else 0
            result = await fleet.tokens.publish(make_token(os.getpid() * 1000 + i), renewed_from=base, now_wall=0.0)
            emit(base=base, published=result.published, generation=result.generation)


async def login_role(url: str, namespace: str, rounds: int) -> None:
    """Try ``rounds`` logins against a budget of 5 per 10 minutes."""
    async with coordinator(url, namespace, login_limit=5, login_window=600.0) as fleet:
        for _ in range(rounds):
            emit(allowed=(await fleet.logins.take()) == 0.0)


async def rate_role(url: str, namespace: str, rounds: int) -> None:
    """Reserve ``rounds`` slots on one host at 50 requests/s (without sleeping them)."""
    async with coordinator(url, namespace) as fleet:
        limiter = fleet.rate_limiter(rate=50.0, burst=1, max_wait=3600.0)
        for _ in range(rounds):
            decision = await limiter.reserve("https://api.example.com")
            emit(allowed_at=decision.allowed_at, reserved=decision.reserved)


PAGES = 6  # pages per partition in the crawl role; page i of p holds records "p/i/0".."p/i/2"


async def crawl_role(url: str, namespace: str, out_path: str, stop_mid_page: int, idle: float) -> None:
    """Crawl synthetic partitions: append each page's records to ``out_path``, then checkpoint.

    With ``stop_mid_page`` > 0, after writing that many pages the worker announces it and
    hangs after writing the next page's records but before its checkpoint (the test kills it).
    """
    written = 0
    async with coordinator(url, namespace) as fleet:
        queue = fleet.partitions("synthetic", idle_timeout=idle, max_claims=10)
        await queue.enqueue({f"p{n:02d}": {"pages": PAGES} for n in range(8)})
        with open(out_path, "a", encoding="utf-8") as out:
            idle_rounds = 0
            while idle_rounds < 2000:
                claims = await queue.claim()
                if not claims:
                    status = await queue.status()
                    if status.finished:
                        break
                    idle_rounds += 1
                    await anyio.sleep(0.05)
                    continue
                idle_rounds = 0
                claim = claims[0]
                page = int(claim.position or 0)
                emit(claimed=claim.partition, fence=claim.fence, start=page)
                try:
                    async with queue.keep_alive(claim):
                        while page < claim.spec["pages"]:
                            out.write("".join(f"{claim.partition}/{page}/{j}\n" for j in range(3)))
                            out.flush()
                            os.fsync(out.fileno())
                            written += 1
                            if stop_mid_page and written == stop_mid_page + 1:
                                emit(hanging=claim.partition, page=page)
                                await anyio.sleep_forever()
                            page += 1
                            await queue.checkpoint(claim, page)
                        await queue.complete(claim)
                        emit(done=claim.partition)
                except ClaimLost:
                    emit(lost=claim.partition)
    emit(finished=True, pages=written)


async def provider_role(url: str, namespace: str, token_url: str, seconds: float, timeout: float = 30.0) -> None:
    """Ask a fleet-coordinated TokenProvider for a token every 20 ms for ``seconds``; report what happened."""
    import logging
    import time

    # The provider's own log on stderr (kept in a file by the test, shown when it fails).
    logging.basicConfig(level=logging.INFO, format="%(created).3f %(process)d %(name)s %(levelname)s %(message)s")

    from oauthpw_async import OAuthPWError, PasswordGrantConfig, TokenProvider
    from oauthpw_async.fleet import Coordinator
    from oauthpw_async.testing import AuthServerState

    server = AuthServerState()  # only for its default client and account
    config = PasswordGrantConfig(
        access_token_url=token_url,
        client_id=server.client_id,
        client_secret=server.client_secret,
        username=server.username,
        password=server.password,
        timeout=timeout,
    )
    errors: dict[str, int] = {}
    messages: dict[str, str] = {}
    gets = ok_after_error = 0
    longest = 0.0
    # The lease ttl is the default, derived from the timeouts (lease_ttl_for).
    key = os.environ.get("FLEET_TEST_TOKEN_KEY") or TOKEN_KEY
    if os.environ.get("FLEET_TEST_KEY_WAIT"):  # as monkeypatch would, in this process
        from oauthpw_async.fleet import renewal

        renewal.KEY_MAJORITY_WAIT = float(os.environ["FLEET_TEST_KEY_WAIT"])
    fleet = Coordinator.for_config(
        config, url, token_key=key, namespace=namespace, command_timeout=0.5, connect_timeout=0.5
    )
    async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
        emit(pid=os.getpid(), lease_ttl=fleet.lease.ttl, key_id=fleet.cipher.key_id)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            asked = time.monotonic()
            try:
                token = await tokens.get()
            except OAuthPWError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                messages[type(exc).__name__] = str(exc)
                ok_after_error = 0
                await anyio.sleep(0.05)
                continue
            longest = max(longest, time.monotonic() - asked)
            gets += 1
            ok_after_error += 1
            if gets == 1:
                emit(ready=True, token_type=token.token_type, wall=time.time())
            await anyio.sleep(0.02)
        s = tokens.stats
        emit(
            wall=time.time(),
            gets=gets,
            errors=errors,
            messages=messages,
            longest_get=longest,
            ok_after_last_error=ok_after_error,
            logins=s.logins,
            refreshes=s.refreshes,
            token_requests=s.token_requests,
            adopted=s.adopted,
        )


async def incremental_role(
    url: str, namespace: str, base_url: str, token_url: str, out_path: str, idle: float, round_name: str
) -> None:
    """One worker of the incremental crawl of tests/fleet/changing.py: a fleet-coordinated token, its own output."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(created).3f %(process)d %(name)s %(levelname)s %(message)s")

    from oauthpw_async import PasswordGrantConfig, TokenProvider
    from oauthpw_async.crawler import JsonLinesSink
    from oauthpw_async.fleet import Coordinator, FleetCrawl
    from oauthpw_async.testing import AuthServerState

    from .changing import ChangingSources

    server = AuthServerState()  # only for its default client and account
    config = PasswordGrantConfig(
        access_token_url=token_url,
        client_id=server.client_id,
        client_secret=server.client_secret,
        username=server.username,
        password=server.password,
    )
    fleet = Coordinator.for_config(config, url, token_key=TOKEN_KEY, namespace=namespace)
    sink = JsonLinesSink(out_path)
    try:
        async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
            crawl = FleetCrawl(fleet, "changes", idle_timeout=idle, partitions_at_once=1, round_name=round_name)
            emit(pid=os.getpid())
            stats = await crawl.run(ChangingSources(base_url=base_url), tokens, sink)
    finally:
        sink.close()
    emit(finished=crawl.checkpoints.finished, complete=stats.complete, records=stats.records)


def main() -> None:
    role, url, namespace, *rest = sys.argv[1:]
    if role == "provider":
        timeout = float(rest[2]) if len(rest) > 2 else 30.0
        anyio.run(provider_role, url, namespace, rest[0], float(rest[1]), timeout, backend="asyncio")
        return
    if role == "incremental":
        base, token_url, out, idle, round_name = rest
        anyio.run(incremental_role, url, namespace, base, token_url, out, float(idle), round_name, backend="asyncio")
        return
    if role == "crawl":
        anyio.run(crawl_role, url, namespace, rest[0], int(rest[1]), float(rest[2]))
        return
    roles = {"lease": lease_role, "publish": publish_role, "login": login_role, "rate": rate_role}
    anyio.run(roles[role], url, namespace, int(rest[0]))


if __name__ == "__main__":
    main()
