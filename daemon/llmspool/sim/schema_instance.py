"""A deterministic instance of a JSON schema: the sim's structured outputs and tool arguments.

``instance(schema, seed, words)`` walks the schema and makes a value that validates against it,
drawing every free choice (an enum member, a number in its range, how many items, the words of
a string) from a ``random.Random(seed)``: the same schema and seed always give the same value.
What a keyword says (the type to make, an ``allOf`` folded, a range, a count) is read by
``schema_keywords``.

Covered: ``type`` (a name or a list, where the first non-null type is made), ``const``,
``enum``, ``$ref`` (JSON pointers into the root: ``#/$defs/…``, ``#/definitions/…``, ``#``),
``allOf`` (merged), ``anyOf``/``oneOf`` (the first option that is not just ``null``); objects
(every property in ``properties``, ``required`` ones without a schema, ``additionalProperties``
and ``minProperties``/``maxProperties``); arrays (``items``, ``prefixItems`` and the older list
form of ``items``, ``minItems``/``maxItems``, ``uniqueItems`` as far as the item schema allows);
strings (``minLength``/``maxLength``, ``pattern`` through ``regex_sample``, the common
``format`` values); integers and numbers (``minimum``/``maximum``, their exclusive forms in
both drafts, ``multipleOf``); booleans and null. A schema with no type is made from the keywords
it has (``properties`` → object, ``items`` → array…), or is a string.

Recursive schemas end: past ``MAX_DEPTH`` levels, options that are ``null`` are preferred,
arrays get their fewest items and objects only their required properties. A schema that still
does not end by ``DEPTH_LIMIT``, whose instance would hold over ``MAX_VALUES`` values or a
string over ``MAX_STRING_CHARS`` characters, or a ``$ref`` that leads nowhere, raises
``SchemaProblem``.
Keywords not listed (``not``, ``if``/``then``/``else``, ``contains``, ``patternProperties``,
``dependentRequired``…) are ignored, so a schema relying on them may get a value it refuses.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from llmspool.sim.regex_sample import sample
from llmspool.sim.schema_keywords import (
    bounds,
    extra_schema,
    fold_all_of,
    is_null,
    kind_of,
    max_count,
    min_count,
    numeric,
    required_names,
)

Words = Callable[[int, int], str]
"""``words(key, count)``: ``count`` words of the sim's answer text, the same for the same key."""

MAX_DEPTH = 6
"""Nesting past which the instance takes the shortest way out (null options, fewest items)."""
DEPTH_LIMIT = 64
"""Nesting at which a schema that cannot end is given up on."""
_MAX_ITEMS_DRAWN = 3
_UNIQUE_ATTEMPTS = 8
MAX_VALUES = 10_000
"""Values (of any type, nested ones included) one instance may hold."""
MAX_STRING_CHARS = 65_536


class SchemaProblem(ValueError):
    """The schema has no instance the generator can make (a dangling ``$ref``, endless
    recursion); the message says where."""


def instance(schema: Any, seed: int, words: Words) -> Any:
    """A value valid against ``schema`` (a JSON schema as decoded JSON), the same for the same
    ``seed``. Raises ``SchemaProblem`` if there is none to make."""
    return _Maker(schema, seed, words).value(schema, 0)


def instance_json(schema: Any, seed: int, words: Words) -> str:
    """``instance`` as compact JSON text, as a model writes it."""
    value = instance(schema, seed, words)
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (a schema's huge ``minimum``): the standard encoder has no limit.
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Maker:
    __slots__ = ("_left", "_rng", "_root", "_words")

    def __init__(self, root: Any, seed: int, words: Words) -> None:
        self._root = root
        self._rng = random.Random(seed)
        self._words = words
        self._left = MAX_VALUES

    def value(self, schema: Any, depth: int) -> Any:
        if depth > DEPTH_LIMIT:
            raise SchemaProblem("the schema nests too deep to end (a recursion with no way out)")
        self._left -= 1
        if self._left < 0:
            raise SchemaProblem(f"an instance of the schema holds over {MAX_VALUES} values")
        if schema is True or schema is None:
            schema = {}
        if not isinstance(schema, dict):
            return None  # ``false`` allows nothing; a non-schema is not ours to judge
        schema = self._resolved(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self._rng.choice(enum)
        if isinstance(schema.get("allOf"), list):
            return self.value(fold_all_of(schema), depth)
        for keyword in ("anyOf", "oneOf"):
            options = schema.get(keyword)
            if isinstance(options, list) and options:
                rest = {key: value for key, value in schema.items() if key != keyword}
                option = self._resolved(self._pick(options, depth))
                return self.value({**rest, **option}, depth)
        kind = kind_of(schema, deep=depth >= MAX_DEPTH)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolved(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its ``$ref`` (followed to the end) merged under its own keywords."""
        seen: set[str] = set()
        while isinstance(schema.get("$ref"), str):
            reference: str = schema["$ref"]
            if reference in seen:
                raise SchemaProblem(f"reference {reference!r} refers to itself")
            seen.add(reference)
            target = self._follow(reference)
            siblings = {key: value for key, value in schema.items() if key != "$ref"}
            schema = {**target, **siblings}
        return schema

    def _follow(self, reference: str) -> dict[str, Any]:
        if not reference.startswith("#"):
            raise SchemaProblem(f"reference {reference!r} is not inside the schema")
        node: Any = self._root
        for part in filter(None, reference[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaProblem(f"reference {reference!r} can't be resolved")
        if node is True:
            return {}
        if not isinstance(node, dict):
            raise SchemaProblem(f"reference {reference!r} does not lead to a schema")
        return node

    def _pick(self, options: list[Any], depth: int) -> dict[str, Any]:
        """The option of an ``anyOf``/``oneOf`` to make: the first that is not just ``null``;
        past ``MAX_DEPTH``, the first that is (the shortest way out of a recursion)."""
        schemas = [option if isinstance(option, dict) else {} for option in options]
        nulls = [schema for schema in schemas if is_null(self._resolved(schema))]
        if depth >= MAX_DEPTH and nulls:
            return nulls[0]
        others = [schema for schema in schemas if schema not in nulls]
        return others[0] if others else schemas[0]

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = required_names(schema.get("required"))
        deep = depth >= MAX_DEPTH
        result: dict[str, Any] = {}
        for name, subschema in properties.items():
            if not deep or name in required:
                result[name] = self.value(subschema, depth + 1)
        for name in required:
            if name not in result:
                result[name] = self.value(extra_schema(schema), depth + 1)
        extra = schema.get("additionalProperties", True)
        wanted = min_count(schema.get("minProperties"))
        # A free-form object (no ``properties`` at all) gets one entry; ``properties: {}`` none.
        if "properties" not in schema and extra is not False and not deep:
            wanted = max(wanted, 1)
        index = 0
        while len(result) < wanted and extra is not False:
            index += 1
            key = self._words(self._rng.getrandbits(32), 1).replace(" ", "_") + f"_{index}"
            if key not in result:
                result[key] = self.value(extra_schema(schema), depth + 1)
        most = max_count(schema.get("maxProperties"))
        if most is not None and len(result) > most:
            keep = [name for name in result if name in required]
            keep += [name for name in result if name not in required]
            result = {name: result[name] for name in keep[: max(most, len(required))]}
        return result

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        items: Any = schema.get("items")
        prefix: Any = schema.get("prefixItems")
        if isinstance(items, list):  # drafts 4 to 2019-09: a list of items is a tuple
            prefix, items = items, schema.get("additionalItems")
        prefix = prefix if isinstance(prefix, list) else []
        least = min_count(schema.get("minItems"))
        most = max_count(schema.get("maxItems"))
        if items is False:
            most = len(prefix) if most is None else min(most, len(prefix))
        if depth >= MAX_DEPTH:
            count = least
        else:
            drawn_high = max(least, 1) + _MAX_ITEMS_DRAWN - 1
            count = self._rng.randint(max(least, 1), drawn_high)
        count = max(count, min(len(prefix), most if most is not None else len(prefix)))
        if most is not None:
            count = min(count, most)
        unique = schema.get("uniqueItems") is True
        result: list[Any] = []
        seen: set[bytes] = set()
        for index in range(count):
            subschema = prefix[index] if index < len(prefix) else items
            for _ in range(_UNIQUE_ATTEMPTS if unique else 1):
                item = self.value(subschema, depth + 1)
                key = _canonical(item)
                if key not in seen:
                    break
            if unique and key in seen:
                if len(result) >= least:
                    break
                continue
            seen.add(key)
            result.append(item)
        return result

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = bounds(schema, integer=True)
        first, last = math.ceil(low), math.floor(high)
        step = numeric(schema.get("multipleOf"))
        if step is not None and step > 0 and float(step).is_integer():
            whole = int(step)
            if -(-first // whole) <= last // whole:
                return self._rng.randint(-(-first // whole), last // whole) * whole
        return self._rng.randint(first, last) if first <= last else first

    def _number(self, schema: dict[str, Any]) -> float:
        low, high = bounds(schema, integer=False)
        step = numeric(schema.get("multipleOf"))
        if step is not None and step > 0:
            try:
                first, last = math.ceil(low / step), math.floor(high / step)
            except (OverflowError, ValueError):  # bounds too far apart for the step
                first, last = 1, 0
            for multiple in range(first, min(last, first + 50) + 1):
                value = multiple * step
                if low <= value <= high and (value / step).is_integer():
                    return value
        if low > high:
            return low
        value = round(self._rng.uniform(low, high), 2)
        return value if low <= value <= high else low

    def _string(self, schema: dict[str, Any]) -> str:
        least = min_count(schema.get("minLength"))
        if least > MAX_STRING_CHARS:
            raise SchemaProblem(f"a string of the schema is over {MAX_STRING_CHARS} characters")
        most = max_count(schema.get("maxLength"))
        key = self._rng.getrandbits(32)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            matched = sample(pattern, self._rng)
            fits = matched is not None and len(matched) >= least
            if matched is not None and fits and (most is None or len(matched) <= most):
                return matched
        fmt = schema.get("format")
        if isinstance(fmt, str):
            formatted = self._formatted(fmt, key)
            if formatted is not None:
                return formatted
        text = self._words(key, self._rng.randint(1, 3))
        while len(text) < least:
            text += " " + self._words(key + len(text), max(1, (least - len(text)) // 4 + 1))
        return text[:most] if most is not None else text

    def _formatted(self, fmt: str, key: int) -> str | None:
        """A string of the ``format``, or ``None`` for a format not covered."""
        rng = self._rng
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        word = self._words(key, 1)
        return {
            "date-time": f"2026-{month:02d}-{day:02d}T{clock}Z",
            "date": f"2026-{month:02d}-{day:02d}",
            "time": f"{clock}Z",
            "duration": f"P{day}DT{month}H",
            "email": f"{word}@example.com",
            "idn-email": f"{word}@example.com",
            "hostname": f"{word}.example.com",
            "idn-hostname": f"{word}.example.com",
            "ipv4": f"192.0.2.{day}",
            "ipv6": f"2001:db8::{day:x}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "uri": f"https://example.com/{word}",
            "url": f"https://example.com/{word}",
            "iri": f"https://example.com/{word}",
            "uri-reference": f"/{word}",
            "iri-reference": f"/{word}",
            "uri-template": f"https://example.com/{word}/{{id}}",
            "json-pointer": f"/{word}",
            "relative-json-pointer": f"0/{word}",
            "regex": f"^{word}$",
        }.get(fmt)


def _canonical(value: Any) -> bytes:
    """A key equal for equal JSON values (``uniqueItems``)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
