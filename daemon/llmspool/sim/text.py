"""Token counting and the fake, deterministic answer text.

Tokens are estimated at about four characters each (at least one), the ratio OpenAI quotes for
English text; a real tokenizer would cost more CPU than the whole simulated request.

Answer text is made of four-character tokens (a three-letter word and a space) taken from a
fixed cycle of words, starting at a point chosen by the prompt's CRC: the same prompt always
gets the same answer, and ``count_tokens(answer)`` is exactly the number of tokens generated.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

CHARS_PER_TOKEN = 4

_WORDS = (
    "the", "sim", "and", "fox", "ran", "far", "day", "new", "old", "big", "sun", "sky", "sea",
    "map", "key", "log", "job", "run", "set", "get", "put", "add", "sum", "all", "any", "one",
    "two", "six", "ten", "red", "ink", "pen", "cup", "tea", "hot", "ice", "air", "fog", "dew",
    "oak", "elm", "ash", "bee", "ant", "owl", "cat", "dog", "yak", "emu", "cod", "eel", "jay",
    "now", "yet", "too", "why", "how", "who", "say", "ask", "try", "use", "fit", "win",
)  # fmt: skip

# A prime cycle length keeps answers for nearby CRCs from lining up.
_CYCLE_TOKENS = 1021
# Answers up to this many tokens are one slice of a precomputed string.
_PRECOMPUTED_TOKENS = 8192


def count_tokens(text: str) -> int:
    """Estimated tokens in ``text``: about four characters each, at least one."""
    return tokens_for_chars(len(text))


def tokens_for_chars(chars: int) -> int:
    """Estimated tokens in a text of ``chars`` characters (at least one)."""
    return max(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


class PromptMeter:
    """Measures the text of a prompt as it is walked: its length (for tokens) and CRC (the key
    of its answer). Non-text parts (images, audio) count nothing."""

    __slots__ = ("chars", "crc")

    def __init__(self) -> None:
        self.chars = 0
        self.crc = 0

    def add(self, text: str) -> None:
        self.chars += len(text)
        # surrogatepass: JSON may carry lone surrogates, which must not crash a request.
        self.crc = zlib.crc32(text.encode("utf-8", "surrogatepass"), self.crc)

    def add_content(self, content: Any) -> None:
        """Add a message's content: a string, or a list of parts with ``text`` fields."""
        if isinstance(content, str):
            self.add(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    self.add(part)
                elif isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        self.add(text)

    @property
    def tokens(self) -> int:
        return tokens_for_chars(self.chars)


class TextGenerator:
    """Makes answer text of an exact token length, derived from a key (the prompt's CRC)."""

    def __init__(self) -> None:
        picker = random.Random(20260101)
        cycle = "".join(f"{picker.choice(_WORDS)} " for _ in range(_CYCLE_TOKENS))
        self._cycle = cycle
        repeats = (_CYCLE_TOKENS + _PRECOMPUTED_TOKENS) // _CYCLE_TOKENS + 1
        self._long = cycle * repeats

    def text(self, key: int, tokens: int) -> str:
        """``tokens`` tokens of text (no trailing space), always the same for the same key."""
        start = (key % _CYCLE_TOKENS) * CHARS_PER_TOKEN
        end = start + tokens * CHARS_PER_TOKEN
        source = self._long
        if end > len(source):
            source = self._cycle * (end // len(self._cycle) + 1)
        return source[start : end - 1]

    @staticmethod
    def pieces(text: str) -> list[str]:
        """``text`` split into its tokens, in order, for streaming one token per chunk."""
        return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
