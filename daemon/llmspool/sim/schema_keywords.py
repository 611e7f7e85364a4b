"""What a JSON schema's keywords say, read as leniently as ``schema_instance`` needs: the type
to make (``kind_of``, from ``type`` or else from the keywords present), whether a schema is
just ``null`` (``is_null``), an ``allOf`` folded into one schema (``fold_all_of``), the names
``required`` lists (``required_names``), the schema of properties not listed
(``extra_schema``), a number's allowed range (``bounds``) and count keywords (``min_count``,
``max_count``).

A keyword of the wrong type counts as absent: the generator makes what it can rather than
judge the schema.
"""

from __future__ import annotations

from typing import Any

_DEFAULT_SPAN = 100
"""Width of the range a number is drawn from when the schema leaves one side open."""
_TYPE_KEYWORDS = (
    ("object", ("properties", "additionalProperties", "required", "minProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems")),
    ("string", ("minLength", "maxLength", "pattern", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)


def kind_of(schema: dict[str, Any], *, deep: bool) -> str:
    """The JSON type to make for ``schema``."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list):
        names = [name for name in declared if isinstance(name, str)]
        if deep and "null" in names:
            return "null"
        others = [name for name in names if name != "null"]
        return others[0] if others else "null"
    for kind, keywords in _TYPE_KEYWORDS:
        if any(keyword in schema for keyword in keywords):
            return kind
    return "string"


def is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or schema.get("const", 0) is None


def fold_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """An ``allOf`` folded into one schema: properties and required lists joined, other
    keywords from the last part that has them."""
    merged: dict[str, Any] = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                known = merged.get("properties")
                merged["properties"] = {**(known if isinstance(known, dict) else {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [
                    *required_names(merged.get("required")),
                    *required_names(value),
                ]
            else:
                merged[key] = value
    return merged


def required_names(value: Any) -> list[str]:
    """The strings of a ``required`` list (nothing if it is not a list)."""
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def extra_schema(schema: dict[str, Any]) -> Any:
    """The schema of a property not in ``properties``."""
    extra = schema.get("additionalProperties", True)
    return extra if isinstance(extra, dict) else {}


def bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    """The smallest and largest value allowed, exclusive bounds made inclusive (by one for
    integers, by a hundredth for numbers); an open side is ``_DEFAULT_SPAN`` from the other."""
    nudge = 1 if integer else 0.01
    low: float | None = None
    high: float | None = None
    minimum, maximum = numeric(schema.get("minimum")), numeric(schema.get("maximum"))
    if minimum is not None:
        low = minimum + nudge if schema.get("exclusiveMinimum") is True else minimum
    if maximum is not None:
        high = maximum - nudge if schema.get("exclusiveMaximum") is True else maximum
    above = numeric(schema.get("exclusiveMinimum"))
    below = numeric(schema.get("exclusiveMaximum"))
    if above is not None:
        low = max(low, above + nudge) if low is not None else above + nudge
    if below is not None:
        high = min(high, below - nudge) if high is not None else below - nudge
    if low is None:
        low = 0 if high is None or high >= 0 else high - _DEFAULT_SPAN
    if high is None:
        high = low + _DEFAULT_SPAN
    return low, high


def numeric(value: Any) -> float | None:
    """A number keyword's value, or ``None`` if absent or not a number (booleans are not)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def max_count(value: Any) -> int | None:
    """A count keyword's value (``maxItems``…), or ``None`` if absent or not a count."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def min_count(value: Any) -> int:
    """A lower count keyword's value (``minItems``…), 0 if absent or not a count."""
    return max_count(value) or 0
