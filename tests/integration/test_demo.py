"""``llmspool demo`` (``make demo``) as a newcomer runs it: in under a minute, with no config and
no key, it shows what the spooler is for — a cached repeat for nothing, a job on flex riding
out a flex outage, a job through the Batch API, a repeat answered without a second call, and
the savings by source from the daemon's own ledger."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def test_the_demo_shows_tiers_outage_dedup_and_savings_in_under_a_minute() -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LLMSPOOL_", "OPENAI_", "OTEL_"))}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "llmspool", "demo"], capture_output=True,
                          timeout=120, env=env, check=False)
    took = time.monotonic() - started
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:] + out
    assert took < 60, took
    assert re.search(r"\$0\.0+\d+ on the standard tier", out), out
    assert re.search(r"x-llmspool-cache: hit\): \$0\.00000000", out), out
    assert "due in 30 s" in out and "12 planned on flex" in out, out
    assert re.search(r"due in 1 h .*planned on batch", out), out
    soon, later = re.findall(r"completed, 12 answered, 0 failed; served on ([^;]+);", out)
    assert soon == "flex 12", out
    assert "batch" in later and "cache 1" in later, out  # the repeat cost no call
    retried = re.search(r"outage, absorbed: (\d+) 'resource unavailable'", out)
    assert retried and int(retried.group(1)) > 0, out
    table = out[out.index("by saving source"):]
    for source in ("tier", "cache", "total"):
        assert re.search(rf"^\s*{source}\s+\d+", table, re.MULTILINE), table
    assert "…" not in out  # piped: nothing cut to 80 columns
