"""Answering a call without an upstream call: from a cached entry, or from the outcome of
the identical call it shared.

The client gets what the original caller got (a stored stream is replayed as a stream, with
the usage chunk kept from a client that did not ask for it), marked ``x-llmspool-cache: hit``
or ``shared``, with ``x-llmspool-tier: cache`` and a cost of 0. The ledger gets an entry of
cost 0 whose would-have-cost is what the request would have paid on the tier the planner
would have chosen for it, so ``llmspool costs`` counts it as a saving from cache or dedup.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from llmspool.cache.store import CachedAnswer, Corrupt
from llmspool.core.calls import Tier, Usage
from llmspool.core.wire import SseMeter
from llmspool.messages import Answer, Call, Reply, StreamEnd, StreamStart
from llmspool.policy.billing import bill
from llmspool.policy.cache_keys import HEADER
from llmspool.policy.planner import Planner
from llmspool.store.records import Settled

ZERO_COST = f"{0:.10f}"


def replies_for(call: Call, answer: CachedAnswer, how: str,
                would_have: int | None, *, similarity: float | None = None) -> list[Reply]:
    """What ``call``'s client is sent; ``how`` is ``hit`` or ``shared``, ``similarity`` how
    alike the answered request was when it was matched by wording.

    Raises ``Corrupt`` when a whole answer's body is not a JSON object.
    """
    headers = {HEADER: how, "x-llmspool-tier": Tier.CACHE.value, "x-llmspool-cost-usd": ZERO_COST,
               "x-llmspool-cache-age": f"{max(0.0, time.time() - answer.created_at):.0f}"}
    if similarity is not None:
        headers["x-llmspool-cache-similarity"] = f"{similarity:.4f}"
    if answer.stream:
        meter = SseMeter(strip_usage_chunk=call.strip_usage_chunk)
        events = meter.feed(answer.body) + meter.flush()
        return [StreamStart(200, headers, events), StreamEnd()]
    try:
        document: Any = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        raise Corrupt(answer.entry_id) from None
    if not isinstance(document, dict):
        raise Corrupt(answer.entry_id)
    return [Answer(200, headers, answer.body, Tier.CACHE, 0, would_have, document)]


def would_have_cost(planner: Planner, call: Call, usage: Usage) -> int | None:
    """What ``call`` would have paid for ``usage`` on the tier the planner would choose."""
    tier = planner.choose(call.provider, call.model, call.policy, call.deadline_at)
    return bill(planner.prices, call.provider, call.model, Tier.CACHE, usage,
                would_have_tier=tier).list_cost_picodollars


def ledger_entry(call: Call, source: str, would_have: int | None,
                 planner: Planner | None = None) -> Settled:
    """The ledger's record of a call answered without an upstream call (``source``: cache,
    dedup): no tokens billed, cost 0, and what it would have cost as the saving."""
    now = time.time()
    return Settled(
        request_id=call.request_id,
        provider=call.provider,
        model=call.model,
        endpoint=call.endpoint,
        tier=Tier.CACHE,
        usage=Usage(),
        cost_picodollars=0,
        standard_cost_picodollars=would_have,
        caller=call.caller,
        operation=call.operation,
        status=200,
        started_at=call.received_at,
        finished_at=now,
        session=call.session,
        saving_source=source,
        price_version=planner.prices.version if planner is not None else None,
        deadline_window=call.deadline_window(),
        late=call.deadline_at is not None and now > call.deadline_at,
    )
