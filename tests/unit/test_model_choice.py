"""Route rules and cascade checks: what ``[operations.NAME] route`` and ``cascade`` decide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llmspool.core.config.routes import CascadeConfig
from llmspool.core.config.tables import ConfigProblems
from llmspool.core.config_load import load_config
from llmspool.core.errors import ConfigError
from llmspool.policy.billing import load_price_book
from llmspool.policy.complexity import RequestFacts, heuristic_score
from llmspool.policy.model_choice import ModelChooser, check_routed_models
from llmspool.policy.routing import ModelRouter

ROUTES = """
[operations.support]
route = [
  { model = "gpt-4o", when = { prompt_tokens_over = 1000 } },
  { model = "gpt-4o", when = { has_images = true } },
  { model = "gpt-4o", when = { matches = "(?i)refund|legal" } },
  { model = "gpt-4o", when = { score_over = 0.5 } },
  { model = "gpt-4o-mini" },
]

[operations.support.cascade]
first = "gpt-4o-mini"
matches = "^\\\\{"
json_schema = { type = "object", required = ["label"] }
"""


def chooser(tmp_path: Path, toml: str = ROUTES, **hooks: Any) -> ModelChooser:
    path = tmp_path / "llmspool.toml"
    path.write_text(toml)
    return ModelChooser(load_config(path, environ={}).operations, **hooks)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}


def test_the_first_rule_that_holds_chooses_and_says_why(tmp_path: Path) -> None:
    choose = chooser(tmp_path)
    route = choose.route(chat("What is the capital of France?"), "support")
    assert route is not None and route.model == "gpt-4o-mini"
    assert route.reason == "rule 5 (default)"
    long = choose.route(chat("word " * 1000), "support")
    assert long is not None and (long.model, long.reason) == (
        "gpt-4o", "rule 1 (prompt_tokens_over = 1000)")
    legal = choose.route(chat("I want a REFUND now"), "support")
    assert legal is not None and legal.reason == 'rule 3 (matches = "(?i)refund|legal")'
    image = chat("")
    image["messages"][0]["content"] = [{"type": "text", "text": "what is this?"},
                                       {"type": "image_url", "image_url": {"url": "data:,"}}]
    seen = choose.route(image, "support")
    assert seen is not None and seen.reason == "rule 2 (has_images = true)"
    # Another operation, or none: no routing at all.
    assert choose.route(chat("hi"), "other") is None
    assert choose.route(chat("hi"), None) is None


def test_a_complex_request_scores_high_and_a_plugin_scorer_wins(tmp_path: Path) -> None:
    hard = ("Analyse the trade-offs of these two designs step by step, compare their failure "
            "modes and justify which to choose:\n1. a queue\n2. a log\n```def f(): pass```")
    easy = "Translate 'cat' to French."
    assert heuristic_score(RequestFacts(chat(hard))) > 0.5 > heuristic_score(
        RequestFacts(chat(easy)))
    choose = chooser(tmp_path)
    routed = choose.route(chat(hard), "support")
    assert routed is not None and routed.model == "gpt-4o" and routed.reason.startswith("rule 4")
    assert routed.score is not None and routed.score > 0.5
    # A plugin's score replaces the heuristic (and None leaves it to the heuristic).
    calls: list[str | None] = []

    def score(body: Any, operation: str | None) -> float | None:
        calls.append(operation)
        return 0.9 if "cat" in str(body) else None

    plugged = chooser(tmp_path, scorer=score)
    cat = plugged.route(chat(easy), "support")
    assert cat is not None and cat.model == "gpt-4o" and cat.score == 0.9
    assert calls == ["support"]  # once per request, however many rules ask


def test_cascade_checks_finish_reason_refusal_regex_schema_and_plugin(tmp_path: Path) -> None:
    choose = chooser(tmp_path)
    cascade = choose.cascade("support")
    assert isinstance(cascade, CascadeConfig) and cascade.first == "gpt-4o-mini"

    def answer(content: str | None, finish: str = "stop", refusal: str | None = None) -> Any:
        return {"choices": [{"finish_reason": finish, "message": {
            "role": "assistant", "content": content, "refusal": refusal}}]}

    def verdict(reply: Any, **kwargs: Any) -> tuple[bool, str]:
        decided = chooser(tmp_path, **kwargs).accepts(cascade, reply, chat("x"), "support")
        return decided.accepted, decided.reason

    assert verdict(answer('{"label": "spam"}')) == (True, "passed its checks")
    assert verdict(answer('{"label": "sp', "length")) == (
        False, "finish_reason 'length' is not one of ['stop']")
    assert verdict(answer(None, refusal="I can't")) == (False, "the answer is a refusal")
    assert verdict(answer("spam")) == (False, "the answer does not match '^\\\\{'")
    accepted, reason = verdict(answer('{"kind": "spam"}'))
    assert not accepted and reason == ("the answer does not fit json_schema: 'label' is a "
                                       "required property")
    assert verdict(answer('{"label": 1}'), check=lambda *_: False) == (
        False, "a plugin's llmspool_accept_answer said no")
    assert verdict(answer('{"label": 1}'), check=lambda *_: None)[0]


@pytest.mark.parametrize(("toml", "problem"), [
    ('route = [{ when = { has_tools = true } }]', "rule 1: model must be a model name"),
    ('route = [{ model = "m", when = { tokens = 3 } }]', "rule 1: unknown condition 'tokens'"),
    ('route = [{ model = "m", when = { score_over = 2 } }]',
     "rule 1: score_over is a complexity score, from 0 to 1"),
    ('route = [{ model = "m", when = { matches = "(" } }]',
     "rule 1: matches: not a valid regular expression"),
    ('route = [{ model = "m", when = { has_tools = "yes" } }]',
     "rule 1: has_tools must be true or false"),
    ('route = { model = "m" }', "expected a list of rules"),
    ('cascade = { model = "m" }', "unknown key 'model'"),
    ('cascade = { first = "m", json_schema = { type = 3 } }', "not a valid JSON schema"),
    ('cascade = { first = "m", finish_reasons = "stop" }', "finish_reasons must be a list"),
])
def test_bad_routes_and_cascades_are_refused_naming_the_key(tmp_path: Path, toml: str,
                                                            problem: str) -> None:
    path = tmp_path / "llmspool.toml"
    path.write_text(f"[operations.x]\n{toml}\n")
    with pytest.raises(ConfigProblems) as refused:
        load_config(path, environ={})
    assert problem in str(refused.value)
    assert "operations.x." in str(refused.value)


def test_a_route_or_cascade_naming_a_model_nobody_serves_is_refused_at_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "llmspool.toml"
    path.write_text('[operations.x]\nroute = [{ model = "gpt-4o-mini" }, { model = "gpt-9" }]\n'
                    '[operations.y]\ncascade = { first = "nope" }\n')
    config = load_config(path, environ={})
    router = ModelRouter.build(config.providers, load_price_book().table)
    with pytest.raises(ConfigError) as refused:
        check_routed_models(config, router)
    assert refused.value.key == "operations.x.route"
    assert "rule 2: The model `gpt-9` does not exist" in str(refused.value)
    path.write_text('[operations.y]\ncascade = { first = "nope" }\n')
    with pytest.raises(ConfigError, match="first: The model `nope`"):
        check_routed_models(load_config(path, environ={}), router)
