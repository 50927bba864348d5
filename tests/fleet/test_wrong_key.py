"""One worker with the wrong fleet key, as real processes: it logs in first and seals the shared token with
its key; the workers holding the fleet's key then crawl to completion, replacing that record with one
login under the lease, and the wrong-key worker is told which key it has and which the fleet uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from oauthpw_async.fleet import generate_key
from oauthpw_async.fleet.cipher import TokenCipher
from oauthpw_async.testing import LocalServer

from .helpers import TOKEN_KEY
from .procs import ROOT
from .redis_server import RedisServer
from .test_crawl_processes import BOUND, Workers, api, assert_tokens, duplicates, report, status, strict_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server runs in this process, on aiohttp


async def test_a_wrong_key_worker_that_logged_in_first_costs_the_fleet_one_login_and_is_named(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    wrong_key = generate_key()
    wrong_id, right_id = TokenCipher(wrong_key).key_id, TokenCipher(TOKEN_KEY).key_id
    state, demo = strict_server(), api(0.3)  # the crawl outlasts the wrong-key worker's wait for a majority
    async with LocalServer(state, api=demo) as server:
        log = tmp_path / "wrong.err"
        wrong = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet.workers", "provider", redis_server.url, namespace, server.token_url,
             str(BOUND)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            env={**os.environ, "FLEET_TEST_TOKEN_KEY": wrong_key, "FLEET_TEST_KEY_WAIT": "1.0"},
        )  # fmt: skip
        workers = Workers(tmp_path, server, redis_server.url, namespace)
        try:
            assert wrong.stdout is not None
            with anyio.fail_after(BOUND):
                while b'"ready"' not in await anyio.to_thread.run_sync(wrong.stdout.readline):
                    assert wrong.poll() is None, log.read_text()
            assert state.count("password") == 1  # the shared record is now sealed with the wrong key
            codes = await workers.wait(workers.start(3))
            elapsed = anyio.current_time() - workers.started
            final = await status(redis_server.url, namespace)
        finally:
            wrong.kill()
            wrong.wait()
            workers.kill_all()
    assert codes == [0, 0, 0], workers.describe()
    seen = workers.records()
    report("a wrong-key worker logged in first", state, elapsed, seen)
    assert final.complete and set(seen) == demo.expected_ids() and duplicates(seen) == 0
    logs = "".join(workers.log(i) for i in range(3))
    told = log.read_text()  # the wrong-key worker hears which key it has and which the fleet holds
    # Its own logins: the first, and one once it was left alone (the right-key workers had exited).
    its_logins = told.count("new token from password")
    assert its_logins <= 2 and state.count("password") - its_logins <= 1  # one replacement for the whole fleet
    assert_tokens(state, elapsed, faults=its_logins)
    assert f"sealed with fleet key id {wrong_id} by " in logs and "replacing it with one login" in logs
    assert f"pid {wrong.pid}" in logs  # the right-key workers name the wrong one
    assert f"holds fleet key id {wrong_id}" in told and f"sealed with key id {right_id}" in told
    for text in (logs, told):
        assert TOKEN_KEY not in text and wrong_key not in text
