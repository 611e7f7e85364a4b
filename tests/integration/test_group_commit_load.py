"""Under load the ledger commits calls together, and still bills every one (issue 17).

Every call's reservation is committed before the call goes upstream. A call alone is committed
at once on the event loop; when calls arrive together, their commit runs in the ledger's
worker thread and the calls that arrive meanwhile join the next one, so a burst of calls costs
a few commits instead of one per two calls (``/v1/status`` counts the ledger's commits).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.capped_calls import Shape, all_at_once, call
from tests.support.money import ledger_entries, reservations
from tests.support.processes import UNLIMITED_SIM, start_daemon, start_sim

BURSTS = 4
TOGETHER = 64
SHAPE = Shape(max_tokens=5, stream=False)


def test_a_burst_of_calls_is_committed_in_a_few_groups_and_every_call_is_billed(
    tmp_path: Path,
) -> None:
    # 50 ms upstream: a burst's calls are all in flight together.
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "50ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        warm = all_at_once(4, lambda index: call(daemon.socket_path, f"warm {index}", SHAPE))
        status, before = daemon.get("/v1/status")
        assert status == 200
        request_ids = {outcome.request_id for outcome in warm}
        for burst in range(BURSTS):
            outcomes = all_at_once(TOGETHER, lambda index, burst=burst: call(
                daemon.socket_path, f"burst {burst} call {index}", SHAPE))
            assert [outcome.status for outcome in outcomes] == [200] * TOGETHER
            request_ids |= {outcome.request_id for outcome in outcomes}
        _status, after = daemon.get("/v1/status")
        commits = after["ledger"]["commits"] - before["ledger"]["commits"]
        # Committed one by one on the event loop, these calls took ~0.57 commits each.
        assert commits <= BURSTS * TOGETHER // 4, f"{commits} commits for {BURSTS * TOGETHER} calls"
    finally:
        daemon.terminate()
        sim.terminate()
    billed = {entry["request_id"] for entry in ledger_entries(daemon.state_dir)}
    assert billed == request_ids
    assert reservations(daemon.state_dir) == []
