"""Named points where a test can make the daemon die as if killed with SIGKILL.

The batch pipeline promises that a crash at any step loses nothing and repeats nothing
upstream. Killing a process from outside at the exact moment between two steps is a race;
instead, ``LLMSPOOL_CRASH_AT=batch.after_upload`` (comma-separated names) makes the daemon
send itself SIGKILL when it reaches that point, which is what the durability tests do. Unset,
``reach`` is a dictionary lookup that does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

log = logging.getLogger(__name__)
ENVIRONMENT_KEY = "LLMSPOOL_CRASH_AT"


class CrashPoints:
    """The points armed for this process (from its environment)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._armed = frozenset(
            name.strip() for name in environ.get(ENVIRONMENT_KEY, "").split(",") if name.strip()
        )
        if self._armed:
            log.warning("crash points armed (%s): this daemon will kill itself there",
                        ", ".join(sorted(self._armed)))

    def reach(self, name: str) -> None:
        if name in self._armed:
            log.warning("crash point %s reached: SIGKILL", name)
            os.kill(os.getpid(), signal.SIGKILL)
