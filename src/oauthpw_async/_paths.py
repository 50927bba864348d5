r"""Reading a value at a path inside decoded JSON (used by the grant parser and the crawler).

A path is a string or a sequence of keys:

* ``"meta.next"``: dots separate keys; a list index is a number (``"items.0.id"``).
* Keys that contain dots work as written: ``"@odata.nextLink"`` or ``"value.@odata.count"`` find
  the key ``"@odata.nextLink"`` because, at each level, the longest run of dotted parts that is
  an existing key wins.
* ``"a\.b"``: a backslash makes a dot part of the key, always.
* ``("@odata.nextLink",)``: a key sequence is taken literally, one key per level.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MISSING", "Path", "dig", "lookup", "path_keys"]

#: A dotted path or a key sequence.
Path = str | Sequence[str]

_SPLIT = re.compile(r"(?<!\\)\.")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Returned by :func:`lookup` when a key on the path is absent (unlike a JSON ``null``)."""


def path_keys(path: Path) -> list[str]:
    r"""The keys of ``path``, one per level as written (``"a\.b.c"`` -> ``["a.b", "c"]``; a sequence as is).

    What a path names before the lookup joins dotted parts that form an existing key: the shape
    of the path itself, e.g. the nested columns of a primary key.
    """
    if isinstance(path, str):
        return [p.replace("\\.", ".") for p in _SPLIT.split(path)]
    return list(path)


def lookup(data: Any, path: Path | None) -> Any:
    """``data`` at ``path``; :data:`MISSING` when a key is absent, ``None`` for a JSON null."""
    if path is None:
        return data
    literal = not isinstance(path, str)
    parts = path_keys(path)
    i = 0
    while i < len(parts):
        if isinstance(data, Mapping):
            if literal:
                if parts[i] not in data:
                    return MISSING
                data, i = data[parts[i]], i + 1
                continue
            # The longest run of parts that is an existing key wins ("@odata.count").
            for j in range(len(parts), i, -1):
                key = ".".join(parts[i:j])
                if key in data:
                    data, i = data[key], j
                    break
            else:
                return MISSING
        elif isinstance(data, list) and parts[i].isdigit() and int(parts[i]) < len(data):
            data, i = data[int(parts[i])], i + 1
        else:
            return MISSING
    return data


def dig(data: Any, path: Path | None) -> Any:
    """``data`` at ``path``, or ``None`` when any key on it is absent."""
    found = lookup(data, path)
    return None if found is MISSING else found
