"""Token estimates for the cost ledger's reservations.

Before each call the ledger reserves what the call may cost (DESIGN.md, "cost ledger"); this
package says how many tokens that is. It runs for every request on the daemon's hot path
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
    ``encrypted_content``) are never counted as text. The characters are turned into tokens
    by a ratio learned per model (``ratios``), calibrated with an offline tokenizer when one is
    installed (``tokenizer``, chosen by model family in ``models``).

Output tokens
    The request's own limit, else a high percentile of what the model was seen to answer, else
    a default (``output``).

The ``estimator`` module holds ``TokenEstimator``, which puts these together and keeps the
state they learn; this package's names are its public face.
"""

from llmspool.policy.estimate.estimator import (
    METHOD_EXACT,
    METHOD_RATIO,
    METHOD_TOKENIZER,
    Estimate,
    TokenEstimator,
)
from llmspool.policy.estimate.models import encoding_for_model
from llmspool.policy.estimate.output import DEFAULT_OUTPUT_TOKENS, DEFAULT_REASONING_OUTPUT_TOKENS
from llmspool.policy.estimate.ratios import DEFAULT_CHARS_PER_TOKEN
from llmspool.policy.estimate.tokenizer import TextEncoder

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
