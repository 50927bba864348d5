"""Build-time hooks: the reference pages that are generated from the code.

A page holds a marker such as ``<!-- generated: errors -->``; the hook replaces it with the text
the code defines, so the docs cannot drift from it: the error tree (``oauthpw_async.errors`` and
the fleet's), the command line (``oauthpw_async.cli.build_parser``), the exit codes and the token
lifecycle's state table (``oauthpw_async.lifecycle.TRANSITIONS``).
"""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    text = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)


def _errors() -> str:
    from oauthpw_async import errors
    from oauthpw_async.fleet import errors as fleet_errors

    classes = [getattr(errors, n) for n in errors.__all__] + [getattr(fleet_errors, n) for n in fleet_errors.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, errors.OAuthPWError)]
    known = set(classes)
    children: dict[type, list[type]] = {}
    for cls in classes:
        parent = next((b for b in cls.__mro__[1:] if b in known), None)
        if parent is not None:
            children.setdefault(parent, []).append(cls)
    lines: list[str] = []

    def walk(cls: type, depth: int) -> None:
        builtins = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception]
        also = f" (also a `{'`, `'.join(builtins)}`)" if builtins else ""
        lines.append(f"{'    ' * depth}- **`{cls.__name__}`**{also}: {_first_line(cls)}")
        for child in sorted(children.get(cls, []), key=lambda c: c.__name__):
            walk(child, depth + 1)

    walk(errors.OAuthPWError, 0)
    return "\n".join(lines)


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, argparse.ArgumentParser]]:
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        return [(" ".join(path), parser)]
    return [leaf for name, sub in nested[0].choices.items() for leaf in _leaves(sub, (*path, name))]


def _cli() -> str:
    from oauthpw_async.cli import build_parser

    parser = build_parser()
    out = [f"```text\n{parser.format_usage().strip()}\n```\n"]
    for name, sub in _leaves(parser, ()):
        out.append(f"## `oauthpw-async {name}`\n")
        if sub.description:
            out.append(" ".join(sub.description.split()) + "\n")
        out.append(f"```text\n{sub.format_usage().strip()}\n```\n")
        out.append("| option | default | meaning |\n|---|---|---|")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            default = action.default
            shown = "required" if action.required else ""
            if not shown and default not in (None, False, argparse.SUPPRESS) and default != []:
                shown = f"`{default}`"
            meaning = " ".join((action.help or "").split()).replace("|", "\\|")
            meaning = re.sub(r"\s*\(default: [^)]*\)", "", meaning)
            out.append(f"| {flags} | {shown} | {meaning} |")
        out.append("")
    return "\n".join(out)


def _exit_codes() -> str:
    from oauthpw_async.exit_codes import EXIT_CODE_MEANINGS, ExitCode

    rows = ["| code | name | meaning |", "|---|---|---|"]
    rows += [f"| {int(code)} | `{code.name}` | {EXIT_CODE_MEANINGS[code]} |" for code in ExitCode]
    return "\n".join(rows)


def _lifecycle() -> str:
    from oauthpw_async.lifecycle import TRANSITIONS, State, table

    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {State.CLOSED.value}"]
    for (state, event), targets in TRANSITIONS.items():
        for target in sorted(targets, key=lambda t: t.value):
            lines.append(f"    {state.value} --> {target.value}: {event.value}")
    lines.append("```")
    return "\n".join(lines) + "\n\n" + table()


GENERATORS = {"errors": _errors, "cli": _cli, "exit-codes": _exit_codes, "lifecycle": _lifecycle}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` marker with what the code says."""
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)
