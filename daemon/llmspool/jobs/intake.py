"""Turning an upload into job lines: OpenAI's Batch input format, checked line by line.

Each line must be a JSON object with a unique ``custom_id``, ``method`` POST, a ``url`` the
daemon forwards (chat completions, responses, embeddings), and a ``body`` object naming a
``model`` some provider serves; deferred requests cannot stream. Every bad line is reported
with its number and the reason, so a caller can fix a file in one go. A line of an operation
with ``route`` rules goes to the model they choose (``llmspool.policy.model_choice``), keeping
the model it asked for, whose price its saving is measured against; cascades are for
interactive calls only (a deferred line's answer is not waited on to be checked).

The JSON form (``{"requests": [...]}``) takes the same items, with ``custom_id`` and
``method`` optional (numbered ``request-N`` and POST).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from llmspool.core.calls import Endpoint
from llmspool.core.errors import ApiError
from llmspool.core.json_values import check_values
from llmspool.core.wire import kept_json
from llmspool.jobs.spool import LineSpool
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.model_choice import ModelChooser
from llmspool.policy.routing import ModelRouter
from llmspool.store.records import JobLine, LineError

_ENDPOINTS = {endpoint.value: endpoint for endpoint in Endpoint}
MAX_REPORTED_ERRORS = 1000  # past this, a file is clearly not what was meant


class Intake:
    """Collects valid lines and line errors from one upload."""

    def __init__(self, router: ModelRouter, *, max_line_size: int, max_json_values: int,
                 cache_rules: CacheRules | None = None, operation: str | None = None,
                 uid: int | None = None, endpoint: Endpoint | None = None,
                 chooser: ModelChooser | None = None,
                 spool_directory: Path | None = None) -> None:
        self._router = router
        self._chooser = chooser
        self._endpoint = endpoint  # a Batch API batch: every line must name its endpoint
        self._cache_rules = cache_rules
        self._operation = operation
        self._uid = uid
        self._max_line_size = max_line_size
        self._max_json_values = max_json_values
        self._seen: set[str] = set()
        # On disk when given a directory (the daemon's state directory): a 100,000-line
        # upload's checked lines are not held in memory until the job is stored.
        self.lines: list[JobLine] | LineSpool = (
            LineSpool(spool_directory) if spool_directory is not None else [])
        self.errors: list[LineError] = []  # the first MAX_REPORTED_ERRORS of them
        self.refused = 0

    def add_jsonl_file(self, file: IO[bytes]) -> None:
        """Every line of a Batch input file read from ``file`` a line at a time: a line over
        ``max_line_size`` is refused without being held in memory."""
        number = 0
        limit = self._max_line_size
        while True:
            raw = file.readline(limit + 1)
            if not raw:
                return
            number += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = file.readline(1 << 20)
                    size += len(raw)
                self._refuse(number, None, f"the line is {size} bytes or more, over the limit "
                             f"of {limit} ([jobs] max_line_size)", "line_too_large")
                continue
            if not raw.strip():
                continue
            try:
                check_values(raw, self._max_json_values, what="the line")
            except ApiError as error:
                self._refuse(number, None, error.message, error.code or "invalid_request")
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                self._refuse(number, None, f"not valid JSON: {exc}", "invalid_json_line")
                continue
            self._add(number, item, numbered=False)

    def add_items(self, items: Iterable[Any]) -> None:
        """Items of the JSON form; ``custom_id`` and ``method`` may be left out."""
        for number, item in enumerate(items, start=1):
            self._add(number, item, numbered=True)

    def _add(self, number: int, item: Any, *, numbered: bool) -> None:
        if not isinstance(item, dict):
            self._refuse(number, None, "must be a JSON object with custom_id, method, url, body")
            return
        custom_id = item.get("custom_id")
        if custom_id is None and numbered:
            custom_id = f"request-{number}"
        if not isinstance(custom_id, str) or not custom_id:
            self._refuse(number, None, "custom_id must be a non-empty string")
            return
        problem = self._problem(item, numbered=numbered)
        code = "invalid_request"
        if problem is None and self._endpoint is not None \
                and item["url"] != self._endpoint.value:
            problem = (f"url {item['url']} does not match the batch's endpoint "
                       f"{self._endpoint.value}; a batch's requests all go to one endpoint")
            code = "mismatched_endpoint"
        if problem is None and custom_id in self._seen:
            problem = f"custom_id {custom_id!r} appears more than once"
            code = "duplicate_custom_id"
        if problem is not None:
            self._refuse(number, custom_id, problem, code)
            return
        self._seen.add(custom_id)
        body: dict[str, Any] = item["body"]
        endpoint = _ENDPOINTS[item["url"]]
        asked = body["model"]
        route = self._chooser.route(body, self._operation) \
            if self._chooser is not None and endpoint is not Endpoint.EMBEDDINGS else None
        try:
            provider, model = self._router.resolve(route.model if route else asked)
            routed_from = self._asked(asked) if route and route.model != asked else None
        except ApiError as exc:
            self._refuse(number, custom_id, exc.message, "model_not_found")
            return
        if model != body["model"]:
            body = {**body, "model": model}
        # A job holds 100,000 bodies until they are stored.
        encoded = kept_json(body)
        plan = None
        if self._cache_rules is not None:
            plan = self._cache_rules.plan(endpoint, provider, model, body, header=None,
                                          operation=self._operation, uid=self._uid,
                                          stream=False)
        self.lines.append(JobLine(number, custom_id, endpoint, provider, model, encoded,
                                  plan.key if plan else None, plan.ttl if plan else None,
                                  routed_from))

    def _asked(self, model: str) -> tuple[str, str] | None:
        """(provider, model) a routed line asked for; None for a name no provider serves."""
        try:
            return self._router.resolve(model)
        except ApiError:
            return None

    @staticmethod
    def _problem(item: dict[str, Any], *, numbered: bool) -> str | None:
        method = item.get("method", "POST" if numbered else None)
        if method != "POST":
            return f"method must be POST, got {method!r}"
        url = item.get("url")
        if not isinstance(url, str) or url not in _ENDPOINTS:
            return f"url must be one of {', '.join(_ENDPOINTS)}, got {url!r}"
        body = item.get("body")
        if not isinstance(body, dict):
            return "body must be a JSON object (the endpoint's usual parameters)"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "body.model must name a model"
        if body.get("stream") is True:
            return "deferred requests cannot stream; remove body.stream"
        return None

    def _refuse(self, number: int, custom_id: str | None, message: str,
                code: str = "invalid_request") -> None:
        self.refused += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(number, custom_id, message, code))
