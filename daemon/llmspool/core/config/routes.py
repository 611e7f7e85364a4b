"""``[operations.NAME] route`` and ``cascade``: which model answers an operation's requests.

``route`` is a list of rules tried in order; the first whose conditions all hold sends the
request to its ``model`` (a rule with no ``when`` always holds: a default). When no rule holds,
the model the request names stands::

    [operations.support]
    route = [
      { model = "gpt-4o", when = { prompt_tokens_over = 4000 } },
      { model = "gpt-4o", when = { has_images = true } },
      { model = "gpt-4o", when = { matches = "(?i)refund|legal|contract" } },
      { model = "gpt-4o", when = { score_over = 0.6 } },
      { model = "gpt-4o-mini" },
    ]

``cascade`` tries a cheaper model first and keeps its answer when it passes the checks,
otherwise asks the model the request (or its route) chose::

    cascade = { first = "gpt-4o-mini", finish_reasons = ["stop"], matches = "^\\{",
                json_schema = { type = "object", required = ["label"] } }

This module reads and checks those values; ``llmspool.policy.model_choice`` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class RouteWhen:
    """The conditions of a rule; every one given must hold. Tokens are the prompt's estimated
    tokens (its text at four characters a token); ``score`` is the request's complexity, 0 to
    1, from the scorer (a plugin's ``llmspool_score_request``, or the built-in heuristic)."""

    prompt_tokens_over: int | None = None
    prompt_tokens_under: int | None = None
    has_tools: bool | None = None
    has_images: bool | None = None
    matches: str | None = None  # a regular expression searched in the messages' text
    score_over: float | None = None
    score_under: float | None = None

    def describe(self) -> str:
        """The conditions as an operator wrote them, for the reason a request was routed."""
        given = [(f.name, getattr(self, f.name)) for f in fields(self)]
        return ", ".join(f"{name} = {_toml(value)}" for name, value in given
                         if value is not None) or "default"


@dataclass(frozen=True, slots=True)
class RouteRule:
    model: str
    when: RouteWhen = RouteWhen()


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """Try ``first``; keep its answer when every check given passes: its finish reason is one
    of ``finish_reasons``, it is no refusal (unless ``allow_refusal``), its text ``matches``,
    it parses as JSON valid against ``json_schema``, and no plugin's ``llmspool_accept_answer``
    says no."""

    first: str
    finish_reasons: tuple[str, ...] = ("stop",)
    allow_refusal: bool = False
    matches: str | None = None
    json_schema: Mapping[str, Any] | None = None


_WHEN_TYPES: dict[str, tuple[type, ...]] = {
    "prompt_tokens_over": (int,), "prompt_tokens_under": (int,), "has_tools": (bool,),
    "has_images": (bool,), "matches": (str,), "score_over": (int, float),
    "score_under": (int, float),
}


def parse_routes(value: Any) -> tuple[RouteRule, ...]:
    """``route`` as read from TOML; raises ``ValueError`` naming the rule and key at fault."""
    if not isinstance(value, list):
        raise ValueError("expected a list of rules like [{ model = \"gpt-4o-mini\" }]")
    rules = []
    for number, rule in enumerate(value, start=1):
        where = f"rule {number}"
        if not isinstance(rule, dict):
            raise ValueError(f"{where}: expected a table like {{ model = \"...\" }}")
        unknown = set(rule) - {"model", "when"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (a rule has model "
                             "and when)")
        model = rule.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError(f"{where}: model must be a model name")
        rules.append(RouteRule(model, _when(rule.get("when", {}), where)))
    return tuple(rules)


def _when(value: Any, where: str) -> RouteWhen:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: when must be a table of conditions")
    values: dict[str, Any] = {}
    for key, given in value.items():
        types = _WHEN_TYPES.get(key)
        if types is None:
            raise ValueError(f"{where}: unknown condition {key!r} (known: "
                             f"{', '.join(sorted(_WHEN_TYPES))})")
        if not isinstance(given, types) or (bool not in types and isinstance(given, bool)):
            raise ValueError(f"{where}: {key} must be {_type_name(types)}, got {given!r}")
        if isinstance(given, str):
            _compile(given, f"{where}: {key}")
        elif isinstance(given, int | float) and not isinstance(given, bool):
            if key.startswith("score") and not 0 <= given <= 1:
                raise ValueError(f"{where}: {key} is a complexity score, from 0 to 1")
            if given < 0:
                raise ValueError(f"{where}: {key} must not be negative")
            values[key] = float(given) if key.startswith("score") else given
            continue
        values[key] = given
    return RouteWhen(**values)


def parse_cascade(value: Any) -> CascadeConfig:
    """``cascade`` as read from TOML; raises ``ValueError`` naming the key at fault."""
    if not isinstance(value, dict):
        raise ValueError("expected a table like { first = \"gpt-4o-mini\" }")
    known = {f.name for f in fields(CascadeConfig)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    first = value.get("first")
    if not isinstance(first, str) or not first:
        raise ValueError("first must name the model to try first")
    reasons = value.get("finish_reasons", ["stop"])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ValueError("finish_reasons must be a list of strings, e.g. [\"stop\"]")
    allow_refusal = value.get("allow_refusal", False)
    if not isinstance(allow_refusal, bool):
        raise ValueError("allow_refusal must be true or false")
    matches = value.get("matches")
    if matches is not None:
        if not isinstance(matches, str):
            raise ValueError("matches must be a regular expression")
        _compile(matches, "matches")
    schema = value.get("json_schema")
    if schema is not None:
        _check_schema(schema)
    return CascadeConfig(first, tuple(reasons), allow_refusal, matches, schema)


def routes_to_table(rules: tuple[RouteRule, ...]) -> list[dict[str, Any]]:
    """``route`` as TOML data again (``llmspool config show``)."""
    out = []
    for rule in rules:
        when = {f.name: getattr(rule.when, f.name) for f in fields(rule.when)
                if getattr(rule.when, f.name) is not None}
        out.append({"model": rule.model, **({"when": when} if when else {})})
    return out


def cascade_to_table(cascade: CascadeConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"first": cascade.first, "finish_reasons": list(cascade.finish_reasons),
                           "allow_refusal": cascade.allow_refusal}
    if cascade.matches is not None:
        out["matches"] = cascade.matches
    if cascade.json_schema is not None:
        out["json_schema"] = dict(cascade.json_schema)
    return out


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: not a valid regular expression ({exc})") from None


def _check_schema(schema: Any) -> None:
    from jsonschema import SchemaError, validators  # imported when a cascade is configured

    if not isinstance(schema, dict):
        raise ValueError("json_schema must be a table holding a JSON schema")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"json_schema is not a valid JSON schema: {exc.message}") from None


def _type_name(types: tuple[type, ...]) -> str:
    if bool in types:
        return "true or false"
    return "a number" if float in types else "an integer" if int in types else "a string"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value).replace("'", '"')
    return str(value)
