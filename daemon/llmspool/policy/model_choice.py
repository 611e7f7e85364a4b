"""Which model answers a request: an operation's ``route`` rules, and its ``cascade`` checks.

``ModelChooser.route`` applies ``[operations.NAME] route`` (``llmspool.core.config.routes``) to
a request: the first rule whose conditions all hold names the model, with the reason (its
number and conditions) that the front door puts in the ``x-llmspool-route`` header, the span
and the log. ``ModelChooser.accepts`` is a cascade's verdict on the cheaper model's answer.
Both are pure: the front door makes the calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.config.routes import CascadeConfig, RouteRule, RouteWhen
from llmspool.core.config.sections import Config, OperationConfig
from llmspool.core.errors import ApiError, ConfigError
from llmspool.policy.complexity import RequestFacts, heuristic_score
from llmspool.policy.routing import ModelRouter

Scorer = Callable[[Mapping[str, Any], str | None], float | None]
AnswerCheck = Callable[[Mapping[str, Any], Mapping[str, Any], str | None], bool | None]


@dataclass(frozen=True, slots=True)
class Route:
    """The model a rule chose for a request, and why."""

    model: str
    reason: str
    score: float | None = None  # the complexity score, when a rule asked for it


@dataclass(frozen=True, slots=True)
class Verdict:
    """A cascade's decision on the cheaper model's answer."""

    accepted: bool
    reason: str


class ModelChooser:
    """Applies the operations' routes and cascade checks."""

    def __init__(self, operations: Mapping[str, OperationConfig], *,
                 scorer: Scorer | None = None, check: AnswerCheck | None = None) -> None:
        self._operations = operations
        self._scorer = scorer
        self._check = check
        self._patterns: dict[str, re.Pattern[str]] = {}

    def routes(self, operation: str | None) -> bool:
        """Whether ``operation`` has route rules or a cascade."""
        config = self._operations.get(operation or "")
        return config is not None and (bool(config.route) or config.cascade is not None)

    def cascade(self, operation: str | None) -> CascadeConfig | None:
        config = self._operations.get(operation or "")
        return config.cascade if config is not None else None

    def route(self, body: Mapping[str, Any], operation: str | None) -> Route | None:
        """The model ``operation``'s rules send ``body`` to (None: no rule holds, or the
        operation has none)."""
        config = self._operations.get(operation or "")
        if config is None or not config.route:
            return None
        facts = RequestFacts(body)
        scored: list[float] = []
        for number, rule in enumerate(config.route, start=1):
            if self._holds(rule, facts, operation, scored):
                return Route(rule.model, f"rule {number} ({rule.when.describe()})",
                             scored[0] if scored else None)
        return None

    def accepts(self, cascade: CascadeConfig, answer: Mapping[str, Any],
                body: Mapping[str, Any], operation: str | None) -> Verdict:
        """Whether the cheaper model's ``answer`` is kept, and the check that decided."""
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        message = choice.get("message") if isinstance(choice, Mapping) else None
        message = message if isinstance(message, Mapping) else {}
        finish = choice.get("finish_reason") if isinstance(choice, Mapping) else None
        if finish not in cascade.finish_reasons:
            return Verdict(False, f"finish_reason {finish!r} is not one of "
                                  f"{list(cascade.finish_reasons)}")
        if not cascade.allow_refusal and (message.get("refusal") or finish == "content_filter"):
            return Verdict(False, "the answer is a refusal")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if cascade.matches is not None and not self._pattern(cascade.matches).search(text):
            return Verdict(False, f"the answer does not match {cascade.matches!r}")
        if cascade.json_schema is not None:
            problem = _schema_problem(text, cascade.json_schema)
            if problem is not None:
                return Verdict(False, problem)
        if self._check is not None and self._check(answer, body, operation) is False:
            return Verdict(False, "a plugin's llmspool_accept_answer said no")
        return Verdict(True, "passed its checks")

    def _holds(self, rule: RouteRule, facts: RequestFacts, operation: str | None,
               scored: list[float]) -> bool:
        when: RouteWhen = rule.when
        tokens = facts.prompt_tokens
        if when.prompt_tokens_over is not None and not tokens > when.prompt_tokens_over:
            return False
        if when.prompt_tokens_under is not None and not tokens < when.prompt_tokens_under:
            return False
        if when.has_tools is not None and facts.has_tools != when.has_tools:
            return False
        if when.has_images is not None and facts.has_images != when.has_images:
            return False
        if when.matches is not None and not self._pattern(when.matches).search(facts.text):
            return False
        if when.score_over is None and when.score_under is None:
            return True
        if not scored:  # scored once per request, whatever the number of rules asking
            scored.append(self._score(facts, operation))
        score = scored[0]
        if when.score_over is not None and not score > when.score_over:
            return False
        return when.score_under is None or score < when.score_under

    def _score(self, facts: RequestFacts, operation: str | None) -> float:
        if self._scorer is not None:
            given = self._scorer(facts.body, operation)
            if given is not None:
                return min(1.0, max(0.0, float(given)))
        return heuristic_score(facts)

    def _pattern(self, pattern: str) -> re.Pattern[str]:
        compiled = self._patterns.get(pattern)
        if compiled is None:
            compiled = self._patterns[pattern] = re.compile(pattern)
        return compiled


def _schema_problem(text: str, schema: Mapping[str, Any]) -> str | None:
    from jsonschema import validators  # loaded by the first cascade that checks a schema

    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "the answer is not JSON"
    error = next(iter(validators.validator_for(schema)(schema).iter_errors(document)), None)
    return None if error is None else f"the answer does not fit json_schema: {error.message}"


def check_routed_models(config: Config, router: ModelRouter) -> None:
    """Refuse to start with a route or cascade naming a model no provider serves (every
    request of that operation would fail with 404 otherwise); ``ConfigError`` names the key."""
    for name, operation in config.operations.items():
        named = [(f"operations.{name}.route", f"rule {number}: ", rule.model)
                 for number, rule in enumerate(operation.route, start=1)]
        if operation.cascade is not None:
            named.append((f"operations.{name}.cascade", "first: ", operation.cascade.first))
        for key, where, model in named:
            try:
                router.resolve(model)
            except ApiError as exc:
                raise ConfigError(key, f"{where}{exc.message}") from None
