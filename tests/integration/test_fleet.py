"""Four daemon processes on one PostgreSQL database share one daily cap (issue 20).

400 chat calls at once, spread over the four daemons' sockets, under ``[budgets]
daily_usd``: together they never spend past the cap by more than one reservation per daemon
(they share the budget in the database, so in fact not past the cap at all), the rest are
refused with 402 ``budget_day``, and every daemon's ``costs`` ledger is the fleet's, each entry
naming its daemon. Then the same load with two of the daemons killed (SIGKILL) mid-run: the
other two take them over when their leases run out, billing their calls in flight at their
reservations, so the fleet's ledger never shows less than the simulator billed. And a daemon
killed in the middle of a job has the job taken over and finished by another, each request
answered exactly once; one killed with a batch open has the batch polled and stored by
another, never created twice. A job of 20,000 requests submitted to one daemon is worked by all
four (each claims queued lines the others have not), and finished when the daemon it was
submitted to is killed half-way: each request answered once, one ledger entry each.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
from llmspool.core.config.sections import JobsConfig
from llmspool.core.pricing import load_price_table
from psycopg.rows import dict_row

from tests.integration.test_jobs_durability import jsonl
from tests.support.capped_calls import (
    PICODOLLARS_PER_USD,
    Outcome,
    Shape,
    all_at_once,
    call,
    largest_reservation,
    true_spend,
    usd,
)
from tests.support.money import QUICK_BATCHES, billed_calls, spend_by_day
from tests.support.processes import UNLIMITED_SIM, Daemon, start_daemon, start_sim, unix_request
from tests.support.waiting import wait_for

CAP_USD = 0.02
CAP = round(CAP_USD * PICODOLLARS_PER_USD)
DAEMONS = 4
CALLS = 400
SHAPE = Shape(max_tokens=300, stream=False)
FLEET_SIM = UNLIMITED_SIM + 'output_tokens = 300\nlatency = "300ms"\n'
LEASE = 3.0


def shared_store(url: str) -> str:
    """The ``[store]`` table of a fleet's daemon, with ``{name}`` where its name goes."""
    return f'[store]\nurl = "{url}"\nname = "{{name}}"\nlease = "{LEASE:.0f}s"\n\n'


def fleet_config(url: str) -> str:
    return shared_store(url) + f"[budgets]\ndaily_usd = {CAP_USD}\n"


def start_fleet(tmp_path: Path, sim_url: str, url: str) -> list[Daemon]:
    return start_named(tmp_path, sim_url, fleet_config(url),
                       tuple(f"d{number}" for number in range(DAEMONS)))


def fleet_entries(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as connection:
        return list(connection.execute(b"SELECT * FROM ledger_entries ORDER BY id").fetchall())


def test_four_daemons_on_one_database_hold_one_cap_for_400_calls_at_once(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, FLEET_SIM)
    fleet: list[Daemon] = []
    try:
        fleet = start_fleet(tmp_path, sim.url, postgres_url)
        outcomes = all_at_once(CALLS, lambda i: call(fleet[i % DAEMONS].socket_path,
                                                     f"call {i} of {CALLS}", SHAPE))
        _status, report = fleet[3].get("/v1/status")
        shown = subprocess.run([sys.executable, "-m", "llmspool", "status", "--socket",
                                str(fleet[1].socket_path)], capture_output=True, text=True,
                               timeout=30, env={**os.environ, "COLUMNS": "200"})
        # The others stop (committing what they settled last); d0 still shows all of it.
        assert [daemon.terminate() for daemon in fleet[1:]] == [0] * (DAEMONS - 1)
        _status, costs = fleet[0].get("/v1/ledger?limit=1000")
        by_daemon = subprocess.run(
            [sys.executable, "-m", "llmspool", "costs", "--by", "daemon", "--since", "1d",
             "--json", "--socket", str(fleet[0].socket_path)],
            capture_output=True, text=True, timeout=30)
        _status, after = fleet[0].get("/v1/status")
        assert fleet[0].terminate() == 0
        calls = billed_calls(sim)
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 402]
    assert len(admitted) + len(refused) == CALLS, \
        {(o.status, o.code) for o in outcomes if o.status not in (200, 402)}
    assert admitted and refused and {o.code for o in refused} == {"budget_day"}
    table = load_price_table()
    bound = CAP + DAEMONS * largest_reservation(table, calls, SHAPE.max_tokens)
    entries = fleet_entries(postgres_url)
    days = spend_by_day(entries)
    spent = max(days.values(), default=0)  # on one UTC day
    assert spent <= bound, f"the fleet spent {usd(spent)} > cap {usd(CAP)} + a reservation each"
    assert spent <= CAP  # reservations are decided in the database: not even one over
    assert true_spend(calls, table) <= bound * len(days)
    # The simulator served exactly the admitted calls, and each entry names the daemon its
    # call was sent to (which daemons got some of the cap is a race: not asserted).
    assert sorted(c["request_id"] for c in calls) == sorted(str(o.request_id) for o in admitted)
    sent_to = {str(outcome.request_id): f"d{index % DAEMONS}"
               for index, outcome in enumerate(outcomes) if outcome.status == 200}
    assert {entry["request_id"]: entry["daemon"] for entry in entries} == sent_to
    per_daemon = Counter(sent_to.values())
    assert len(per_daemon) > 1, per_daemon  # the cap was shared, not taken by one daemon
    # One ledger: any daemon's /v1/ledger lists every daemon's entries.
    assert sorted(e["request_id"] for e in costs["entries"]) == \
        sorted(e["request_id"] for e in entries)
    # `llmspool costs --by daemon` on any daemon: what each spent, the fleet's total.
    assert by_daemon.returncode == 0, by_daemon.stderr
    spending = orjson.loads(by_daemon.stdout)
    shares = {row["daemon"]: row["requests"] for row in spending["rows"]}
    assert shares == per_daemon
    assert abs(spending["total"]["spend_usd"] - spent / PICODOLLARS_PER_USD) < 1e-9
    assert [daemon["name"] for daemon in report["ledger"]["fleet"]] == \
        [f"d{i}" for i in range(DAEMONS)]
    assert shown.returncode == 0, shown.stderr
    assert "fleet: 4 of 4 daemons alive (shared store)" in shown.stdout
    # A daemon that stops cleanly leaves the fleet at once (it holds nothing).
    assert [daemon["name"] for daemon in after["ledger"]["fleet"]] == ["d0"]
    assert abs(after["ledger"]["spend_today_usd"] - spent / PICODOLLARS_PER_USD) < 1e-9


def test_two_daemons_killed_mid_run_are_taken_over_and_the_cap_still_holds(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, FLEET_SIM)
    fleet: list[Daemon] = []
    unexpected: list[Outcome] = []
    over = threading.Event()

    def keep_calling(daemon: Daemon, name: str) -> None:
        count = 0
        while not over.is_set():
            count += 1
            try:
                outcome = call(daemon.socket_path, f"{name} call {count}", SHAPE)
            except (OSError, http.client.HTTPException):
                return  # its daemon was killed under this call
            if outcome.status == 402 and outcome.code == "budget_day":
                over.wait(0.05)
            elif outcome.status != 200:
                unexpected.append(outcome)

    try:
        fleet = start_fleet(tmp_path, sim.url, postgres_url)
        threads = [threading.Thread(target=keep_calling, daemon=True,
                                    args=(fleet[i % DAEMONS], f"t{i}")) for i in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)  # calls in flight on every daemon, the cap not yet reached
        for victim in fleet[2:]:
            assert victim.process is not None
            victim.process.kill()
            victim.process.wait(10)
        time.sleep(1.0)
        over.set()
        for thread in threads:
            thread.join(15)
        survivor = fleet[0]
        give_up = time.monotonic() + 4 * LEASE
        while True:  # the survivors take the dead over once their leases have run out
            _status, report = survivor.get("/v1/status")
            names = [daemon["name"] for daemon in report["ledger"]["fleet"]]
            if names == ["d0", "d1"] or time.monotonic() > give_up:
                break
            time.sleep(0.2)
        assert names == ["d0", "d1"], report["ledger"]["fleet"]
        assert [daemon.terminate() for daemon in fleet[:2]] == [0, 0]
        calls = billed_calls(sim)
    finally:
        over.set()
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    assert not unexpected, unexpected[:5]
    table = load_price_table()
    entries = fleet_entries(postgres_url)
    ledger_spend = sum(entry["cost_picodollars"] for entry in entries)
    billed = true_spend(calls, table)
    bound = CAP + DAEMONS * largest_reservation(table, calls, SHAPE.max_tokens)
    assert billed > 0
    assert ledger_spend >= billed, \
        f"the ledger shows {usd(ledger_spend)}, the provider billed {usd(billed)}"
    days = spend_by_day(entries)
    day_spend = max(days.values())  # on one UTC day
    assert day_spend <= bound, f"spent {usd(day_spend)} > cap + a reservation each"
    assert billed <= bound * len(days)
    # The killed daemons' calls in flight were billed as unknown outcomes under their names.
    unknown = {entry["daemon"] for entry in entries if entry["flag"] == "unknown_outcome"}
    assert unknown <= {"d2", "d3"}
    with psycopg.connect(postgres_url) as connection:
        left = connection.execute(b"SELECT daemon, COUNT(*) FROM reservations "
                                  b"GROUP BY daemon").fetchall()
    assert left == []


def start_named(tmp_path: Path, sim_url: str, config_toml: str,
                names: tuple[str, ...]) -> list[Daemon]:
    """Daemon processes named ``names``, each in a folder of its own; ``config_toml`` has
    ``{name}`` where the name goes."""
    started = []
    for name in names:
        directory = tmp_path / name
        directory.mkdir()
        started.append(start_daemon(directory, sim_url, process=True,
                                    config_toml=config_toml.format(name=name)))
    return started


def submit_job(daemon: Daemon, body: bytes, deadline: str) -> str:
    status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs?deadline={deadline}",
                               body, {"content-type": "application/jsonl"})
    assert status == 202, job
    return str(job["id"])


def kill_9(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait(10)


def results_after_take_over(heir: Daemon, job_id: str, dead: str
                            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's result lines and its view, from ``heir`` once it has taken the job over
    (when the lease of ``dead``, the daemon killed, has run out) and finished it."""
    def taken_over() -> bool:
        _status, report = heir.get("/v1/status")
        return dead not in [daemon["name"] for daemon in report["ledger"]["fleet"]]

    wait_for(taken_over, timeout=4 * LEASE, what="the heir to take the job over")
    status, raw = unix_request(heir.socket_path, "GET", f"/v1/jobs/{job_id}/results?wait=60")
    assert status == 200, raw
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    _status, finished = heir.get(f"/v1/jobs/{job_id}")
    return [orjson.loads(line) for line in text.splitlines() if line.strip()], finished


def test_a_daemon_killed_mid_job_has_its_job_finished_by_another(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "100ms"\n')
    config = shared_store(postgres_url) + "[jobs]\nmax_in_flight = 4\n\n[batch]\nenabled = false\n"
    fleet: list[Daemon] = []
    try:
        fleet = start_named(tmp_path, sim.url, config, ("doomed", "heir"))
        doomed, heir = fleet
        job_id = submit_job(doomed, jsonl("k", 60), "10m")
        wait_for(lambda: doomed.get(f"/v1/jobs/{job_id}")[1]["counts"]["succeeded"] >= 12,
                 timeout=30, what="12 requests done")
        kill_9(doomed)
        lines, finished = results_after_take_over(heir, job_id, "doomed")
        assert heir.terminate() == 0
        calls = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    assert [line["custom_id"] for line in lines] == [f"k{i}" for i in range(60)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["status"] == "completed" and finished["counts"]["succeeded"] == 60
    with psycopg.connect(postgres_url) as connection:
        owners = connection.execute(b"SELECT daemon, status FROM jobs").fetchall()
        states = connection.execute(b"SELECT state, COUNT(*) FROM job_requests "
                                    b"GROUP BY state").fetchall()
    assert owners == [("heir", "completed")]
    assert states == [("succeeded", 60)]
    # Calls in flight at the kill were sent again, never lost: at most the slots' worth more.
    assert 60 <= calls <= 60 + 2 * 4


SHARED_JOB = 20_000
HELPERS = ("h1", "h2", "h3")


def answered(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute(b"SELECT COUNT(*) FROM job_requests "
                                 b"WHERE state != 'queued'").fetchone()
    return int(row[0]) if row else 0


def test_a_job_of_20000_requests_is_worked_by_four_daemons_one_killed_half_way(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM)
    fleet: list[Daemon] = []
    try:
        fleet = start_named(tmp_path, sim.url, shared_store(postgres_url), ("owner", *HELPERS))
        owner, helpers = fleet[0], fleet[1:]
        job_id = submit_job(owner, jsonl("w", SHARED_JOB), "10m")
        wait_for(lambda: answered(postgres_url) >= SHARED_JOB // 2, timeout=120,
                 what="half the job answered")
        kill_9(owner)
        wait_for(lambda: answered(postgres_url) == SHARED_JOB, timeout=180,
                 what="the whole job answered")
        # Any daemon answers for any job: the one that took it over (if the others had not
        # finished it by the time the owner's lease ran out), or the others.
        lines, finished = results_after_take_over(helpers[0], job_id, "owner")
        helped = [daemon.get("/v1/status")[1]["jobs"]["requests_helped"] for daemon in helpers]
        assert [daemon.terminate() for daemon in helpers] == [0] * len(HELPERS)
        stats = sim.stats()
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    # Every request answered exactly once, in the results of the daemon that took the job.
    assert len(lines) == SHARED_JOB
    assert sorted(line["custom_id"] for line in lines) == \
        sorted(f"w{i}" for i in range(SHARED_JOB))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["status"] == "completed" and finished["counts"]["succeeded"] == SHARED_JOB
    with psycopg.connect(postgres_url, row_factory=dict_row) as connection:
        entries = connection.execute(
            b"SELECT request_id, daemon, flag FROM ledger_entries").fetchall()
    # Exactly one ledger entry for each request's answer. The owner's calls in flight when it
    # was killed, and those answered whose results waited for its next group commit, are
    # billed at their reservations (``unknown_outcome``: the provider may have answered them),
    # and their requests were sent again: at most twice its slots.
    answers = [e for e in entries if e["flag"] != "unknown_outcome"]
    unknown = [e for e in entries if e["flag"] == "unknown_outcome"]
    rows = [e["request_id"].split(".")[1] for e in answers]
    assert len(rows) == len(set(rows)) == SHARED_JOB
    assert len(unknown) <= 2 * JobsConfig().max_in_flight
    assert {e["daemon"] for e in unknown} <= {"owner"}
    # Worked by all four, and nothing sent more often than that.
    assert {e["daemon"] for e in answers} == {"owner", *HELPERS}
    assert all(count > 0 for count in helped)  # status says how many each sent for others
    calls = stats["requests"]["by_path"]["/v1/chat/completions"]
    assert SHARED_JOB <= calls <= SHARED_JOB + len(unknown)
    assert stats["batches"]["created"] == 0


def test_any_daemon_shows_waits_for_and_cancels_another_daemons_job(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "200ms"\n')
    config = shared_store(postgres_url) + "[jobs]\nmax_in_flight = 2\n\n[batch]\nenabled = false\n"
    fleet: list[Daemon] = []
    try:
        fleet = start_named(tmp_path, sim.url, config, ("owner", "other"))
        owner, other = fleet
        quick = submit_job(owner, jsonl("q", 6), "10m")
        slow = submit_job(owner, jsonl("s", 400), "10m")
        status, view = other.get(f"/v1/jobs/{quick}")
        unknown, _missing = other.get("/v1/jobs/job_0000000000000000000000000")
        waited, raw = unix_request(other.socket_path, "GET", f"/v1/jobs/{quick}/results?wait=60")
        cancelled, answer = unix_request(other.socket_path, "POST", f"/v1/jobs/{slow}/cancel")
        wait_for(lambda: owner.get(f"/v1/jobs/{slow}")[1]["status"] == "cancelled", timeout=10,
                 what="the owner to see the cancel")
        settled = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        time.sleep(1.5)
        after = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        time.sleep(1.0)
        later = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        _status, seen_by_owner = owner.get(f"/v1/jobs/{slow}")
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    assert status == 200 and view["id"] == quick and view["counts"]["total"] == 6
    assert unknown == 404
    assert waited == 200
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    assert sorted(orjson.loads(line)["custom_id"] for line in text.splitlines()) == \
        sorted(f"q{i}" for i in range(6))
    assert cancelled == 200 and answer["status"] == "cancelled"
    # Sending stopped with the cancel: at most the lines the two daemons had in hand when the
    # owner showed it (two each) reached the simulator after, and none in the second after.
    assert settled < 400 and after - settled <= 2 * 2 and later == after
    counts = seen_by_owner["counts"]
    assert counts["cancelled"] > 0 and counts["succeeded"] + counts["cancelled"] == 400


def test_a_daemon_killed_with_a_batch_open_has_the_batch_finished_by_another(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + '[sim.batch]\nturnaround = "3s"\n')
    config = shared_store(postgres_url) + QUICK_BATCHES
    fleet: list[Daemon] = []
    try:
        fleet = start_named(tmp_path, sim.url, config, ("doomed", "heir"))
        doomed, heir = fleet
        job_id = submit_job(doomed, jsonl("b", 20), "1h")
        wait_for(lambda: sim.stats()["batches"]["created"] >= 1, timeout=30,
                 what="the batch created upstream")
        # The fleet's status shows whose work is whose.
        _status, report = heir.get("/v1/status")
        work = {d["name"]: (d["jobs_in_progress"], d["open_batches"])
                for d in report["ledger"]["fleet"]}
        assert work == {"doomed": (1, 1), "heir": (0, 0)}
        kill_9(doomed)
        lines, finished = results_after_take_over(heir, job_id, "doomed")
        assert heir.terminate() == 0
        batches = sim.stats()["batches"]
        direct = sim.stats()["requests"]["by_path"].get("/v1/chat/completions", 0)
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()

    assert sorted(line["custom_id"] for line in lines) == sorted(f"b{i}" for i in range(20))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["status"] == "completed" and finished["by_tier"] == {"batch": 20}
    assert batches["created"] == 1 and direct == 0  # the heir polled it: nothing sent twice
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(b"SELECT daemon, state FROM batches").fetchall()
        entries = connection.execute(b"SELECT COUNT(*), COUNT(DISTINCT request_id) "
                                     b"FROM ledger_entries WHERE tier = 'batch'").fetchone()
        held = connection.execute(b"SELECT COUNT(*) FROM reservations").fetchone()
    assert rows == [("heir", "finished")]
    assert entries == (20, 20) and held == (0,)


def test_a_daemon_stalled_past_its_lease_stops_when_it_wakes_rather_than_work_twice(
    tmp_path: Path, postgres_url: str,
) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM)
    fleet: list[Daemon] = []
    try:
        fleet = start_named(tmp_path, sim.url, fleet_config(postgres_url),
                            ("stalled", "steady"))
        stalled, steady = fleet
        assert stalled.process is not None
        stalled.process.send_signal(signal.SIGSTOP)  # a VM paused, a process swapped out...

        def taken_over() -> bool:
            _status, report = steady.get("/v1/status")
            return [daemon["name"] for daemon in report["ledger"]["fleet"]] == ["steady"]

        wait_for(taken_over, timeout=4 * LEASE, what="the steady daemon to take over")
        stalled.process.send_signal(signal.SIGCONT)
        status = stalled.process.wait(4 * LEASE)
        log = stalled.log()
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()
    assert status == 1, log
    assert "lease on the shared store ran out" in log and "stopping so that nothing is done " \
        "twice" in log
    assert "Traceback" not in log
