"""The docs' code runs, and the generated reference pages say what the code says.

Every ``python`` block in the README and in ``docs/`` compiles (top-level ``await`` allowed: the
fragments are written as inside an async function), its imports of this package resolve, and each
block that is a whole program (it calls ``asyncio.run``) runs to exit 0 against the local servers
it starts itself. The exit-code table and the command-line reference are generated from the code
(``docs/hooks.py``): every exit code, subcommand and option appears in them.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oauthpw_async.cli import build_parser
from oauthpw_async.exit_codes import EXIT_CODE_MEANINGS, ExitCode

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            out.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return out


BLOCKS = blocks()


def test_the_docs_have_code_blocks_to_check() -> None:
    assert len(BLOCKS) >= 10
    assert any("asyncio.run(" in code for _, code in BLOCKS)


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_every_block_compiles_and_its_imports_resolve(where: str, code: str) -> None:
    tree = compile(code, where, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    assert isinstance(tree, ast.Module)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oauthpw_async"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("oauthpw_async"):
                    assert importlib.util.find_spec(alias.name) is not None, f"{where}: no module {alias.name}"


PROGRAMS = [(w, c) for w, c in BLOCKS if "asyncio.run(" in c]


@pytest.mark.parametrize(("where", "code"), PROGRAMS, ids=[w for w, _ in PROGRAMS])
def test_every_whole_program_in_the_docs_runs(where: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "examples"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"


def load_hooks() -> object:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_exit_code_table_is_one_table_and_help_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)
    page = load_hooks().on_page_markdown("<!-- generated: exit-codes -->")  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    for code in ExitCode:
        assert f"| {int(code)} | `{code.name}` |" in page
        assert re.search(rf"^  {int(code)} +\S", shown, re.MULTILINE), f"--help lacks exit code {int(code)}"


def test_the_command_line_reference_names_every_subcommand_and_option() -> None:
    page = load_hooks().on_page_markdown("<!-- generated: cli -->")  # type: ignore[attr-defined]

    def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, argparse.ArgumentParser]]:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not nested:
            return [(" ".join(path), parser)]
        return [leaf for n, p in nested[0].choices.items() for leaf in leaves(p, (*path, n))]

    parser = build_parser()
    usage = parser.format_usage()
    for name, sub in leaves(parser, ()):
        assert name.split()[0] in usage, f"the usage line hides {name}"
        assert f"## `oauthpw-async {name}`" in page
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}`" in page, f"{name} {flag} missing from the reference"


def test_the_error_reference_lists_every_public_error() -> None:
    from oauthpw_async import errors
    from oauthpw_async.fleet import errors as fleet_errors

    page = load_hooks().on_page_markdown("<!-- generated: errors -->")  # type: ignore[attr-defined]
    for module in (errors, fleet_errors):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, errors.OAuthPWError):
                assert f"**`{name}`**" in page, name
