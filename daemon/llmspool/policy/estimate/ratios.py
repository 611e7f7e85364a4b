"""Characters per token, learned per model: the ratio path that estimates input tokens.

Characters ÷ chars-per-token, times a safety margin (8%) because an estimate reserves money
and an overestimate only holds a little budget for a moment, while an underestimate lets a
call overspend a cap. The ratio starts at 4.0 (OpenAI's rule of thumb for English in
o200k/cl100k; measured here: 3.9 for code and Markdown, 3.3-3.5 for JSON and prose mixed with
code, 4.5 for German, 1.6 for Chinese in o200k and 0.96 in cl100k) and is calibrated per
model: a running mean for the first ~20 samples, then an exponentially weighted mean (weight
0.05). It is bounded to 0.9-8 chars/token: below 1.5 (a bound one might guess) because CJK
text in cl100k really is ~1 char/token, and a low bound only ever over-reserves.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "MAX_CHARS_PER_TOKEN",
    "MIN_CHARS_PER_TOKEN",
    "SAFETY_MARGIN",
    "ModelRatio",
    "RatioTable",
]

DEFAULT_CHARS_PER_TOKEN: Final = 4.0
SAFETY_MARGIN: Final = 0.08
MIN_CHARS_PER_TOKEN: Final = 0.9
MAX_CHARS_PER_TOKEN: Final = 8.0
# After the running mean of the first samples, each new one moves the ratio by this share:
# slow enough that one odd request (a base64 blob pasted as text) cannot swing reservations.
RATIO_SMOOTHING: Final = 0.05


class ModelRatio:
    """One model's learned ratio, with how many samples (and tokenizer counts) shaped it."""

    __slots__ = ("chars_per_token", "samples", "tokenizer_samples")

    def __init__(self, chars_per_token: float) -> None:
        self.chars_per_token = chars_per_token
        self.samples = 0
        self.tokenizer_samples = 0

    def update(self, sample: float) -> None:
        """Move the ratio towards ``sample`` (chars per token of one observed call)."""
        self.samples += 1
        # A running mean (with the default as one pseudo-sample) converges quickly from the
        # first samples; the floor then turns it into an exponentially weighted mean that
        # follows drift (new prompt styles) without being swung by one request.
        weight = max(RATIO_SMOOTHING, 1.0 / (self.samples + 1))
        ratio = self.chars_per_token + weight * (clamp_ratio(sample) - self.chars_per_token)
        self.chars_per_token = clamp_ratio(ratio)


class RatioTable:
    """The ratios of at most ``max_models`` models, evicting the least recently used."""

    def __init__(self, default_chars_per_token: float, max_models: int) -> None:
        self.default = clamp_ratio(default_chars_per_token)
        self._max_models = max(1, max_models)
        self._ratios: OrderedDict[str, ModelRatio] = OrderedDict()

    def get(self, key: str) -> ModelRatio | None:
        """The ratio learned for ``key``, if any (does not count as a use)."""
        return self._ratios.get(key)

    def chars_per_token(self, key: str) -> float:
        """The ratio used for ``key``: learned, or the default."""
        entry = self._ratios.get(key)
        return entry.chars_per_token if entry is not None else self.default

    def entry(self, key: str) -> ModelRatio:
        """The ratio of ``key``, made from the default when new, and marked recently used."""
        entry = self._ratios.get(key)
        if entry is None:
            entry = self._ratios[key] = ModelRatio(self.default)
            if len(self._ratios) > self._max_models:
                self._ratios.popitem(last=False)
        else:
            self._ratios.move_to_end(key)
        return entry


def clamp_ratio(ratio: float) -> float:
    """``ratio`` bounded to MIN..MAX_CHARS_PER_TOKEN; the default when not finite."""
    if not math.isfinite(ratio):
        return DEFAULT_CHARS_PER_TOKEN
    return min(MAX_CHARS_PER_TOKEN, max(MIN_CHARS_PER_TOKEN, ratio))
