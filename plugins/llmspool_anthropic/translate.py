"""OpenAI Chat Completions requests -> Anthropic Messages params: pure functions, no I/O.

The daemon speaks OpenAI's shapes end to end (it bills, caches and relays OpenAI-shaped
answers), so the ``anthropic`` plugin translates at its boundary. This module owns the request
side, ``anthropic_params``: an OpenAI chat request body -> the params of ``POST /v1/messages``;
the answer side (completions, usage, errors) is ``llmspool_anthropic.answers``.

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
"""

from __future__ import annotations

from typing import Any

import orjson
from llmspool.plugin_api import InvalidRequest

__all__ = ["anthropic_params"]

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
