"""OpenAI Chat Completions <-> Anthropic Messages: pure functions, no I/O.

The daemon speaks OpenAI's shapes end to end (it bills, caches and relays OpenAI-shaped
answers), so the ``anthropic`` plugin translates at its boundary:

- ``anthropic_params``: an OpenAI chat request body -> the params of ``POST /v1/messages``;
- ``openai_completion``: an Anthropic ``message`` -> an OpenAI ``chat.completion``;
- ``openai_error``: an Anthropic error answer -> the status and OpenAI error body the daemon
  should see (``llmspool.resilience.failures`` classifies it from those).

What cannot be said to Anthropic honestly is refused with ``InvalidRequest`` naming the
parameter, rather than dropped: ``n`` > 1, ``logprobs``, audio, ``response_format``
``json_object``, penalties and ``logit_bias``, legacy ``functions``, and any parameter this
module does not know. Parameters that change nothing the caller can observe are dropped:
``service_tier`` (the daemon's tier hint; Anthropic's own tiers are not ours to pick),
``stream_options`` (read by the stream translator), ``store``, ``metadata``, ``seed``,
``prediction``.

System and developer messages, wherever they stand, become the top-level ``system`` (Anthropic
has no other place for them). Anthropic requires user and assistant turns to alternate, and
tool results to come back as ``tool_result`` blocks of a user turn, so consecutive messages of
one role are merged into one turn and ``tool`` messages join the user turn that follows them.

Usage: Anthropic's ``input_tokens`` counts only the input after the last cache breakpoint; the
OpenAI ``prompt_tokens`` is all the input, so it is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, with the cache reads as ``cached_tokens`` and the cache writes as
``cache_write_tokens`` under ``prompt_tokens_details`` (as ``llmspool.wire.usage_of`` reads it).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from llmspool.errors import InvalidRequest

__all__ = [
    "FINISH_REASONS",
    "anthropic_params",
    "finish_reason",
    "openai_completion",
    "openai_error",
    "openai_usage",
]

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A server tool loop paused; what came so far is a finished answer as far as a chat
    # completion can say.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason`` (anything else: ``stop``)."""

# Parameters read below, and those that are dropped because they change nothing the caller
# could observe in the answer (see the module docstring). Any other parameter is refused.
_HANDLED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "stream", "user", "tools", "tool_choice", "parallel_tool_calls", "n", "logprobs",
    "top_logprobs", "response_format", "modalities", "audio", "frequency_penalty",
    "presence_penalty", "logit_bias",
})
_DROPPED = frozenset({
    "service_tier", "stream_options", "store", "metadata", "seed", "prediction",
})
_MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1 where OpenAI's is 0..2
_MAX_MESSAGE_CHARS = 500


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


# -- requests -------------------------------------------------------------------------------


def anthropic_params(body: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """The params of an Anthropic ``POST /v1/messages`` for OpenAI chat request ``body``.

    Raises ``InvalidRequest`` (with ``param`` set) for what Anthropic cannot be asked."""
    for key in body:
        if key not in _HANDLED and key not in _DROPPED:
            if key in ("functions", "function_call"):
                raise _refuse(f"{key} (the legacy function-calling form) is not supported by "
                              "Anthropic providers; send tools and tool_choice instead", key)
            raise _refuse(f"{key} has no equivalent in Anthropic's Messages API; remove it "
                          "or send the request to an OpenAI provider", key)
    _refuse_the_untranslatable(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    system, turns = _conversation(messages)
    params: dict[str, Any] = {"model": body.get("model"), "messages": turns}
    if system:
        params["system"] = system[0]["text"] if len(system) == 1 else system
    params["max_tokens"] = _max_tokens(body, default_max_tokens)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= _MAX_TEMPERATURE:
            raise InvalidRequest(
                f"temperature {temperature!r} is outside Anthropic's range 0 to 1; send a "
                "value in that range", param="temperature")
        params["temperature"] = temperature
    if body.get("top_p") is not None:
        params["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        if sequences:
            params["stop_sequences"] = sequences
    if body.get("stream"):
        params["stream"] = True
    user = body.get("user")
    if isinstance(user, str) and user:
        params["metadata"] = {"user_id": user}
    _add_tools(body, params)
    output_format = _output_format(body.get("response_format"))
    if output_format is not None:
        params["output_config"] = {"format": output_format}
    return params


def _refuse_the_untranslatable(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise _refuse("n > 1 is not supported by Anthropic providers (one answer per call); "
                      "send n separate requests", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise _refuse("Anthropic does not return log probabilities; remove logprobs", param)
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _refuse("Anthropic models do not produce audio; remove audio and modalities",
                      "audio" if body.get("audio") is not None else "modalities")
    for penalty in ("frequency_penalty", "presence_penalty"):
        if body.get(penalty):  # 0 is what many clients send by default: it changes nothing
            raise _refuse(f"Anthropic has no {penalty}; remove it or set it to 0", penalty)
    if body.get("logit_bias"):
        raise _refuse("Anthropic has no logit_bias; remove it", "logit_bias")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{key} must be a positive integer", param=key)
        return value
    # Anthropic requires max_tokens; an OpenAI request may leave it out.
    return default


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system text blocks and the alternating user/assistant turns of ``messages``."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for at, message in enumerate(messages):
        where = f"messages[{at}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(block for block in _text_blocks(message.get("content"), where)
                          if block["text"])
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
            turn_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            turn_role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            turn_role = "user"
        else:
            raise InvalidRequest(
                f"{where}.role {role!r} is not one Anthropic providers take (system, "
                "developer, user, assistant, tool)", param=f"{where}.role")
        if not blocks:
            continue  # an empty message says nothing, and Anthropic refuses empty content
        if turns and turns[-1]["role"] == turn_role:
            _join(turns[-1], blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _join(turn: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """Add ``blocks`` to a turn of the same role. Anthropic wants a user turn's tool results
    before its other content, so results that follow text are moved ahead of it."""
    content: list[dict[str, Any]] = turn["content"]
    content.extend(blocks)
    if any(block["type"] == "tool_result" for block in blocks):
        results = [block for block in content if block["type"] == "tool_result"]
        others = [block for block in content if block["type"] != "tool_result"]
        turn["content"] = results + others


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Text-only content (system, developer, tool results): a string or a list of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts",
                             param=f"{where}.content")
    blocks = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}.content[{index}] must be a text part here",
                                 param=f"{where}.content[{index}]")
        blocks.append({"type": "text", "text": part["text"]})
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts",
                             param=f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        param = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), param))
        elif kind == "file":
            blocks.append(_document(part.get("file"), param))
        elif kind == "input_audio":
            raise _refuse("Anthropic models do not take audio input; remove the input_audio "
                          "part", param)
        else:
            raise InvalidRequest(f"{param} is not a content part Anthropic providers take "
                                 "(text, image_url, file with PDF data)", param=param)
    return blocks


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:TYPE;base64,DATA`` URL; None for another URL."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or not media_type:
        return None
    return media_type, data


def _image(image_url: Any, param: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise InvalidRequest(f"{param}.image_url.url must be a string", param=param)
    inline = _data_url(url)
    if inline is not None:
        media_type, data = inline
        return {"type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{param}: an image must be a base64 data: URL or an http(s) URL",
                         param=param)


def _document(file: Any, param: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    inline = _data_url(data) if isinstance(data, str) else None
    if inline is None or inline[0] != "application/pdf":
        raise _refuse("Anthropic providers take a file part only as PDF data "
                      "(file_data: data:application/pdf;base64,...); uploaded file ids are "
                      "OpenAI's", param)
    return {"type": "document",
            "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get(kind) if kind in ("text", "refusal") else None
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.content[{index}] must be a text or refusal part",
                                     param=f"{where}.content[{index}]")
            if text:
                blocks.append({"type": "text", "text": text})
    elif content is not None:
        raise InvalidRequest(f"{where}.content must be a string, a list of parts or null",
                             param=f"{where}.content")
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    for index, call in enumerate(tool_calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{index}]"))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
            or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where} must have an id and a function with a name",
                             param=where)
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object (Anthropic keeps a tool call's "
            "input as an object)", param=f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise InvalidRequest(f"{where}.tool_call_id must name the tool call it answers",
                             param=f"{where}.tool_call_id")
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, str):
        if content:
            result["content"] = content
    else:
        blocks = [block for block in _text_blocks(content, where) if block["text"]]
        if blocks:
            result["content"] = blocks
    return result


def _add_tools(body: dict[str, Any], params: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise InvalidRequest("tools must be a list", param="tools")
        params["tools"] = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and params.get("tools"):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # "none" takes no such flag: no tool is called at all
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        params["tool_choice"] = choice


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _refuse(f"{where}: Anthropic providers take only function tools",
                      f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function must have a name", param=f"{where}.function")
    translated: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    if function.get("strict") is True:
        translated["strict"] = True
    return translated


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise _refuse("tool_choice must be \"auto\", \"none\", \"required\" or "
                  "{\"type\": \"function\", \"function\": {\"name\": ...}} for Anthropic "
                  "providers", "tool_choice")


def _output_format(response_format: Any) -> dict[str, Any] | None:
    """Anthropic's ``output_config.format`` for an OpenAI ``response_format``."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON schema "
                                 "object", param="response_format")
        # Anthropic's structured outputs constrain decoding to the schema, as OpenAI's
        # strict mode does; a model without them refuses the call with its own 400.
        return {"type": "json_schema", "schema": schema}
    raise _refuse("Anthropic has no JSON mode without a schema; send response_format "
                  "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": ...}} instead",
                  "response_format")


# -- answers --------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason``."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI chat ``usage`` for an Anthropic ``usage`` object (see the module docstring)."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    prompt = _count(usage, "input_tokens") + cache_read + cache_write
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read,
                                  "cache_write_tokens": cache_write},
    }


def service_tier(usage: Any) -> str:
    """The ``service_tier`` an answer reports: Anthropic's own (``standard``, ``priority``,
    ``batch``) when its usage says, else ``default`` (standard, as OpenAI spells it)."""
    tier = usage.get("service_tier") if isinstance(usage, dict) else None
    return tier if isinstance(tier, str) and tier else "default"


def openai_completion(message: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` for an Anthropic ``message`` (``created``: now if None)."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append({
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"),
                             "arguments": orjson.dumps(block.get("input") or {}).decode()},
            })
        # thinking, redacted_thinking and server tool blocks have no chat completion field
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage = message.get("usage")
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model"),
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": None,
            "finish_reason": finish_reason(message.get("stop_reason")),
        }],
        "usage": openai_usage(usage),
        "service_tier": service_tier(usage),
    }


# -- errors ---------------------------------------------------------------------------------

# Anthropic error type -> (status the daemon sees, OpenAI type, OpenAI code). 529 becomes 503,
# which the daemon retries and counts against the provider's circuit breaker.
_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (None, "invalid_request_error", None),
    "authentication_error": (401, "authentication_error", "invalid_api_key"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "api_error": (None, "server_error", None),
    "overloaded_error": (503, "server_error", "overloaded"),
    "timeout_error": (504, "server_error", "upstream_timeout"),
    "conflict_error": (409, "invalid_request_error", "conflict"),
    # Billing trouble: waiting never helps, so it goes out as a 429 with a code the daemon
    # counts as quota (llmspool.resilience.failures.QUOTA_CODES): never retried.
    "billing_error": (429, "insufficient_quota", "billing_not_active"),
}
_STATUS_FOR_OVERLOAD = {529: 503}

# Messages Anthropic answers, as a 400 or a 429, when the account cannot pay: the code names
# what the operator must fix.
_QUOTA_MESSAGES = (
    ("credit balance is too low", "credit_balance_exhausted"),
    ("spend limit", "organization_spend_limit_exceeded"),
    ("specified api usage limits", "organization_spend_limit_exceeded"),
)
_QUOTA_DETAIL_CODES = {"enforced_spend_limit_reached": "organization_spend_limit_exceeded"}


def _error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def openai_error(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """The status the daemon should see and the OpenAI error body for an Anthropic error
    answer of ``status`` with ``body`` (raw bytes, text, or parsed JSON).

    A body that is not Anthropic's error shape gives a 502 saying what came back."""
    parsed = body
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(message, str) or not isinstance(kind, str):
        return 502, _error_body(
            f"Anthropic answered HTTP {status} with a body that is not an Anthropic error "
            f"({_preview(body)})", "bad_upstream_answer", "upstream_shape")
    quota = _quota_code(message, error)
    if quota is not None:
        return 429, _error_body(message, "insufficient_quota", quota)
    mapped_status, error_type, code = _ERRORS.get(kind, (None, kind, None))
    if kind == "invalid_request_error" and "prompt is too long" in message.lower():
        code = "context_length_exceeded"  # what OpenAI calls it; never worth a retry
    if kind == "not_found_error" and "model" in message.lower():
        code = "model_not_found"
    out_status = mapped_status or _STATUS_FOR_OVERLOAD.get(status, status)
    if out_status < 400:
        out_status = 502  # an error body on a success status: the answer cannot be trusted
    return out_status, _error_body(message, error_type, code)


def _quota_code(message: str, error: dict[str, Any]) -> str | None:
    details = error.get("details")
    detail_code = details.get("error_code") if isinstance(details, dict) else None
    if detail_code in _QUOTA_DETAIL_CODES:
        return _QUOTA_DETAIL_CODES[detail_code]
    lowered = message.lower()
    for needle, code in _QUOTA_MESSAGES:
        if needle in lowered:
            return code
    return None


def _preview(body: Any) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        text = bytes(body).decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        text = orjson.dumps(body, default=repr).decode()
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    cut = text[:_MAX_MESSAGE_CHARS]
    return f"starting {cut!r}" if len(text) > len(cut) else repr(cut)
