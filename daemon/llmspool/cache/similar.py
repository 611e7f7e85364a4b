"""Near-duplicate matching for the response cache: requests that differ only in wording.

It owns three things. ``text_of`` picks the text of a request that is worth embedding (the
messages, the input, the instructions) and says when a request must never be near-matched
(embeddings, images, audio, files). ``shape_of`` is everything else of the request, as canonical
bytes: two requests are near-matched only when their shapes are equal, so the model, the
parameters, the tools and the number and roles of messages must all be the same and only the
words may differ. ``SimilarityIndex`` holds one embedding per cached answer, grouped by whatever
the caller puts in ``group`` (typically the shape's digest), and finds the closest one by cosine
similarity.

Each group is one float32 matrix of L2-normalised rows, so ``best`` is one matrix-vector product
and an argmax. Measured on the 2-core box this was written on (numpy 2.4, OpenBLAS), with 1536
dimensions in one group: 100,000 vectors (614 MB) about 23 ms per ``best`` (22 to 29 ms over
runs), 20,000 about 5 ms, 10,000 about 2.5 ms; ``add`` about 30 us. The product reads the whole
matrix once, so it is bound by memory bandwidth (here ~27 GB/s) and grows linearly with the
number of vectors: "a few milliseconds" holds up to about 20,000 vectors per group.
``max_vectors`` bounds both the memory and that time.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from llmspool.policy.cache_keys import IGNORED_FIELDS

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
TEXT_PLACEHOLDER = "<text>"
"""What ``shape_of`` puts where the words were."""

# Content part types that are words, and the field holding them. Any other part (image_url,
# input_image, input_audio, file, input_file...) carries something an embedding of the text
# cannot see, so its request is never near-matched.
_TEXT_PART_FIELDS = {"text": "text", "input_text": "text", "output_text": "text",
                     "refusal": "refusal"}  # fmt: skip
# As in ``keys.cache_key``: ``"temperature": 0`` and ``0.0`` are one request.
_FLOAT_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_INITIAL_ROWS = 16

Vector = Sequence[float] | bytes
"""An embedding: floats, or little-endian float32 bytes (OpenAI's base64, decoded)."""
_UnitVector = npt.NDArray[np.float32]


def text_of(endpoint_path: str, document: dict[str, Any]) -> str | None:
    """The text to embed for a request body, or None if the request must not be near-matched.

    Chat completions: one line per message, ``role: content``. Responses: the ``instructions``
    line, then the ``input`` (a string as it is, or its messages like chat's, and the output of
    function calls as ``tool:`` lines). Embeddings and other endpoints: None, they are only
    matched exactly. None too when there is no text, or any part that is not text.
    """
    if endpoint_path == CHAT_PATH:
        said = _chat_said(document.get("messages"))
    elif endpoint_path == RESPONSES_PATH:
        said = _responses_said(document)
    else:
        return None
    if said is None or not any(words.strip() for _, words in said):
        return None
    return "\n".join(words if who is None else f"{who}: {words}" for who, words in said)


def shape_of(endpoint_path: str, document: dict[str, Any]) -> bytes:
    """The request without its words and without the fields that do not change the answer, as
    canonical JSON (sorted keys). Requests may be near-matched only when their shapes are equal.

    The words (message contents, a function call's output, ``input``, ``instructions``) become
    ``TEXT_PLACEHOLDER``; messages keep their number, roles and every other field (names, tool
    calls). Only meaningful for requests ``text_of`` gives a text for: the placeholder also
    hides any image or file.
    """
    shape: dict[str, Any] = {}
    for name, value in document.items():
        if name in IGNORED_FIELDS:
            continue
        number = name in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool)
        shape[name] = float(value) if number else value
    if endpoint_path == CHAT_PATH:
        messages = shape.get("messages")
        if isinstance(messages, list):
            shape["messages"] = [_without_words(message, "content") for message in messages]
    elif endpoint_path == RESPONSES_PATH:
        if isinstance(shape.get("instructions"), str):
            shape["instructions"] = TEXT_PLACEHOLDER
        items = shape.get("input")
        if isinstance(items, str):
            shape["input"] = TEXT_PLACEHOLDER
        elif isinstance(items, list):
            shape["input"] = [_item_without_words(item) for item in items]
    return orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)


def decode_embedding(value: Any) -> list[float] | bytes:
    """An embedding as OpenAI answers it (a list of floats, or base64 of little-endian float32),
    ready for ``SimilarityIndex``. Raises ValueError for anything else."""
    if isinstance(value, list):
        if not value:
            raise ValueError("an embedding must have at least one number, got an empty list")
        for number in value:
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValueError(f"an embedding's list must hold only numbers, not {number!r}")
        return [float(number) for number in value]
    if isinstance(value, str):
        try:
            packed = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"an embedding string must be base64: {exc}") from exc
        if not packed or len(packed) % 4:
            raise ValueError(
                f"a base64 embedding must hold whole float32 numbers, got {len(packed)} bytes"
            )
        return packed
    raise ValueError(
        "an embedding must be a list of numbers or a base64 string of little-endian float32, "
        f"not {type(value).__name__}"
    )


class SimilarityIndex:
    """Unit vectors by entry id, in groups; finds the closest vector of a group.

    Holds at most ``max_vectors``: adding one more drops the oldest added (an entry added again
    counts from then). Not thread-safe; one owner uses it.
    """

    def __init__(self, max_vectors: int) -> None:
        if max_vectors < 1:
            raise ValueError(f"max_vectors must be at least 1, not {max_vectors}")
        self._max_vectors = max_vectors
        self._groups: dict[bytes, _Group] = {}
        # Oldest first, for dropping; each entry's group and row in that group's matrix.
        self._entries: OrderedDict[int, tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, group: bytes, entry_id: int, vector: Vector) -> None:
        """Hold ``vector`` (normalised to unit length) as ``entry_id`` in ``group``, replacing
        what that id held. Raises ValueError, holding nothing new, if the vector is empty, zero,
        not finite, or of another dimension than the group's."""
        unit = _unit(vector)
        target = self._groups.get(group)
        if target is not None:
            target.check_dimensions(unit)
        self.remove(entry_id)
        target = self._groups.get(group)  # the removal may have emptied, so deleted, it
        if target is None:
            target = self._groups[group] = _Group(unit.shape[0])
        self._entries[entry_id] = (group, target.append(entry_id, unit))
        while len(self._entries) > self._max_vectors:
            _, (oldest_group, row) = self._entries.popitem(last=False)
            self._drop_row(oldest_group, row)

    def remove(self, entry_id: int) -> None:
        """Forget ``entry_id``; nothing happens if it is not held."""
        place = self._entries.pop(entry_id, None)
        if place is not None:
            self._drop_row(*place)

    def best(self, group: bytes, vector: Vector) -> tuple[int, float] | None:
        """The entry of ``group`` most similar to ``vector`` and their cosine similarity (from
        -1 to 1), or None if the group holds nothing. Raises ValueError like ``add``."""
        target = self._groups.get(group)
        if target is None:
            return None
        unit = _unit(vector)
        target.check_dimensions(unit)
        scores = target.rows() @ unit
        row = int(np.argmax(scores))
        # float32 rounding can put a vector's similarity to itself a hair above 1.
        return target.entry_ids[row], min(1.0, max(-1.0, float(scores[row])))

    def _drop_row(self, group: bytes, row: int) -> None:
        target = self._groups[group]
        moved = target.swap_remove(row)
        if moved is not None:
            # Assigning to an existing key keeps its place in the oldest-first order.
            self._entries[moved] = (group, row)
        if not target.entry_ids:
            del self._groups[group]


class _Group:
    """The vectors of one group: rows ``0..len(entry_ids)`` of a matrix grown by doubling."""

    __slots__ = ("entry_ids", "matrix")

    def __init__(self, dimensions: int) -> None:
        self.matrix: _UnitVector = np.empty((_INITIAL_ROWS, dimensions), dtype=np.float32)
        self.entry_ids: list[int] = []
        """The entry id of each row in use."""

    def rows(self) -> _UnitVector:
        return self.matrix[: len(self.entry_ids)]

    def check_dimensions(self, unit: _UnitVector) -> None:
        if unit.shape[0] != self.matrix.shape[1]:
            raise ValueError(
                f"a vector of {unit.shape[0]} dimensions cannot be compared with this group's "
                f"vectors of {self.matrix.shape[1]}"
            )

    def append(self, entry_id: int, unit: _UnitVector) -> int:
        """Store ``unit`` in a new row; its index."""
        row = len(self.entry_ids)
        if row == self.matrix.shape[0]:
            self._resize(row * 2)
        self.matrix[row] = unit
        self.entry_ids.append(entry_id)
        return row

    def swap_remove(self, row: int) -> int | None:
        """Free ``row`` by moving the last row into it; the id of the entry moved, if any."""
        last = len(self.entry_ids) - 1
        moved: int | None = None
        if row != last:
            self.matrix[row] = self.matrix[last]
            moved = self.entry_ids[row] = self.entry_ids[last]
        self.entry_ids.pop()
        capacity = self.matrix.shape[0]
        # Shrinking at a quarter, not a half, keeps add/remove at the boundary from thrashing.
        if capacity > _INITIAL_ROWS and len(self.entry_ids) <= capacity // 4:
            self._resize(capacity // 2)
        return moved

    def _resize(self, capacity: int) -> None:
        count = len(self.entry_ids)
        resized = np.empty((capacity, self.matrix.shape[1]), dtype=np.float32)
        resized[:count] = self.matrix[:count]
        self.matrix = resized


def _unit(vector: Vector) -> _UnitVector:
    """``vector`` as float32 of length 1 (normalised in float64 for accuracy)."""
    if isinstance(vector, bytes):
        if len(vector) % 4:
            raise ValueError(f"float32 bytes come in fours, got {len(vector)} bytes")
        values = np.frombuffer(vector, dtype="<f4").astype(np.float64)
    else:
        values = np.asarray(vector, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"a vector must be a non-empty flat list of numbers, not {values.shape}")
    norm = float(np.linalg.norm(values))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("a vector must be finite and not all zeros to have a direction")
    unit: _UnitVector = (values / norm).astype(np.float32)
    return unit


# Who said what, in order: a role (or "instructions", "tool") and the words; None: no one.
_Said = list[tuple[str | None, str]]


def _chat_said(messages: Any) -> _Said | None:
    if not isinstance(messages, list):
        return None
    said: _Said = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None
        words = _words(message.get("content"))
        if words is None:
            return None
        said.append((message["role"], words))
    return said


def _responses_said(document: dict[str, Any]) -> _Said | None:
    said: _Said = []
    instructions = document.get("instructions")
    if isinstance(instructions, str):
        said.append(("instructions", instructions))
    elif instructions is not None:
        return None
    items = document.get("input")
    if isinstance(items, str):
        said.append((None, items))
        return said
    if not isinstance(items, list):
        return None
    for item in items:
        if not isinstance(item, dict):
            return None
        kind = item.get("type", "message")
        if kind == "message":
            words = _words(item.get("content"))
            if words is None or not isinstance(item.get("role"), str):
                return None
            said.append((item["role"], words))
        elif kind == "function_call_output":
            words = _words(item.get("output"))
            if words is None:
                return None
            said.append(("tool", words))
        # Anything else (function calls, reasoning, references) stays in the shape, so it must
        # be equal, not just similar.
    return said


def _words(content: Any) -> str | None:
    """The text of a message's content: a string, nothing, or a list of text parts."""
    if content is None:
        return ""  # an assistant message that only calls tools
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        field = _TEXT_PART_FIELDS.get(kind) if isinstance(kind, str) else None
        text = part.get(field) if field is not None else None
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def _without_words(message: Any, field: str) -> Any:
    if isinstance(message, dict) and message.get(field) is not None:
        return {**message, field: TEXT_PLACEHOLDER}
    return message


def _item_without_words(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    kind = item.get("type", "message")
    if kind == "message":
        return _without_words(item, "content")
    if kind == "function_call_output":
        return _without_words(item, "output")
    return item
