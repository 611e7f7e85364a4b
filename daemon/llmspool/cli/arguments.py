"""Argument types the commands share (argparse ``type=`` functions): a value is checked where it
is typed, so a mistake is a usage message naming the flag, not an error from the daemon."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def from_0_to_1(noun: str) -> Callable[[str], float]:
    """A type for a number from 0 to 1; ``noun`` names it in the message (a score, a number)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"expected {noun} from 0 to 1, got {text!r}")
        return value

    return parse
