"""Scores for answers on the socket::

    POST /v1/feedback   {"response_id": "chatcmpl-...", "score": 0.8,
                         "label": "good", "comment": "..."}
                     or {"job_id": "job_...", "custom_id": "q1", "score": 0.8, ...}

``score`` is a number from 0 to 1; ``label`` (at most 100 characters) and ``comment`` (at most
4000) are optional text. A later score for the same answer replaces the earlier one. The answer
must be one the caller may see (its own, or any for the daemon's admins): another user's
answer answers 404 as an unknown one does, so nobody learns which ids exist. The costs report
(``GET /v1/ledger?by=...``) shows the scores beside spend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmspool.core.errors import InvalidRequest, NotFound
from llmspool.server.access import Access
from llmspool.server.bodies import read_limited
from llmspool.server.ledger_routes import LedgerTarget
from llmspool.server.routes import ask_status, json_response
from llmspool.server.uvicorn_server import caller_of
from llmspool.store.feedback import ScoredAnswer, find_answer, find_job_line, record_feedback
from llmspool.store.records import Viewer
from llmspool.store.writer import SideWriter

MAX_BODY = 64 * 1024
MAX_LABEL = 100
MAX_COMMENT = 4000


def feedback_routes(ledger: LedgerTarget, writer: SideWriter, access: Access, *,
                    clock: Callable[[], float] = time.time) -> list[Route]:
    """``POST /v1/feedback``: ``ledger`` is the ledger actor's inbox (asked first, so that an
    answer given just before is in the ledger), ``writer`` keeps the score."""

    async def give_feedback(request: Request) -> Response:
        body = await read_limited(request, MAX_BODY, _too_large)
        fields = _parse(body)
        viewer = access.viewer(caller_of(request.scope))
        await ask_status(ledger)
        answer = await writer.run(_find_and_record, fields, viewer, clock())
        if answer is None:
            name = (f"response id {fields['response_id']!r}" if "response_id" in fields
                    else f"job {fields['job_id']!r} line {fields['custom_id']!r}")
            raise NotFound(f"no answer with {name} that you may see (unknown, not yours, "
                           "failed, or not recorded)", param=_named_by(fields),
                           code="answer_not_found")
        return json_response({
            "object": "feedback", "response_id": answer.response_id,
            "job_id": answer.job_id, "custom_id": answer.custom_id,
            "score": fields["score"], "label": fields.get("label"),
            "comment": fields.get("comment"), "operation": answer.operation,
            "model": answer.model,
        })

    return [Route("/v1/feedback", give_feedback, methods=["POST"])]


def _find_and_record(connection: Any, fields: dict[str, Any], viewer: Viewer,
                     now: float) -> ScoredAnswer | None:
    if "response_id" in fields:
        answer = find_answer(connection, fields["response_id"], viewer)
    else:
        answer = find_job_line(connection, fields["job_id"], fields["custom_id"], viewer)
    if answer is not None:
        record_feedback(connection, answer, score=fields["score"], label=fields.get("label"),
                        comment=fields.get("comment"), scorer_uid=viewer.uid, now=now)
    return answer


def _parse(body: bytes) -> dict[str, Any]:
    """The checked fields of a feedback body; ``InvalidRequest`` names the field at fault."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc}); send one JSON object",
                             code="invalid_json") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    fields: dict[str, Any] = {}
    if "response_id" in document:
        fields["response_id"] = _text(document, "response_id", 200, required=True)
    elif "job_id" in document or "custom_id" in document:
        fields["job_id"] = _text(document, "job_id", 200, required=True)
        fields["custom_id"] = _text(document, "custom_id", 200, required=True)
    else:
        raise InvalidRequest("name the answer: 'response_id' (the id of a chat completion or "
                             "response), or 'job_id' and 'custom_id' (a job line)",
                             param="response_id", code="missing_required_parameter")
    score = document.get("score")
    if score is None:
        raise InvalidRequest("missing required parameter: 'score' (a number from 0 to 1)",
                             param="score", code="missing_required_parameter")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(
            score) or not 0 <= score <= 1:
        raise InvalidRequest(f"'score' must be a number from 0 to 1, got {score!r}",
                             param="score", code="invalid_score")
    fields["score"] = float(score)
    for name, limit in (("label", MAX_LABEL), ("comment", MAX_COMMENT)):
        value = _text(document, name, limit, required=False)
        if value is not None:
            fields[name] = value
    return fields


def _text(document: dict[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name,
                             code="invalid_type")
    if len(value) > limit:
        raise InvalidRequest(f"'{name}' is {len(value)} characters; at most {limit}",
                             param=name, code="too_long")
    return value


def _named_by(fields: dict[str, Any]) -> str:
    return "response_id" if "response_id" in fields else "custom_id"


def _too_large(size: int, limit: int) -> InvalidRequest:
    return InvalidRequest(f"a feedback body is at most {limit} bytes; this one is {size} or "
                          "more", code="body_too_large")
