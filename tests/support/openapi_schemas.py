"""Answers checked against the JSON schemas of OpenAI's published OpenAPI spec, by a full JSON
Schema 2020-12 validator (OpenAPI 3.1's schema dialect): ``$ref``, ``anyOf``, ``enum``,
``required``, types and bounds, exactly as the spec states them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml"
_URI = "urn:openai-openapi"


class OpenApiSchemas:
    """The spec's ``components.schemas``, each usable as a validator by name."""

    def __init__(self, spec_path: Path = SPEC) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with spec_path.open() as file:
            spec = yaml.load(file, Loader=loader)
        self._registry: Registry[Any] = Registry().with_resource(
            _URI, Resource(contents=spec, specification=DRAFT202012))
        self._validators: dict[str, Draft202012Validator] = {}
        self.names = set(spec["components"]["schemas"])

    def problems(self, schema: str, value: Any) -> list[str]:
        """What is wrong with ``value`` as a ``schema`` (empty if nothing)."""
        if schema not in self.names:
            raise KeyError(f"the spec has no schema {schema!r}")
        validator = self._validators.get(schema)
        if validator is None:
            validator = self._validators[schema] = Draft202012Validator(
                {"$ref": f"{_URI}#/components/schemas/{schema}"}, registry=self._registry)
        return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
                for error in validator.iter_errors(value)]

    def check(self, schema: str, value: Any) -> None:
        found = self.problems(schema, value)
        assert not found, f"not a valid {schema}: {found[:5]}"
