"""Reading a value at a path inside decoded JSON (used by the grant parser and the crawler)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Path", "dig"]

#: A dotted path (``"meta.next"``) or a key sequence (``("@odata.nextLink",)``) for keys with dots.
Path = str | Sequence[str]


def dig(data: Any, path: Path | None) -> Any:
    """``data`` at a dotted path (``"meta.next"``) or a key sequence (``("@odata.nextLink",)``)."""
    if path is None:
        return data
    parts = path.split(".") if isinstance(path, str) else path
    for part in parts:
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
