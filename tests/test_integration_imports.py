"""The integrations are optional: the SDK, its command line and a plain crawl import none of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The top-level packages of the optional integrations (and what they bring along).
FOREIGN = ("dlt", "duckdb", "airbyte_protocol", "airbyte_cdk", "pydantic", "singer_sdk", "opentelemetry")

PLAIN_CRAWL = f"""
import asyncio, sys
import oauthpw_async, oauthpw_async.cli, oauthpw_async.crawler, oauthpw_async.integrations
from oauthpw_async import TokenProvider
from oauthpw_async.crawler import ListSink
from oauthpw_async.testing import LocalServer

sys.path.insert(0, {str(ROOT / "examples")!r})
from zendesk_tickets import Tickets
from oauthpw_async.testing.changes import ChangesAPI


async def main():
    async with LocalServer(api=ChangesAPI(records=30)) as server, TokenProvider(server.config()) as tokens:
        sink = ListSink()
        await Tickets(base_url=server.base_url).crawl(tokens, sink)
        assert len(sink.records) == 30


asyncio.run(main())
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {FOREIGN!r})))
"""


def test_importing_the_sdk_and_running_a_plain_crawl_imports_no_integration_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_CRAWL],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_check_above_can_see_an_integration_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, oauthpw_async.integrations.dlt; print('dlt' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
