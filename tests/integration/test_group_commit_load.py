"""Under load the ledger commits calls together, and still bills every one (issue 17).

Every call's reservation is committed before the call goes upstream. The ledger lets the event
loop turn once before it commits admissions, and the calls that arrive by then join the
commit, so a flood costs a few commits instead of one per two calls (``/v1/status`` counts the
ledger's commits).

The flood comes in waves: a request on each of 64 keep-alive connections at once (asyncio in
this process), then the next wave once all are answered. A thread per client is too slow to
send them together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.money import ledger_entries, reservations
from tests.support.processes import UNLIMITED_SIM, start_daemon, start_sim
from tests.support.raw_calls import CHAT_REQUEST, read_answer

CONNECTIONS = 64
WAVES = 10
async def _waves(socket_path: Path) -> list[tuple[int, str]]:
    """``WAVES`` times: a request on each of ``CONNECTIONS`` connections at once, then their
    answers."""
    connections = [await asyncio.open_unix_connection(str(socket_path))
                   for _ in range(CONNECTIONS)]
    answers: list[tuple[int, str]] = []
    try:
        for _ in range(WAVES):
            for _reader, writer in connections:
                writer.write(CHAT_REQUEST)
            answers += await asyncio.gather(*(read_answer(reader) for reader, _ in connections))
    finally:
        for _reader, writer in connections:
            writer.close()
    return answers


def test_a_flood_of_calls_is_committed_in_groups_and_every_call_is_billed(
    tmp_path: Path,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM)
    daemon = start_daemon(tmp_path, sim.url)
    try:
        status, before = daemon.get("/v1/status")
        assert status == 200
        answers = asyncio.run(_waves(daemon.socket_path))
        calls = CONNECTIONS * WAVES
        assert [status for status, _id in answers] == [200] * calls
        _status, after = daemon.get("/v1/status")
        commits = after["ledger"]["commits"] - before["ledger"]["commits"]
        # Committing what had arrived at each loop turn, such a flood took about one commit
        # per two calls.
        assert commits <= calls // 3, f"{commits} commits for {calls} calls"
    finally:
        daemon.terminate()
        sim.terminate()
    billed = {entry["request_id"] for entry in ledger_entries(daemon.state_dir)}
    assert billed == {request_id for _status, request_id in answers}
    assert reservations(daemon.state_dir) == []
