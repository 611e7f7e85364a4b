"""Model routing and cascades end to end: a real daemon on its socket, the official client, and
``llmspool.testing``'s fake provider answering as each model would (the small model refuses
requests marked HARD), the ledger saying what routing saved or cost."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.core.calls import Endpoint, Tier
from llmspool.plugin_api import hookimpl
from llmspool.testing import (
    FakeUpstream,
    InProcessDaemon,
    ManualClock,
    running_with_fake,
)

from tests.support.money import billed_calls
from tests.support.processes import (
    openai_client,
    start_daemon,
    start_sim,
    unix_exchange,
    unix_request,
)
from tests.support.waiting import wait_for

CONFIG = """
[operations.support]
route = [
  { model = "gpt-4o", when = { matches = "(?i)contract" } },
  { model = "gpt-4o-mini" },
]

[operations.triage]
cascade = { first = "gpt-4o-mini" }

[operations.both]
route = [{ model = "gpt-4o", when = { matches = "(?i)contract" } }]
cascade = { first = "gpt-4o-mini" }
"""


class Upstream(FakeUpstream):
    """The small model refuses what is marked HARD; everyone else answers."""

    def answer(self, endpoint: Endpoint, body: Mapping[str, Any], tier: Tier) -> dict[str, Any]:
        answer = super().answer(endpoint, body, tier)
        if body.get("model") == "gpt-4o-mini" and "HARD" in orjson.dumps(body).decode():
            message = answer["choices"][0]["message"]
            message["content"], message["refusal"] = None, "I can't help with that."
        return answer


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[InProcessDaemon, Upstream]]:
    upstream = Upstream()
    with running_with_fake(tmp_path, upstream, CONFIG) as running:
        yield running, upstream


def ask(daemon: InProcessDaemon, text: str, operation: str,
        model: str = "gpt-4o") -> tuple[int, Any, dict[str, str]]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}]})
    return unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions", body,
                         {"content-type": "application/json", "x-llmspool-operation": operation})


def entries(daemon: InProcessDaemon) -> list[dict[str, Any]]:
    status, ledger = unix_request(daemon.socket_path, "GET", "/v1/ledger?limit=50")
    assert status == 200, ledger
    return list(reversed(ledger["entries"]))  # oldest first


def saved_by_source(daemon: InProcessDaemon) -> dict[str, float]:
    status, report = unix_request(daemon.socket_path, "GET", "/v1/ledger?by=&since=1d")
    assert status == 200, report
    return dict(report["total"]["saved_by_source"])


def test_a_route_sends_easy_work_to_the_small_model_and_says_why(
    daemon: tuple[InProcessDaemon, Upstream],
) -> None:
    running, upstream = daemon
    status, answer, headers = ask(running, "What are your opening hours?", "support")
    assert status == 200 and answer["model"] == "gpt-4o-mini"
    assert headers["x-llmspool-route"] == "gpt-4o-mini"
    assert headers["x-llmspool-route-reason"] == "rule 2 (default)"
    status, answer, headers = ask(running, "Please review this contract clause", "support")
    assert status == 200 and answer["model"] == "gpt-4o"
    assert headers["x-llmspool-route-reason"] == 'rule 1 (matches = "(?i)contract")'
    assert "x-llmspool-route" not in ask(running, "hi", "other")[2]  # no rules: as asked
    assert [r.model for r in upstream.requests] == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]
    # The easy call saved what gpt-4o would have cost, under "routing"; the others saved none.
    easy, hard, plain = entries(running)
    assert easy["saving_source"] == "routing" and easy["model"] == "gpt-4o-mini"
    assert easy["standard_cost_usd"] > easy["cost_usd"] > 0
    assert hard["saving_source"] is None and plain["saving_source"] is None
    assert saved_by_source(running)["routing"] == pytest.approx(
        easy["standard_cost_usd"] - easy["cost_usd"], abs=1e-9)


def test_a_cascade_keeps_a_good_cheap_answer_and_escalates_a_refusal(
    daemon: tuple[InProcessDaemon, Upstream],
) -> None:
    running, upstream = daemon
    status, answer, headers = ask(running, "Is this email spam?", "triage")
    assert status == 200 and answer["model"] == "gpt-4o-mini"
    assert headers["x-llmspool-cascade"] == "accepted (gpt-4o-mini)"
    status, answer, headers = ask(running, "HARD: untangle this thread", "triage")
    assert status == 200 and answer["model"] == "gpt-4o"
    assert answer["choices"][0]["message"]["content"]  # the larger model's answer
    assert headers["x-llmspool-cascade"] == "escalated: the answer is a refusal"
    assert headers["x-llmspool-route"] == "gpt-4o"
    assert [r.model for r in upstream.requests] == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]
    # Every call is in the ledger. The kept answer saved what gpt-4o would have cost; the
    # refused one is routing's loss, its whole cost; the escalated call is an ordinary call.
    accepted, refused, escalated = entries(running)
    assert [e["model"] for e in (accepted, refused, escalated)] == [
        "gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]
    assert [e["saving_source"] for e in (accepted, refused, escalated)] == [
        "routing", "routing", None]

    def saved(entry: dict[str, Any]) -> float:
        return float(entry["standard_cost_usd"]) - float(entry["cost_usd"])

    assert saved(accepted) > 0
    assert refused["standard_cost_usd"] == 0 and refused["cost_usd"] > 0
    assert saved(escalated) == 0
    assert saved_by_source(running)["routing"] == pytest.approx(
        sum(saved(e) for e in (accepted, refused, escalated)), abs=1e-9)


def test_a_streamed_request_is_not_cascaded(daemon: tuple[InProcessDaemon, Upstream]) -> None:
    running, upstream = daemon
    body = orjson.dumps({"model": "gpt-4o", "stream": True,
                         "messages": [{"role": "user", "content": "HARD: go"}]})
    status, _raw, headers = unix_exchange(
        running.socket_path, "POST", "/v1/chat/completions", body,
        {"content-type": "application/json", "x-llmspool-operation": "triage"})
    assert status == 200 and "x-llmspool-cascade" not in headers
    assert [r.model for r in upstream.requests] == ["gpt-4o"]


def test_a_rule_that_names_the_model_skips_the_cascade(
    daemon: tuple[InProcessDaemon, Upstream],
) -> None:
    running, upstream = daemon
    status, answer, headers = ask(running, "HARD: review this contract", "both")
    assert status == 200 and answer["model"] == "gpt-4o"
    assert headers["x-llmspool-route-reason"] == 'rule 1 (matches = "(?i)contract")'
    assert "x-llmspool-cascade" not in headers
    status, answer, headers = ask(running, "HARD: untangle this thread", "both")
    assert headers["x-llmspool-cascade"] == "escalated: the answer is a refusal"
    assert [r.model for r in upstream.requests] == ["gpt-4o", "gpt-4o-mini", "gpt-4o"]


def test_against_the_simulator_a_refused_cheap_answer_escalates_through_the_real_plugin(
    tmp_path: Path,
) -> None:
    # The simulator is told that gpt-4o-mini refuses what is marked HARD: (a fault rule), and
    # the daemon talks to it through the real OpenAI plugin.
    sim = start_sim(tmp_path)
    try:
        sim.set_faults({"kind": "refusal", "model": "gpt-4o-mini", "contains": "HARD:"})
        daemon = start_daemon(tmp_path, sim.url, config_toml=(
            '[operations.triage]\ncascade = { first = "gpt-4o-mini" }\n'
            '[operations.support]\nroute = [{ model = "gpt-4o-mini", when = '
            '{ prompt_tokens_under = 50 } }]\n'))
        try:
            client = openai_client(daemon.socket_path)
            easy = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "spam or not?"}],
                extra_headers={"x-llmspool-operation": "triage"})
            assert easy.headers["x-llmspool-cascade"] == "accepted (gpt-4o-mini)"
            assert easy.parse().model == "gpt-4o-mini"
            hard = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "HARD: and this?"}],
                extra_headers={"x-llmspool-operation": "triage"})
            assert hard.headers["x-llmspool-cascade"] == "escalated: the answer is a refusal"
            answer = hard.parse()
            assert answer.model == "gpt-4o" and answer.choices[0].message.content
            short = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hello"}],
                extra_headers={"x-llmspool-operation": "support"})
            assert short.headers["x-llmspool-route"] == "gpt-4o-mini"
            assert short.headers["x-llmspool-route-reason"] == \
                "rule 1 (prompt_tokens_under = 50)"
        finally:
            daemon.terminate()
        # What the simulator served: two cheap calls, then the escalation, then the route.
        assert [(c["model"], c["endpoint"]) for c in billed_calls(sim)] == [
            ("gpt-4o-mini", "/v1/chat/completions"), ("gpt-4o-mini", "/v1/chat/completions"),
            ("gpt-4o", "/v1/chat/completions"), ("gpt-4o-mini", "/v1/chat/completions")]
    finally:
        sim.terminate()


def job_lines(*texts: str) -> bytes:
    return b"".join(orjson.dumps({
        "custom_id": f"q{number}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]},
    }) + b"\n" for number, text in enumerate(texts))


@pytest.mark.parametrize("deadline", ["2m", "24h"])
def test_a_jobs_lines_are_routed_too_directly_and_through_a_batch(tmp_path: Path,
                                                                  deadline: str) -> None:
    # Two minutes: the lines are sent directly; 24 hours: through a batch (the fake's, ended
    # on cue, with a manual clock past the group's max_age). Either way the easy line goes to
    # the small model and its ledger entry saves against gpt-4o under "routing".
    clock = ManualClock()
    upstream = Upstream(clock=clock)
    with running_with_fake(tmp_path, upstream, CONFIG, clock=clock) as running:
        status, job = unix_request(
            running.socket_path, "POST", f"/v1/jobs?deadline={deadline}&operation=support",
            job_lines("Opening hours?", "Check this contract"),
            {"content-type": "application/jsonl"})
        assert status == 202, job
        if deadline == "24h":
            assert sorted((g["model"], g["tier"]) for g in job["plan"]) == [
                ("gpt-4o", "batch"), ("gpt-4o-mini", "batch")]
            clock.advance(301)
            wait_for(lambda: len(upstream.batches) == 2, timeout=10, what="a batch per model")
            assert upstream.finish_batches() == 2
            clock.advance(301)
        status, raw = unix_request(running.socket_path, "GET",
                                   f"/v1/jobs/{job['id']}/results?wait=20")
        assert status == 200, raw
        results = {line["custom_id"]: line for line in
                   (orjson.loads(text) for text in raw.splitlines() if text.strip())}
        assert results["q0"]["response"]["body"]["model"] == "gpt-4o-mini"
        assert results["q1"]["response"]["body"]["model"] == "gpt-4o"
        easy, hard = sorted(entries(running), key=lambda e: e["model"], reverse=True)
    assert easy["model"] == "gpt-4o-mini" and easy["saving_source"] == "routing"
    assert easy["standard_cost_usd"] > easy["cost_usd"] > 0
    assert hard["model"] == "gpt-4o"
    assert hard["saving_source"] == (None if deadline == "2m" else "tier")


class JudgingPlugin:
    """A plugin scoring every request as hard when it says "prove", and refusing any cheap
    answer to an operation named "strict"."""

    @hookimpl
    def llmspool_score_request(self, body: Mapping[str, Any],
                               operation: str | None) -> float | None:
        return 0.95 if "prove" in orjson.dumps(body).decode() else None

    @hookimpl
    def llmspool_accept_answer(self, answer: Mapping[str, Any], body: Mapping[str, Any],
                               operation: str | None) -> bool | None:
        return False if operation == "strict" else None


def test_a_plugins_score_and_answer_check_steer_routes_and_cascades(tmp_path: Path) -> None:
    config = (CONFIG + '[operations.scored]\nroute = [{ model = "gpt-4o", when = '
              '{ score_over = 0.9 } }, { model = "gpt-4o-mini" }]\n'
              '[operations.strict]\ncascade = { first = "gpt-4o-mini" }\n')
    with running_with_fake(tmp_path, Upstream(), config, plugins=[JudgingPlugin()]) as running:
        assert ask(running, "prove it", "scored")[2]["x-llmspool-route"] == "gpt-4o"
        assert ask(running, "hello", "scored")[2]["x-llmspool-route"] == "gpt-4o-mini"
        cascade = ask(running, "hello", "strict")[2]["x-llmspool-cascade"]
        assert cascade == "escalated: a plugin's llmspool_accept_answer said no"
