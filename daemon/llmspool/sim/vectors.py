"""Deterministic unit-length embedding vectors, as floats or as OpenAI's base64 float32.

Making a fresh random vector per input would cost milliseconds of pure Python at 3072
dimensions. Instead a few random unit vectors are made once per dimension, and an input's
vector is one of them rotated by an offset, both chosen by the input's CRC. A rotation keeps the
length at exactly 1, costs one list slice, and the same text always gets the same vector.
"""

from __future__ import annotations

import base64
import math
import random
import sys
from array import array

_BASES_PER_DIMENSION = 8
# Distinct dimensions kept; requests rarely use more than the models' defaults.
_MAX_CACHED_DIMENSIONS = 16


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


class VectorMaker:
    """Turns an input's CRC into its embedding vector, for any dimension asked."""

    def __init__(self) -> None:
        self._bases: dict[int, _Bases] = {}

    def warm(self, dimensions: int) -> None:
        """Make the base vectors of ``dimensions`` now, not during the first request."""
        self._bases_for(dimensions)

    def floats(self, key: int, dimensions: int) -> list[float]:
        """The vector for ``key`` as a list of floats."""
        bases = self._bases_for(dimensions)
        base = bases.as_floats[key % _BASES_PER_DIMENSION]
        offset = (key // _BASES_PER_DIMENSION) % dimensions
        return base[offset:] + base[:offset]

    def base64(self, key: int, dimensions: int) -> str:
        """The vector for ``key`` as base64 of little-endian float32, as OpenAI sends it."""
        bases = self._bases_for(dimensions)
        base = bases.as_bytes[key % _BASES_PER_DIMENSION]
        offset = (key // _BASES_PER_DIMENSION) % dimensions * 4
        return base64.b64encode(base[offset:] + base[:offset]).decode("ascii")

    def _bases_for(self, dimensions: int) -> _Bases:
        bases = self._bases.get(dimensions)
        if bases is None:
            if len(self._bases) >= _MAX_CACHED_DIMENSIONS:
                self._bases.pop(next(iter(self._bases)))
            bases = self._bases[dimensions] = _Bases(dimensions)
        return bases
