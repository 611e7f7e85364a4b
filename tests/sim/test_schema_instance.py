"""The sim's JSON schema instances, strict-mode checks and regex samples, without a sim process.

Every instance is checked by ``jsonschema`` (2020-12, formats checked) over many seeds.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, time
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator, Draft202012Validator
from llmspool.sim.regex_sample import sample
from llmspool.sim.schema_instance import SchemaProblem, instance, instance_json
from llmspool.sim.strict_schema import strict_problem
from llmspool.sim.text import TextGenerator
from pydantic import BaseModel, Field

WORDS = TextGenerator().text
SEEDS = range(40)


class Address(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^\d{5}(-\d{4})?$")


class Person(BaseModel):
    name: str = Field(min_length=3, max_length=12)
    age: int = Field(ge=18, lt=130)
    height: float = Field(gt=0.5, le=2.5)
    tags: list[str] = Field(min_length=2, max_length=4)
    address: Address
    previous: list[Address]
    nickname: str | None
    email: str = Field(json_schema_extra={"format": "email"})


class Tree(BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None


SCHEMAS: dict[str, dict[str, Any]] = {
    "scalars": {
        "type": "object",
        "properties": {
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "count": {"type": "integer", "minimum": -5, "maximum": 5},
            "even": {"type": "integer", "multipleOf": 2, "minimum": 1, "maximum": 9},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "step": {"type": "number", "multipleOf": 0.25, "minimum": 1},
            "negative": {"type": "integer", "maximum": -1000},
        },
    },
    "strings": {
        "type": "object",
        "properties": {
            "short": {"type": "string", "maxLength": 2},
            "long": {"type": "string", "minLength": 40},
            "fixed": {"type": "string", "minLength": 5, "maxLength": 5},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
            **{
                name: {"type": "string", "format": name}
                for name in ("date-time", "date", "time", "email", "uuid", "uri", "ipv4", "ipv6")
            },
        },
    },
    "choices": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", 3, None]},
            "version": {"const": "v1"},
            "nullable": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 7}]},
            "one": {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "integer"}]},
            "both": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
                ]
            },
        },
        "required": ["color", "version", "nullable", "either", "one", "both"],
    },
    "collections": {
        "type": "object",
        "properties": {
            "unique": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 3},
                "uniqueItems": True,
                "minItems": 2,
            },
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "string"}, {"type": "integer"}],
                "items": False,
            },
            "many": {"type": "array", "items": {"type": "boolean"}, "minItems": 5, "maxItems": 6},
            "none": {"type": "array", "maxItems": 0},
            "map": {"type": "object", "additionalProperties": {"type": "integer"}},
            "sized": {"type": "object", "minProperties": 3, "maxProperties": 3},
            "closed": {"type": "object", "properties": {}, "additionalProperties": False},
            "untyped": {},
            "required_only": {"required": ["x"]},
        },
    },
    "refs": {
        "type": "object",
        "properties": {
            "item": {"$ref": "#/$defs/Item"},
            "old": {"$ref": "#/definitions/Old"},
            "list": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
        },
        "required": ["item", "old", "list"],
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "kind": {"$ref": "#/$defs/Kind"}},
                "required": ["id", "kind"],
                "additionalProperties": False,
            },
            "Kind": {"type": "string", "enum": ["a", "b"]},
        },
        "definitions": {"Old": {"type": "string", "description": "draft 7"}},
    },
    "person": Person.model_json_schema(),
    "tree": Tree.model_json_schema(),
    "linked": {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "next": {"$ref": "#"}},
        "required": ["value"],
    },
    "array_root": {"type": "array", "items": {"type": "string"}},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_instances_validate_against_their_schema(name: str) -> None:
    schema = SCHEMAS[name]
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for seed in SEEDS:
        value = instance(schema, seed, WORDS)
        errors = [error.message for error in validator.iter_errors(value)]
        assert not errors, (seed, value, errors)


def test_formats_jsonschema_does_not_check_are_well_formed() -> None:
    for seed in SEEDS:
        value = instance(SCHEMAS["strings"], seed, WORDS)
        datetime.fromisoformat(value["date-time"].replace("Z", "+00:00"))
        time.fromisoformat(value["time"].replace("Z", "+00:00"))
        assert urlsplit(value["uri"]).scheme == "https"


def test_draft_4_exclusive_bounds_and_tuple_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "above": {"type": "integer", "minimum": 10, "exclusiveMinimum": True},
            "below": {"type": "number", "maximum": 0, "exclusiveMaximum": True},
            "tuple": {"type": "array", "items": [{"type": "string"}, {"type": "boolean"}]},
        },
        "required": ["above", "below", "tuple"],
    }
    validator = Draft4Validator(schema)
    for seed in SEEDS:
        value = instance(schema, seed, WORDS)
        assert validator.is_valid(value), value
        assert value["above"] > 10
        assert value["below"] < 0


def test_same_seed_same_instance_other_seed_other_instance() -> None:
    schema = SCHEMAS["person"]
    assert instance_json(schema, 7, WORDS) == instance_json(schema, 7, WORDS)
    assert len({instance_json(schema, seed, WORDS) for seed in SEEDS}) > len(SEEDS) // 2


def test_instance_json_is_compact_and_keeps_property_order() -> None:
    text = instance_json(SCHEMAS["refs"], 1, WORDS)
    assert " " not in text.replace('" "', "").split('"', 1)[0]
    assert list(re.findall(r'"(item|old|list)":', text)) == ["item", "old", "list"]


def test_recursion_ends_and_prefers_null_deep_down() -> None:
    tree = instance(SCHEMAS["tree"], 3, WORDS)
    depth = 0
    node = tree
    while node["parent"] is not None:
        node = node["parent"]
        depth += 1
    assert depth <= 8


def test_schemas_without_an_instance_raise_schema_problem() -> None:
    with pytest.raises(SchemaProblem, match="can't be resolved"):
        instance({"$ref": "#/$defs/Missing"}, 1, WORDS)
    with pytest.raises(SchemaProblem, match="not inside the schema"):
        instance({"$ref": "https://example.com/schema.json"}, 1, WORDS)
    endless = {
        "type": "object",
        "properties": {"again": {"$ref": "#"}},
        "required": ["again"],
    }
    with pytest.raises(SchemaProblem, match="too deep"):
        instance(endless, 1, WORDS)
    huge = {"type": "array", "minItems": 200, "items": {"type": "array", "minItems": 200}}
    with pytest.raises(SchemaProblem, match="over 10000 values"):
        instance(huge, 1, WORDS)
    with pytest.raises(SchemaProblem, match="characters"):
        instance({"type": "string", "minLength": 10**9}, 1, WORDS)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": 5},
        {"properties": [1]},
        {"required": "xy"},
        {"items": 5},
        {"anyOf": []},
        {"allOf": [1, {"type": "integer"}]},
        {"enum": []},
        {"type": "integer", "minimum": "5"},
        {"type": "number", "minimum": 1e308, "multipleOf": 1e-300},
        False,
        [],
    ],
)
def test_odd_schemas_get_a_value_not_an_exception(schema: Any) -> None:
    instance_json(schema, 1, WORDS)


def test_strict_problem_names_the_context_as_openai_does() -> None:
    assert strict_problem(Person.model_json_schema()) == (
        "In context=(), 'additionalProperties' is required to be supplied and to be false."
    )
    nested = {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {"x": {"type": "string"}, "y": {"type": "string"}},
                "required": ["x"],
                "additionalProperties": False,
            }
        },
        "required": ["a"],
        "additionalProperties": False,
    }
    assert strict_problem(nested) == (
        "In context=('properties', 'a'), 'required' is required to be supplied and to be an "
        "array including every key in properties. Missing 'y'."
    )
    assert strict_problem({"type": "array", "items": {}}) == (
        "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."
    )
    nested["properties"]["a"]["required"] = ["x", "y"]
    assert strict_problem(nested) is None


def test_strict_problem_looks_into_defs_items_and_any_of() -> None:
    def closed(**properties: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }

    open_object = {"type": "object", "properties": {}}
    for schema, context in (
        ({**closed(a={"$ref": "#/$defs/A"}), "$defs": {"A": open_object}}, "('$defs', 'A')"),
        (closed(a={"type": "array", "items": open_object}), "('properties', 'a', 'items')"),
        (closed(a={"anyOf": [{"type": "null"}, open_object]}), "('properties', 'a', 'anyOf', '1')"),
    ):
        problem = strict_problem(schema)
        assert problem is not None
        assert problem.startswith(f"In context={context}, 'additionalProperties'"), problem


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\d{3}-\d{4}$",
        r"^[A-Z][a-z]+(?: [A-Z][a-z]+)*$",
        r"^(foo|bar)+\.txt$",
        r"[^abc]{2,5}",
        r"^\w+@\w+\.com$",
        r"^(?P<head>[a-f0-9]{8})-(?:[a-f0-9]{4}-){3}[a-f0-9]{12}$",
        r"^\+?[1-9]\d{1,14}$",
        r"^[a-zA-Z0-9_-]{1,64}$",
        r"colou?r",
        r"^[-a]x*?$",
    ],
)
def test_regex_samples_match(pattern: str) -> None:
    for seed in SEEDS:
        text = sample(pattern, random.Random(seed))
        assert text is not None
        assert re.search(pattern, text), (pattern, text)


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?=x)x",
        r"(a)\1",
        r"[",
        r"a)",
        r"*a",
        r"a{2,1}",
        r"a{99999}",
        r"(a{1000}){1000}",
        r"((((){4000}){4000}){4000})",
        "(" * 100 + "a" + ")" * 100,
    ],
)
def test_regex_sample_gives_up_on_what_it_does_not_cover(pattern: str) -> None:
    assert sample(pattern, random.Random(1)) is None


@settings(max_examples=500, deadline=None)
@given(pattern=st.text(alphabet="ab0-]|()[^$*+?{},.:\\dwP<>=!", max_size=24), seed=st.integers())
def test_regex_sample_matches_or_gives_up_on_any_pattern(pattern: str, seed: int) -> None:
    text = sample(pattern, random.Random(seed))
    if text is not None:
        assert re.search(pattern, text)
