"""The ledger's commits stay on the event loop; the write-ahead log's checkpoints do not.

SQLite checkpoints its write-ahead log inside whichever commit takes it past 1,000 pages: with
the ledger committing on the event loop, the whole daemon waited for those checkpoints and
their fsyncs. The ledger's connection now leaves them to a worker thread, which must keep the
log short: otherwise it would grow by every page of every commit (issue 17).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmspool.store.backend import DATABASE_NAME

from tests.support.processes import UNLIMITED_SIM, start_daemon, start_sim
from tests.support.raw_calls import CHAT_REQUEST, read_answer

CALLS = 1000
async def _one_by_one(socket_path: Path) -> list[int]:
    """``CALLS`` calls on one keep-alive connection, each after the previous answer: a
    commit of its own each, the case that writes the most log."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    statuses = []
    try:
        for _ in range(CALLS):
            writer.write(CHAT_REQUEST)
            statuses.append((await read_answer(reader))[0])
    finally:
        writer.close()
    return statuses


def test_the_write_ahead_log_is_checkpointed_beside_the_ledgers_commits(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM)
    daemon = start_daemon(tmp_path, sim.url)
    try:
        statuses = asyncio.run(_one_by_one(daemon.socket_path))
        assert statuses == [200] * CALLS
        _status, status = daemon.get("/v1/status")
        assert status["ledger"]["wal_checkpoints"] >= 1
        # Each call's commit adds several pages (4 KiB each) to the log: about 20 MiB for
        # these calls if the log never started over (checkpoints from another connection
        # alone never let it), about 4 MiB at most when it does after 1,000 pages.
        log = daemon.state_dir / f"{DATABASE_NAME}-wal"
        assert log.stat().st_size < 8 * 1024 * 1024, f"{log.stat().st_size} bytes of log"
    finally:
        daemon.terminate()
        sim.terminate()
