"""No private module or name crosses a package boundary inside the package.

A subpackage (``cli``, ``crawler``, ``fleet``, ``integrations``, ``testing``) imports another
package's public names only. The exception is the top level's shared internals: private
modules meant for every subpackage, whose ``__all__`` names what they share; a name outside it
stays private to its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import oauthpw_async

ROOT = Path(oauthpw_async.__file__).parent

#: Top-level private modules shared by the subpackages (each says so in its docstring).
SHARED_INTERNALS = frozenset({"_api", "_atomic", "_handoff", "_httputil", "_paths", "_secret"})


def imported_names(root: Path, path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, module path + name)`` of each ``from ... import`` of the package at ``root`` in ``path``."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if node.module is None or node.module.split(".")[0] != root.name:
                continue
            target = tuple(node.module.split(".")[1:])
        else:
            base = package[: len(package) - node.level + 1]
            target = base + tuple(node.module.split(".")) if node.module else base
        found += [(node.lineno, (*target, alias.name)) for alias in node.names]
    return found


def declared_all(module: Path) -> set[str]:
    """The names a module lists in ``__all__``."""
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {elt.value for elt in getattr(node.value, "elts", ()) if isinstance(elt, ast.Constant)}
    return set()


def crossings(root: Path) -> list[str]:
    """Each import of a private module or name from outside the package that holds it."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        package = path.relative_to(root).parent.parts
        for line, full in imported_names(root, path):
            private = next(
                (i for i, part in enumerate(full) if part.startswith("_") and not part.startswith("__")), None
            )
            if private is None:
                continue
            owner = full[:private]
            if root.joinpath(*owner).with_suffix(".py").is_file():
                owner = owner[:-1]  # a private name of a module: the module's package holds it
            if owner == package:
                continue
            where = f"{path.relative_to(root)}:{line} imports {'.'.join(full)}"
            if owner == () and len(full) == 2 and full[0] in SHARED_INTERNALS:
                if full[1] in declared_all(root / f"{full[0]}.py"):
                    continue
                where += f" (not in {full[0]}.__all__)"
            problems.append(where)
    return problems


def test_no_private_module_or_name_crosses_a_package_boundary() -> None:
    assert crossings(ROOT) == []


def test_a_crossing_is_found(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    for folder in (root, root / "cli", root / "fleet"):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    (root / "_paths.py").write_text('__all__ = ["dig"]\n')
    (root / "fleet" / "_url.py").write_text("")
    (root / "fleet" / "redis.py").write_text("from ._url import check\n")  # inside its package: fine
    (root / "cli" / "main.py").write_text(
        "from .._paths import dig, _parts\nfrom ..fleet._url import check\nfrom pkg.fleet.redis import _link\n"
    )
    assert crossings(root) == [
        "cli/main.py:1 imports _paths._parts (not in _paths.__all__)",
        "cli/main.py:2 imports fleet._url.check",
        "cli/main.py:3 imports fleet.redis._link",
    ]


def test_no_library_module_outside_the_fleet_knows_of_it() -> None:
    # The provider, the crawler and the rest speak of a coordinator, another process or a store in
    # general; only fleet/ (and the command line that runs it) names the fleet, in code or prose.
    library = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in ("fleet", "cli")]
    assert len(library) > 40
    mentions = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in library
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "fleet" in line.lower()
    ]
    assert mentions == []
