"""The integrations are optional: the SDK, its command line and a plain crawl import none of them."""

from __future__ import annotations

import ast
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


def _python(code: str) -> str:
    """What a fresh interpreter running ``code`` printed (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_sdk_and_running_a_plain_crawl_imports_no_integration_package() -> None:
    assert _python(PLAIN_CRAWL) == ""


def test_the_check_above_can_see_an_integration_package() -> None:
    assert _python("import sys, oauthpw_async.integrations.dlt; print('dlt' in sys.modules)") == "True"


PACKAGE = ROOT / "src" / "oauthpw_async"


def _imports(path: Path) -> set[str]:
    """The modules a source file imports, relative imports resolved against the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = ["oauthpw_async", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_parses_arguments_or_imports_the_command_line() -> None:
    library = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1]]
    assert any(p.name == "check.py" for p in library) and any("fleet" in p.parts for p in library)
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(
            m for m in _imports(p) if m == "argparse" or m == "oauthpw_async.cli" or m.startswith("oauthpw_async.cli.")
        )
        for p in library
        if p.name != "__main__.py"  # `python -m oauthpw_async` runs the command line
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_above_sees_the_command_line_import_argparse() -> None:
    found = _imports(PACKAGE / "cli" / "parser.py")
    assert "argparse" in found and "oauthpw_async.cli.crawl" in found


def test_importing_the_command_line_imports_no_redis_client() -> None:
    code = (
        "import sys, oauthpw_async.cli, oauthpw_async.cli.fleet\n"
        "oauthpw_async.cli.build_parser()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('coredis', 'redis'))))\n"
    )
    assert _python(code) == ""
