"""A batch's lines: checking the input file, answering each request, writing the result files.

``check_input`` validates a ``.jsonl`` input as OpenAI does while a batch is ``validating``:
each problem is an ``errors.data[]`` entry with a 1-based ``line`` (codes
``invalid_json_line``, ``missing_required_parameter``, ``invalid_value``, ``invalid_method``,
``invalid_url``, ``duplicate_custom_id``, ``mismatched_model``; for the whole file
``empty_file`` and ``too_many_requests``).

``plan_lines`` answers every request of a valid file with the same code as the direct
endpoints (``parse_chat``, ``parse_response_request``, ``parse_embedding_request``), so a
line's body is what the endpoint would have answered, usage included. It also settles each
line's fate: a body the endpoint refuses gets that HTTP error (400/404) as its response;
``error_custom_ids`` and ``line_error_rate`` give an HTTP 500; ``line_failure_rate`` a failure
with no response (``error.code`` ``server_error``).

``render`` writes the output and error files in one pass once the batch finishes: the first
``done`` lines as answered (status 200 in the output file, the rest in the error file), the
lines after them as errors with the given code (``batch_expired``, ``batch_cancelled``).
Lines are encoded by joining bytes: an answer's body is never decoded again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmspool.core.errors import ApiError, InvalidRequest
from llmspool.sim.answer import Answer, Makers
from llmspool.sim.batch_config import BatchSettings, line_draw
from llmspool.sim.chat import parse_chat
from llmspool.sim.embeddings import parse_embedding_request
from llmspool.sim.responses import parse_response_request

Parser = Callable[[dict[str, Any], Makers], Answer]

PARSERS: dict[str, Parser] = {
    "/v1/chat/completions": parse_chat,
    "/v1/responses": parse_response_request,
    "/v1/embeddings": parse_embedding_request,
}
"""The endpoints a simulated batch may target, and how their requests are answered."""
MAX_LINES = 50_000
MAX_REPORTED_ERRORS = 100
"""Validation stops after this many errors: the batch object carries them on every poll."""

SERVER_ERROR_STATUS = 500
_SERVER_ERROR_BODY = ApiError(
    "The server had an error while processing your request. Sorry about that!"
).body()
_FAILURE = b'{"code":"server_error","message":"The server had an error processing this request."}'


@dataclass(frozen=True, slots=True)
class LineError:
    """One ``errors.data[]`` entry (``BatchError``)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(slots=True)
class CheckedInput:
    """A checked input file: its requests (``custom_id``, body) if it is valid, else errors."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    model: str | None = None
    errors: list[LineError] = field(default_factory=list)


def check_input(content: bytes, endpoint: str) -> CheckedInput:
    """Validate a batch input file for ``endpoint``; problems are in ``errors``."""
    checked = CheckedInput()
    raw_lines = content.split(b"\n")
    # Blank lines (a trailing newline, say) are skipped but still numbered.
    numbered = [(n, raw) for n, raw in enumerate(raw_lines, 1) if raw and not raw.isspace()]
    if not numbered:
        checked.errors.append(LineError("empty_file", "The batch input file is empty."))
        return checked
    if len(numbered) > MAX_LINES:
        checked.errors.append(
            LineError(
                "too_many_requests",
                f"The batch input file has {len(numbered)} requests, more than the maximum "
                f"of {MAX_LINES} requests per batch.",
            )
        )
        return checked
    seen: set[str] = set()
    errors = checked.errors
    for number, raw in numbered:
        error = _check_line(raw, number, endpoint, seen, checked)
        if error is not None:
            errors.append(error)
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        checked.requests = []
    return checked


def _check_line(
    raw: bytes, number: int, endpoint: str, seen: set[str], checked: CheckedInput
) -> LineError | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        line = None
    if not isinstance(line, dict):
        return LineError(
            "invalid_json_line",
            "This line is not parseable as valid JSON.",
            line=number,
        )
    missing = next((k for k in ("custom_id", "method", "url", "body") if k not in line), None)
    if missing is not None:
        return LineError(
            "missing_required_parameter",
            f"Missing required parameter: '{missing}'.",
            param=missing,
            line=number,
        )
    custom_id = line["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(
            "invalid_value", "'custom_id' must be a non-empty string.", "custom_id", number
        )
    if custom_id in seen:
        return LineError(
            "duplicate_custom_id",
            "The custom_id for this request is a duplicate of another request. The custom_id "
            "parameter must be unique for each request in a batch.",
            "custom_id",
            number,
        )
    seen.add(custom_id)
    if line["method"] != "POST":
        return LineError(
            "invalid_method",
            f"The method {line['method']!r} is not supported; batch requests use 'POST'.",
            "method",
            number,
        )
    if line["url"] != endpoint:
        return LineError(
            "invalid_url",
            f"The URL {line['url']!r} of this request does not match the batch endpoint "
            f"{endpoint!r}.",
            "url",
            number,
        )
    body = line["body"]
    if not isinstance(body, dict):
        return LineError("invalid_value", "'body' must be a JSON object.", "body", number)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineError(
            "missing_required_parameter",
            "Missing required parameter: 'body.model'.",
            "body.model",
            number,
        )
    if checked.model is None:
        checked.model = model
    elif model != checked.model:
        return LineError(
            "mismatched_model",
            f"The model {model!r} of this request differs from {checked.model!r} of the "
            "requests before it: all requests in a batch must use the same model.",
            "body.model",
            number,
        )
    checked.requests.append((custom_id, body))
    return None


@dataclass(slots=True)
class PlannedLine:
    """A request's fate: an answer (status 200), an HTTP error (status and body), or a failure
    without response (status 0)."""

    custom_id: str
    status: int
    answer: Answer | None = None
    error_body: bytes | None = None


@dataclass(slots=True)
class Plan:
    """Every line of a batch, answered or not, in file order."""

    lines: list[PlannedLine]
    bad: list[int]
    """Positions of the lines that will not be status 200, ascending (for progress counts)."""
    prompt_tokens: int
    """Estimated prompt tokens of all requests: what the batch enqueues."""


def plan_lines(
    requests: Sequence[tuple[str, dict[str, Any]]],
    endpoint: str,
    makers: Makers,
    settings: BatchSettings,
    seed: int,
    *,
    parse: Parser | None = None,
    is_error_id: Callable[[str], bool] | None = None,
) -> Plan:
    """Answer each request and decide its fault (see the module docstring).

    ``parse`` answers a request (default: the endpoint's parser, ``PARSERS``); ``is_error_id``
    tells the lines ``error_custom_ids`` names (default: a ``custom_id`` listed there)."""
    if parse is None:
        parse = PARSERS[endpoint]
    if is_error_id is None:
        is_error_id = frozenset(settings.error_custom_ids).__contains__
    failure_rate = settings.line_failure_rate
    fault_rate = failure_rate + settings.line_error_rate
    lines: list[PlannedLine] = []
    bad: list[int] = []
    tokens = 0
    for position, (custom_id, body) in enumerate(requests):
        try:
            answer = parse(body, makers)
            if answer.stream:
                raise InvalidRequest(
                    "Streaming is not supported in batch requests.",
                    param="stream",
                    code="invalid_value",
                )
        except ApiError as error:
            lines.append(PlannedLine(custom_id, error.status, error_body=error.body()))
            bad.append(position)
            continue
        tokens += answer.input_tokens
        # error_custom_ids win over the rates: a test that names a line knows its fate.
        draw = line_draw(seed, custom_id) if fault_rate > 0 else 1.0
        if is_error_id(custom_id) or failure_rate <= draw < fault_rate:
            lines.append(PlannedLine(custom_id, SERVER_ERROR_STATUS, error_body=_SERVER_ERROR_BODY))
        elif draw < failure_rate:
            lines.append(PlannedLine(custom_id, 0))
        else:
            lines.append(PlannedLine(custom_id, 200, answer=answer))
            continue
        bad.append(position)
    return Plan(lines=lines, bad=bad, prompt_tokens=tokens)


@dataclass(slots=True)
class Rendered:
    """The result files' content and what they add up to."""

    output: bytes
    errors: bytes
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int


def render(
    plan: Plan, done: int, unfinished: tuple[str, str], make_id: Callable[[str], str]
) -> Rendered:
    """The output and error files: the first ``done`` lines as planned, the others as
    ``{"code": unfinished[0], "message": unfinished[1]}`` errors."""
    output: list[bytes] = []
    errors: list[bytes] = []
    input_tokens = output_tokens = 0
    lines = plan.lines
    for line in lines[:done]:
        head = _head(make_id, line.custom_id)
        if line.answer is not None:
            answer = line.answer
            input_tokens += answer.input_tokens
            output_tokens += answer.billed_output_tokens
            output.append(_response(head, make_id, 200, answer.body()))
        elif line.status and line.error_body is not None:
            errors.append(_response(head, make_id, line.status, line.error_body))
        else:
            errors.append(head + b',"response":null,"error":' + _FAILURE + b"}\n")
    if done < len(lines):
        code, message = unfinished
        tail = b',"response":null,"error":' + orjson.dumps({"code": code, "message": message})
        errors.extend(_head(make_id, line.custom_id) + tail + b"}\n" for line in lines[done:])
    return Rendered(
        output=b"".join(output),
        errors=b"".join(errors),
        completed=len(output),
        failed=len(errors),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def _head(make_id: Callable[[str], str], custom_id: str) -> bytes:
    return b'{"id":"' + make_id("batch_req_").encode() + b'","custom_id":' + orjson.dumps(custom_id)


def _response(head: bytes, make_id: Callable[[str], str], status: int, body: bytes) -> bytes:
    return (
        head
        + b',"response":{"status_code":'
        + str(status).encode()
        + b',"request_id":"'
        + make_id("req_").encode()
        + b'","body":'
        + body
        + b'},"error":null}\n'
    )
