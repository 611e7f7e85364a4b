"""Output tokens to reserve: the request's own limit, else what the model was seen to answer.

``max_completion_tokens`` or ``max_tokens`` (chat, times ``n`` choices) or
``max_output_tokens`` (responses) when given; 0 for embeddings; otherwise the 95th percentile
of the last 256 observed output tokens per (model, operation) once 20 have been seen, and
before that 1,024 tokens, or 4,096 for reasoning models (o1, o3, o4, gpt-5, gpt-oss, or a
request that sets reasoning options), whose hidden reasoning is billed as output. Values are
capped at 2**20 tokens so a junk limit cannot make an absurd reservation.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Final

from llmspool.core.calls import Endpoint
from llmspool.policy.estimate.models import is_reasoning_model

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_REASONING_OUTPUT_TOKENS",
    "MAX_OUTPUT_KEYS",
    "OUTPUT_WINDOW",
    "OutputSizes",
]

DEFAULT_OUTPUT_TOKENS: Final = 1024
DEFAULT_REASONING_OUTPUT_TOKENS: Final = 4096
MAX_OUTPUT_TOKENS: Final = 1 << 20
MAX_CHOICES: Final = 128  # OpenAI's limit on chat ``n``
OUTPUT_PERCENTILE: Final = 0.95
OUTPUT_WINDOW: Final = 256
MIN_OUTPUT_SAMPLES: Final = 20
MAX_OUTPUT_KEYS: Final = 1024


class OutputSizes:
    """Output sizes learned per (model key, operation), and the rule that reserves output.

    At most ``max_keys`` windows are kept, evicting the least recently used.
    """

    def __init__(self, max_keys: int, window: int) -> None:
        self._max_keys = max(1, max_keys)
        self._window = max(1, window)
        self._outputs: OrderedDict[tuple[str, str | None], _OutputWindow] = OrderedDict()

    def observe(self, key: str, operation: str | None, output_tokens: int) -> None:
        """Record a settled call's output tokens under (``key``, ``operation``)."""
        learned_key = (key, operation if isinstance(operation, str) else None)
        window = self._outputs.get(learned_key)
        if window is None:
            window = self._outputs[learned_key] = _OutputWindow(self._window)
            if len(self._outputs) > self._max_keys:
                self._outputs.popitem(last=False)
        else:
            self._outputs.move_to_end(learned_key)
        window.add(output_tokens)

    def tokens_for(
        self,
        endpoint: Endpoint,
        body: Mapping[str, object],
        model: str,
        key: str,
        operation: str | None,
    ) -> int:
        """Output tokens to reserve for a request to ``endpoint`` with ``body``."""
        if endpoint == Endpoint.EMBEDDINGS:
            return 0
        limit: int | None = None
        choices = 1
        if endpoint == Endpoint.CHAT:
            limit = _positive_count(body.get("max_completion_tokens"))
            if limit is None:
                limit = _positive_count(body.get("max_tokens"))
            # Each of ``n`` choices may use up to the limit.
            choices = min(_positive_count(body.get("n")) or 1, MAX_CHOICES)
        elif endpoint == Endpoint.RESPONSES:
            limit = _positive_count(body.get("max_output_tokens"))
        if limit is not None:
            return min(limit, MAX_OUTPUT_TOKENS) * choices
        window = self._outputs.get((key, operation if isinstance(operation, str) else None))
        learned = window.high() if window is not None else None
        if learned is not None:
            # Observed usage already covers every choice the call returned.
            return min(learned, MAX_OUTPUT_TOKENS)
        reasoning = is_reasoning_model(model) or (
            body.get("reasoning") is not None or body.get("reasoning_effort") is not None
        )
        default = DEFAULT_REASONING_OUTPUT_TOKENS if reasoning else DEFAULT_OUTPUT_TOKENS
        return default * choices


class _OutputWindow:
    """The last output sizes of one (model, operation), with their high percentile cached."""

    __slots__ = ("_high", "_samples")

    def __init__(self, size: int) -> None:
        self._samples: deque[int] = deque(maxlen=size)
        self._high: int | None = None

    def add(self, output_tokens: int) -> None:
        self._samples.append(output_tokens)
        self._high = None

    def high(self) -> int | None:
        """The OUTPUT_PERCENTILE of the window (nearest rank), None until enough samples."""
        if len(self._samples) < MIN_OUTPUT_SAMPLES:
            return None
        if self._high is None:  # sorted once per new observation, not once per estimate
            ordered = sorted(self._samples)
            rank = math.ceil(OUTPUT_PERCENTILE * len(ordered))
            self._high = ordered[min(len(ordered), max(1, rank)) - 1]
        return self._high


def _positive_count(value: object) -> int | None:
    """A positive token limit or count from a body (JSON may spell 100 as 100.0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 1:
        return min(math.ceil(value), MAX_OUTPUT_TOKENS)
    return None
