"""The service tier a call is sent on, written into its body as OpenAI's API wants it.

The daemon hands the plugin the tier it chose (``UpstreamRequest.tier``); OpenAI takes it as the
body's ``service_tier``: ``"flex"``, ``"priority"``, or ``"default"`` for standard. A body that
names no tier is standard already, so the common case is passed on untouched; it is re-encoded
only when it must change.
"""

from __future__ import annotations

import orjson
from llmspool.plugin_api import Tier

SERVICE_TIERS = {Tier.STANDARD: "default", Tier.FLEX: "flex", Tier.PRIORITY: "priority"}
"""The ``service_tier`` request value asking for each tier a call can be sent on."""


def body_for_tier(body: bytes, tier: Tier) -> bytes:
    """``body`` asking for ``tier``, re-encoded only when it asks for something else."""
    wanted = SERVICE_TIERS.get(tier)
    names_a_tier = b'"service_tier"' in body
    if wanted is None or (tier is Tier.STANDARD and not names_a_tier):
        return body  # no tier named means standard
    document = orjson.loads(body)
    if document.get("service_tier") == wanted:
        return body
    document["service_tier"] = wanted
    return orjson.dumps(document)
