"""Request checks the endpoints share, failing as OpenAI does: 400s and 404s in its error shape.

Checks are plain ``isinstance`` tests on the decoded JSON: no schema library on the hot path.
"""

from __future__ import annotations

from typing import Any

from llmspool.core.errors import InvalidRequest, NotFound
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.config import MAX_OUTPUT_TOKENS

# Requested tier -> tier served and echoed. "fast" is served as "priority", like OpenAI.
_SERVED_TIER: dict[object, str] = {
    None: "default",
    "auto": "default",
    "default": "default",
    "flex": "flex",
    "scale": "scale",
    "priority": "priority",
    "fast": "priority",
}


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    """``param`` is not of the JSON type ``expected`` ("an object", "a string"...)."""
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, with its article: "an object", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def json_object(payload: Any) -> dict[str, Any]:
    """The request body, which must be a JSON object."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_request_body")
    return payload


def model(payload: dict[str, Any], catalog: ModelCatalog, *, embedding: bool) -> str:
    """The requested model id, known to the catalog and fit for the endpoint."""
    name = payload.get("model")
    if name is None:
        raise missing("model")
    if not isinstance(name, str):
        raise invalid("model", f"Invalid type for 'model': expected a string, got {name!r}.")
    if name not in catalog:
        raise NotFound(
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    if embedding and not catalog.is_embedding(name):
        raise invalid("model", f"The model `{name}` does not support embeddings.")
    if not embedding and catalog.is_embedding(name):
        raise NotFound(
            f"The model `{name}` is an embedding model and does not generate text.",
            param="model",
        )
    return name


def served_tier(payload: dict[str, Any], model: str, flex_models: frozenset[str]) -> str:
    """The tier the answer reports: the one asked, ``default`` for auto or none.

    Flex is refused (400, param ``service_tier``) for a model outside ``flex_models``.
    """
    asked = payload.get("service_tier")
    try:
        tier = _SERVED_TIER[asked]
    except (KeyError, TypeError):
        raise invalid(
            "service_tier",
            f"Invalid value for 'service_tier': {asked!r}. Supported values are: "
            "'auto', 'default', 'flex', 'scale', 'priority' and 'fast'.",
        ) from None
    if tier == "flex" and model not in flex_models:
        offered = ", ".join(sorted(flex_models)) or "none"
        raise invalid(
            "service_tier",
            f"Flex processing is not available for model `{model}`. Use service_tier 'auto' "
            f"or 'default', or a model that offers flex (here: {offered}).",
        )
    return tier


def flag(payload: dict[str, Any], param: str) -> bool:
    """A boolean parameter; absent or null is false."""
    value = payload.get(param)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(param, f"Invalid type for '{param}': expected a boolean, got {value!r}.")
    return value


def max_tokens(payload: dict[str, Any], *params: str) -> int | None:
    """The first of ``params`` that is set, as a token count from 1 up."""
    for param in params:
        value = payload.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(param, f"Invalid '{param}': expected an integer of at least 1.")
        if value > MAX_OUTPUT_TOKENS:
            raise invalid(
                param,
                f"Invalid '{param}': the simulator allows at most "
                f"{MAX_OUTPUT_TOKENS} output tokens.",
            )
        return value
    return None
