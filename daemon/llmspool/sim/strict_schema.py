"""The checks OpenAI makes on a schema sent with ``strict: true`` (Structured Outputs).

A strict schema's root is an object, and every object in it (in ``properties``, ``items``,
``anyOf``, ``$defs``…) sets ``additionalProperties: false`` and lists every one of its
``properties`` in ``required``. ``strict_problem`` says what breaks that in OpenAI's words,
``In context=('properties', 'address'), …``, which the endpoints put after
``Invalid schema for response_format 'name': `` or ``Invalid schema for function 'name': ``.

The rest of the strict subset (limits on sizes and nesting, unsupported keywords) is not
checked: the simulator makes a valid instance of those schemas anyway.
"""

from __future__ import annotations

from typing import Any

_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def strict_problem(schema: Any) -> str | None:
    """Why ``schema`` is refused in strict mode, or ``None`` if it is not."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."
    return _problem(schema, ())


def _problem(node: dict[str, Any], context: tuple[str, ...]) -> str | None:
    if _is_object(node):
        if node.get("additionalProperties") is not False:
            return (
                f"In context={context!r}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        properties = node.get("properties")
        required = node.get("required")
        names = list(properties) if isinstance(properties, dict) else []
        listed = required if isinstance(required, list) else []
        missing = [name for name in names if name not in listed]
        if missing or not isinstance(required, list):
            detail = f" Missing '{missing[0]}'." if missing else ""
            return (
                f"In context={context!r}, 'required' is required to be supplied and to be an "
                f"array including every key in properties.{detail}"
            )
    for key, child in _children(node):
        if isinstance(child, dict):
            found = _problem(child, (*context, *key))
            if found is not None:
                return found
    return None


def _is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node


def _children(node: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    """The subschemas of ``node``, each with its path from ``node``."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for keyword in _SUBSCHEMA_MAPS:
        mapping = node.get(keyword)
        if isinstance(mapping, dict):
            found += [((keyword, name), child) for name, child in mapping.items()]
    for keyword in _SUBSCHEMA_LISTS:
        options = node.get(keyword)
        if isinstance(options, list):
            found += [((keyword, str(index)), child) for index, child in enumerate(options)]
    for keyword in ("items", "additionalProperties"):
        if isinstance(node.get(keyword), dict):
            found.append(((keyword,), node[keyword]))
    return found
