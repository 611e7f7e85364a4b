"""The format of an answer's text: chat's ``response_format`` and responses' ``text.format``.

``{"type": "text"}`` (the default) is the sim's usual text. ``{"type": "json_object"}`` (JSON
mode) is a JSON object, ``{"answer": "<the usual text>"}``; as with OpenAI, the conversation
must mention JSON. ``json_schema`` (Structured Outputs) is compact JSON text of an instance of
the schema (``schema_instance``), the same for the same request.

Checked as OpenAI does (400, ``param`` naming the field): the format's ``type``; a
``json_schema`` needs a ``name`` (``^[a-zA-Z0-9_-]+$``, at most 64 characters) and a
``schema`` object; with ``strict: true`` the schema must follow the strict rules
(``strict_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.schema_instance import SchemaProblem, Words, instance_json
from llmspool.sim.strict_schema import strict_problem
from llmspool.sim.tools import check_name

_KINDS = ("text", "json_object", "json_schema")


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What the answer's text must be."""

    kind: str = "text"
    """``text``, ``json_object`` or ``json_schema``."""
    name: str = ""
    schema: dict[str, Any] | None = None
    param: str = ""
    """Where the format is in the request (``response_format``), for errors about it."""

    @property
    def prompt(self) -> str:
        """The schema as the model reads it (counted as prompt tokens)."""
        return orjson.dumps(self.schema).decode() if self.schema is not None else ""

    def content(self, key: int, words: Words, tokens: int) -> str | None:
        """The answer's text for the prompt keyed ``key`` (``None``: the sim's usual text).

        ``tokens`` is the length of the usual text, which JSON mode wraps."""
        if self.kind == "json_object":
            return orjson.dumps({"answer": words(key, tokens)}).decode()
        if self.kind != "json_schema":
            return None
        try:
            return instance_json(self.schema, key, words)
        except SchemaProblem as problem:
            raise InvalidRequest(
                f"Invalid schema for response_format '{self.name}': {problem}",
                param=self.param,
                code="invalid_json_schema",
            ) from None


TEXT = OutputFormat()


def chat_format(payload: dict[str, Any]) -> OutputFormat:
    """A chat request's ``response_format`` (``json_schema`` nests its fields one level)."""
    spec = payload.get("response_format")
    if spec is None:
        return TEXT
    kind = _kind(spec, "response_format")
    if kind != "json_schema":
        return OutputFormat(kind, param="response_format")
    inner = spec.get("json_schema")
    if inner is None:
        raise validate.missing("response_format.json_schema")
    if not isinstance(inner, dict):
        raise validate.wrong_type("response_format.json_schema", "an object", inner)
    return _schema_format(inner, "response_format.json_schema", "response_format")


def response_format(payload: dict[str, Any]) -> OutputFormat:
    """A responses request's ``text.format``."""
    text = payload.get("text")
    if text is None:
        return TEXT
    if not isinstance(text, dict):
        raise validate.wrong_type("text", "an object", text)
    spec = text.get("format")
    if spec is None:
        return TEXT
    kind = _kind(spec, "text.format")
    if kind != "json_schema":
        return OutputFormat(kind, param="text.format")
    return _schema_format(spec, "text.format", "text.format.schema")


def mentions_json(content: Any) -> bool:
    """Whether a message's content (a string or text parts) says "json", in any case."""
    if isinstance(content, str):
        return "json" in content.lower()
    if isinstance(content, list):
        return any(
            mentions_json(part.get("text") if isinstance(part, dict) else part) for part in content
        )
    return False


def _kind(spec: Any, at: str) -> str:
    if not isinstance(spec, dict):
        raise validate.wrong_type(at, "an object", spec)
    kind = spec.get("type")
    if kind is None:
        raise validate.missing(f"{at}.type")
    if kind not in _KINDS:
        raise validate.invalid(
            f"{at}.type",
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object' and "
            "'json_schema'.",
        )
    return str(kind)


def _schema_format(spec: dict[str, Any], at: str, schema_param: str) -> OutputFormat:
    name = check_name(spec, at)
    schema = spec.get("schema")
    if schema is None:
        raise validate.missing(f"{at}.schema")
    if not isinstance(schema, dict):
        raise validate.wrong_type(f"{at}.schema", "an object", schema)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise validate.wrong_type(f"{at}.strict", "a boolean", strict)
    if strict:
        problem = strict_problem(schema)
        if problem is not None:
            raise InvalidRequest(
                f"Invalid schema for response_format '{name}': {problem}",
                param=schema_param,
            )
    return OutputFormat("json_schema", name=name, schema=schema, param=schema_param)
