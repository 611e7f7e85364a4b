"""The control endpoints ``/_sim/*``: read and change the simulator while it runs.

Faults (``/_sim/faults``), flex capacity (``/_sim/flex``), rate limits (``/_sim/ratelimits``),
batch settings (``/_sim/batch``), the stats (``/_sim/stats``, ``/_sim/stats/reset``, which
empties the request log too) and the request log (``/_sim/requests[?since=SEQ&limit=N]``).
Control requests stay out of the stats. ``ROUTES`` maps each path to its methods.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmspool.core.errors import ConfigError, InvalidRequest, PayloadTooLarge
from llmspool.sim import validate
from llmspool.sim.asgi import BodyTooLarge, read_body
from llmspool.sim.batch_config import settings_from_command
from llmspool.sim.exchange import BAD_JSON, MAX_BODY_BYTES, Exchange, Handler
from llmspool.sim.faults import rules_from_json
from llmspool.sim.flex import command_from_json, config_json
from llmspool.sim.ratelimit import limits_from_command
from llmspool.sim.state import SimState


def _faults_json(state: SimState) -> dict[str, Any]:
    return {"faults": [rule.to_mapping() for rule in state.faults.active()]}


async def _get_faults(exchange: Exchange) -> None:
    await exchange.reply_json(200, _faults_json(exchange.state))


async def _set_faults(exchange: Exchange) -> None:
    try:
        body = await read_body(exchange.receive, MAX_BODY_BYTES)
        if body is None:
            return
        rules, seed = rules_from_json(orjson.loads(body))
    except orjson.JSONDecodeError:
        raise InvalidRequest(BAD_JSON) from None
    except BodyTooLarge:
        raise PayloadTooLarge("The fault rules are too large.") from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
    exchange.state.faults.replace(rules, seed=seed)
    await exchange.reply_json(200, _faults_json(exchange.state))


async def _clear_faults(exchange: Exchange) -> None:
    exchange.state.faults.clear()
    await exchange.reply_json(200, _faults_json(exchange.state))


def _flex_json(state: SimState) -> dict[str, Any]:
    return {
        **state.flex.state_json(),
        "config": config_json(state.config, state.makers.flex_models, state.flex_pacing),
    }


async def _get_flex(exchange: Exchange) -> None:
    await exchange.reply_json(200, _flex_json(exchange.state))


async def _set_flex(exchange: Exchange) -> None:
    try:
        body = await read_body(exchange.receive, MAX_BODY_BYTES)
        if body is None:
            return
        command = command_from_json(orjson.loads(body))
    except orjson.JSONDecodeError:
        raise InvalidRequest(BAD_JSON) from None
    except BodyTooLarge:
        raise PayloadTooLarge("The flex command is too large.") from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
    exchange.state.flex.apply(command)
    await exchange.reply_json(200, _flex_json(exchange.state))


async def _get_ratelimits(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.ratelimit.state_json())


async def _set_ratelimits(exchange: Exchange) -> None:
    """Change the limits (``enforce``, ``requests``, ``tokens``; ``"reset": true`` first
    goes back to the configured ones); every model's buckets start full again."""
    ratelimit = exchange.state.ratelimit
    try:
        body = await read_body(exchange.receive, MAX_BODY_BYTES)
        if body is None:
            return
        limits = limits_from_command(
            orjson.loads(body), ratelimit.limits, exchange.state.configured_limits
        )
    except orjson.JSONDecodeError:
        raise InvalidRequest(BAD_JSON) from None
    except BodyTooLarge:
        raise PayloadTooLarge("The rate-limit command is too large.") from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
    ratelimit.configure(limits)
    await exchange.reply_json(200, ratelimit.state_json())


def _stats_json(state: SimState) -> dict[str, Any]:
    return state.stats.to_json(state.batches.by_status(), state.ratelimit.limits.to_json())


async def _get_stats(exchange: Exchange) -> None:
    await exchange.reply_json(200, _stats_json(exchange.state))


async def _reset_stats(exchange: Exchange) -> None:
    state = exchange.state
    state.stats.reset()
    state.request_log.clear()
    await exchange.reply_json(200, _stats_json(state))


async def _get_requests(exchange: Exchange) -> None:
    """``GET /_sim/requests[?since=SEQ&limit=N]``: the request log after ``since``."""
    query = exchange.query()
    since = _whole_number(query, "since") or 0
    limit = _whole_number(query, "limit")
    if limit is not None and limit < 1:
        raise validate.invalid("limit", f"Invalid 'limit': expected at least 1, got {limit}.")
    state = exchange.state
    state.batches.advance()  # Batches that ended by now have their lines logged.
    await exchange.reply_json(200, state.request_log.to_json(since, limit))


async def _get_batch_settings(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.batches.settings.to_table())


async def _set_batch_settings(exchange: Exchange) -> None:
    """Change the settings of batches created from now on; ``"reset": true`` first goes
    back to the configured ones."""
    batches = exchange.state.batches
    try:
        body = await read_body(exchange.receive, MAX_BODY_BYTES)
        if body is None:
            return
        settings = settings_from_command(orjson.loads(body), batches.settings, batches.configured)
    except orjson.JSONDecodeError:
        raise InvalidRequest(BAD_JSON) from None
    except BodyTooLarge:
        raise PayloadTooLarge("The batch settings are too large.") from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
    batches.settings = settings
    await exchange.reply_json(200, settings.to_table())


def _whole_number(query: dict[str, str], name: str) -> int | None:
    """A query parameter that is a whole number (0 or more), or ``None`` if absent."""
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise validate.invalid(
            name, f"Invalid '{name}': expected a whole number (0 or more), got {text!r}."
        )
    return int(text)


ROUTES: dict[str, dict[str, Handler]] = {
    "/_sim/batch": {"GET": _get_batch_settings, "POST": _set_batch_settings},
    "/_sim/faults": {"GET": _get_faults, "POST": _set_faults, "DELETE": _clear_faults},
    "/_sim/flex": {"GET": _get_flex, "POST": _set_flex},
    "/_sim/ratelimits": {"GET": _get_ratelimits, "POST": _set_ratelimits},
    "/_sim/requests": {"GET": _get_requests},
    "/_sim/stats": {"GET": _get_stats},
    "/_sim/stats/reset": {"POST": _reset_stats},
}
"""The control endpoints: the methods of each path."""
