"""Deterministic unit-length embedding vectors, as floats or as OpenAI's base64 float32.

Making a fresh random vector per input would cost milliseconds of pure Python at 3072
dimensions. Instead a few random unit vectors are made once per dimension, and an input's
vector is one of them rotated by an offset, both chosen by the input's CRC. A rotation keeps the
length at exactly 1, costs one list slice, and the same text always gets the same vector.

Semantic mode (``[sim] semantic_embeddings``) gives similar texts similar vectors, for testing
near-duplicate matching: an input's key is then the CRCs of its lower-cased words (or of its
token ids), and its vector the normalised sum of one vector per word, each a rotation of a base
as above (with a sign). Word vectors are nearly orthogonal, so two texts' cosine similarity is
about the share of words they have in common: "What is the capital of France?" and "what is the
capital of france" get the same vector, 9 words of 10 in common about 0.9, unrelated texts
about 0. That mode sums with numpy: about 60 us for a 10-word input at 1536 dimensions (most of
it making the list of floats), against 5 us per input by default.
"""

from __future__ import annotations

import base64
import math
import random
import re
import sys
import zlib
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_BASES_PER_DIMENSION = 8
# Distinct dimensions kept; requests rarely use more than the models' defaults.
_MAX_CACHED_DIMENSIONS = 16
# Semantic mode: more bases, so two of the words of a test's texts rarely share a vector (64
# bases, two signs and 1536 rotations make 196,608 vectors; 100 words collide ~2.5% of the time).
_WORD_BASES_PER_DIMENSION = 64
_WORD = re.compile(r"\w+")

VectorKey = int | tuple[int, ...]
"""What decides an input's vector: its CRC, or in semantic mode the CRCs of its words."""


class _Bases:
    """The base unit vectors of one dimension, as float lists and float32 little-endian bytes."""

    __slots__ = ("as_bytes", "as_floats", "dimensions")

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        picker = random.Random(dimensions)
        self.as_floats: list[list[float]] = []
        self.as_bytes: list[bytes] = []
        for _ in range(_BASES_PER_DIMENSION):
            raw = [picker.gauss(0.0, 1.0) for _ in range(dimensions)]
            norm = math.sqrt(math.fsum(x * x for x in raw))
            # Ten decimals like OpenAI's own JSON: shorter bodies, still unit length to ~1e-9.
            floats = [round(x / norm, 10) for x in raw]
            packed = array("f", floats)
            if sys.byteorder != "little":
                packed.byteswap()
            self.as_floats.append(floats)
            self.as_bytes.append(packed.tobytes())


class _WordBases:
    """Semantic mode's base unit vectors of one dimension, each stored twice end to end so that
    a rotation is a slice of a row: a view, no copy."""

    __slots__ = ("dimensions", "doubled")

    def __init__(self, dimensions: int) -> None:
        # Imported here so the default mode's start-up does not pay numpy's ~80 ms import.
        import numpy as np

        self.dimensions = dimensions
        raw = np.random.default_rng(dimensions).standard_normal(
            (_WORD_BASES_PER_DIMENSION, dimensions)
        )
        raw /= np.linalg.norm(raw, axis=1, keepdims=True)
        self.doubled: npt.NDArray[np.float64] = np.concatenate([raw, raw], axis=1)

    def blend(self, word_keys: tuple[int, ...]) -> npt.NDArray[np.float64]:
        """The normalised sum of the words' vectors."""
        import numpy as np

        total = np.zeros(self.dimensions)
        for key in word_keys:
            total += self._word(key)
        norm = float(np.linalg.norm(total))
        # Words that cancel out (only likely at a handful of dimensions) still need a direction.
        return total / norm if norm > 1e-9 else self._word(word_keys[0])

    def _word(self, key: int) -> npt.NDArray[np.float64]:
        row: npt.NDArray[np.float64] = self.doubled[key % _WORD_BASES_PER_DIMENSION]
        key //= _WORD_BASES_PER_DIMENSION
        offset = (key >> 1) % self.dimensions
        segment = row[offset : offset + self.dimensions]
        return -segment if key & 1 else segment


class VectorMaker:
    """Turns an input's key (``key_of_text``, ``key_of_tokens``) into its embedding vector, for
    any dimension asked. ``semantic``: keys and vectors of semantic mode."""

    def __init__(self, *, semantic: bool = False) -> None:
        self.semantic = semantic
        self._bases: dict[int, _Bases] = {}
        self._word_bases: dict[int, _WordBases] = {}

    def warm(self, dimensions: int) -> None:
        """Make the base vectors of ``dimensions`` now, not during the first request."""
        self._bases_for(dimensions)
        if self.semantic:
            self._word_bases_for(dimensions)

    def key_of_text(self, text: str) -> VectorKey:
        """The key of a non-empty text input."""
        if self.semantic:
            words = tuple(zlib.crc32(word.encode("utf-8", "surrogatepass"))
                          for word in _WORD.findall(text.lower()))  # fmt: skip
            if words:
                return words
        # surrogatepass: JSON may carry lone surrogates, which must not crash a request.
        return zlib.crc32(text.encode("utf-8", "surrogatepass"))

    def key_of_tokens(self, tokens: Sequence[int]) -> VectorKey:
        """The key of a non-empty token-array input (token ids from 0 to 2**31 - 1)."""
        if self.semantic:
            return tuple(zlib.crc32(token.to_bytes(4, "little")) for token in tokens)
        return zlib.crc32(array("q", tokens).tobytes())

    def floats(self, key: VectorKey, dimensions: int) -> list[float]:
        """The vector for ``key`` as a list of floats."""
        if not isinstance(key, int):
            blended: list[float] = self._blend(key, dimensions).round(10).tolist()
            return blended
        bases = self._bases_for(dimensions)
        base = bases.as_floats[key % _BASES_PER_DIMENSION]
        offset = (key // _BASES_PER_DIMENSION) % dimensions
        return base[offset:] + base[:offset]

    def base64(self, key: VectorKey, dimensions: int) -> str:
        """The vector for ``key`` as base64 of little-endian float32, as OpenAI sends it."""
        if not isinstance(key, int):
            packed = self._blend(key, dimensions).astype("<f4").tobytes()
            return base64.b64encode(packed).decode("ascii")
        bases = self._bases_for(dimensions)
        base = bases.as_bytes[key % _BASES_PER_DIMENSION]
        offset = (key // _BASES_PER_DIMENSION) % dimensions * 4
        return base64.b64encode(base[offset:] + base[:offset]).decode("ascii")

    def _blend(self, word_keys: tuple[int, ...], dimensions: int) -> npt.NDArray[np.float64]:
        return self._word_bases_for(dimensions).blend(word_keys)

    def _bases_for(self, dimensions: int) -> _Bases:
        bases = self._bases.get(dimensions)
        if bases is None:
            if len(self._bases) >= _MAX_CACHED_DIMENSIONS:
                self._bases.pop(next(iter(self._bases)))
            bases = self._bases[dimensions] = _Bases(dimensions)
        return bases

    def _word_bases_for(self, dimensions: int) -> _WordBases:
        bases = self._word_bases.get(dimensions)
        if bases is None:
            if len(self._word_bases) >= _MAX_CACHED_DIMENSIONS:
                self._word_bases.pop(next(iter(self._word_bases)))
            bases = self._word_bases[dimensions] = _WordBases(dimensions)
        return bases
