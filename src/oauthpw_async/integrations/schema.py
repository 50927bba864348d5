"""JSON Schema per stream, for the Singer and Airbyte protocols: declared, or inferred from records.

A crawler may declare its records' schema as ``json_schema`` (a JSON Schema object, draft 7);
otherwise one is inferred from a sample of records, widened when a later record brings a field
or a type the sample did not show, and printed by ``oauthpw-async schema`` for the user to pin.
Inferred properties are all nullable and none is required: a source that leaves a field out, or
sends a tombstone with its key alone, still fits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import UsageError

__all__ = ["declared_schema", "infer_schema", "widen"]

_TYPE_ORDER = ("null", "boolean", "integer", "number", "string", "array", "object")


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "string"  # anything else is written as its string form


def _of_value(value: Any) -> dict[str, Any]:
    kind = _type_of(value)
    schema: dict[str, Any] = {"type": ["null", kind] if kind != "null" else ["null"]}
    if kind == "array":
        items: dict[str, Any] = {}
        for item in value:
            items = _merge(items, _of_value(item))
        schema["items"] = items
    elif kind == "object":
        schema["properties"] = {str(k): _of_value(v) for k, v in value.items()}
    return schema


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The narrowest schema both ``a`` and ``b`` fit (``{}``: nothing seen yet)."""
    if not a:
        return copy.deepcopy(dict(b))
    if not b:
        return copy.deepcopy(dict(a))
    kinds = set(_types(a)) | set(_types(b))
    if {"integer", "number"} <= kinds:
        kinds.discard("integer")  # an integer is a number; one column type, not two
    merged: dict[str, Any] = {**a, **b, "type": [k for k in _TYPE_ORDER if k in kinds]}
    if "array" in kinds:
        merged["items"] = _merge(a.get("items", {}), b.get("items", {}))
    if "object" in kinds:
        props = dict(a.get("properties", {}))
        for key, sub in b.get("properties", {}).items():
            props[key] = _merge(props.get(key, {}), sub)
        merged["properties"] = props
    return merged


def infer_schema(records: Iterable[Any]) -> dict[str, Any]:
    """The JSON Schema (an object of nullable properties) every one of ``records`` fits."""
    schema: dict[str, Any] = {"type": ["object"], "properties": {}}
    for record in records:
        schema = widen(schema, record)
    return schema


def widen(schema: Mapping[str, Any], record: Any) -> dict[str, Any]:
    """``schema`` widened so that ``record`` fits it too (returned unchanged, as a copy, if it did)."""
    found = _of_value(record if isinstance(record, Mapping) else {"value": record})
    merged = _merge(schema, found)
    merged["type"] = ["object"]  # a record itself is never null
    return merged


def declared_schema(crawler: Any) -> dict[str, Any] | None:
    """The crawler's own ``json_schema``, checked to be a JSON Schema of an object; ``None`` if not declared."""
    declared = getattr(crawler, "json_schema", None)
    if declared is None:
        return None
    if not isinstance(declared, Mapping) or "object" not in _types(declared) or "properties" not in declared:
        raise UsageError(
            f"{type(crawler).__name__}.json_schema must be a JSON Schema object with 'type': 'object' and "
            "'properties'; print an inferred one to start from with: oauthpw-async schema --config ... --crawler ..."
        )
    return copy.deepcopy(dict(declared))
