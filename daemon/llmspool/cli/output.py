"""Where the CLI's tables go: one console for standard output and one for standard error.

On a terminal they take its width. Piped or redirected, rich would assume 80 columns and cut
or wrap cells, which breaks ``grep`` and ``awk`` over a report; there they are made wide enough
that nothing is cut (``COLUMNS``, when set, still wins).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

PIPE_WIDTH = 400


def console(*, stderr: bool = False) -> Console:
    """A console for standard output (or error) that never truncates when not a terminal."""
    from rich.console import Console

    made = Console(stderr=stderr)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        return Console(stderr=stderr, width=PIPE_WIDTH)
    return made
