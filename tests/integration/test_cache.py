"""The response cache and single-flight sharing, through the real daemon, its OpenAI plugin and
the simulator: what is served from the cache and what is not, TTL and eviction, per-user scope,
streams replayed, corrupt entries, errors never cached, 100 identical concurrent requests making
one upstream call, and the ledger entries of hits."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    python_command,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def post(daemon: Daemon, path: str, payload: dict[str, Any],
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    return unix_exchange(daemon.socket_path, "POST", path, orjson.dumps(payload),
                         {"content-type": "application/json", **(headers or {})})


def chat(daemon: Daemon, headers: dict[str, str] | None = None,
         **extra: Any) -> tuple[int, Any, dict[str, str]]:
    return post(daemon, CHAT, {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}, headers)


def upstream_calls(sim: Sim, path: str = CHAT) -> int:
    return int(sim.stats()["requests"]["by_path"].get(path, 0))


def cache_status(daemon: Daemon) -> dict[str, Any]:
    status, body = daemon.get("/v1/status")
    assert status == 200
    return body["cache"]  # type: ignore[no-any-return]


def wait_for_entries(daemon: Daemon, count: int) -> None:
    wait_for(lambda: cache_status(daemon)["entries"] >= count, timeout=10,
             what=f"{count} cache entries")


def test_a_deterministic_chat_is_answered_from_the_cache_the_second_time(
        daemon: Daemon, sim: Sim) -> None:
    status, first, headers = chat(daemon, temperature=0)
    assert status == 200 and headers["x-llmspool-cache"] == "miss"
    wait_for_entries(daemon, 1)
    status, second, headers = chat(daemon, temperature=0.0)  # 0 and 0.0 are one request
    assert status == 200
    assert headers["x-llmspool-cache"] == "hit"
    assert headers["x-llmspool-tier"] == "cache"
    assert float(headers["x-llmspool-cost-usd"]) == 0
    assert second == first
    assert upstream_calls(sim) == 1
    counts = cache_status(daemon)
    assert counts["hits"] == 1 and counts["misses"] == 1


@contextlib.contextmanager
def cache_commits_held(daemon: Daemon) -> Iterator[None]:
    """The response cache's write-behind commits wait while the block runs (a lock held on
    its file): answers stay in memory, not yet in the file."""
    holder = sqlite3.connect(daemon.state_dir / "cache.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def requests_by_saving_source(daemon: Daemon) -> dict[str | None, int]:
    """The ledger's requests by saving source (None: paid for, nothing saved)."""
    status, report = daemon.get("/v1/ledger?by=source")
    assert status == 200
    return {row["source"]: row["requests"] for row in report["rows"]}


def test_the_same_call_right_after_is_a_hit_before_its_entry_is_committed(
        daemon: Daemon, sim: Sim) -> None:
    """What the second call is told, and the saving it is billed under, do not depend on
    whether the write-behind commit has landed (``llmspool demo``'s second step)."""
    with cache_commits_held(daemon):
        status, first, _headers = chat(daemon, temperature=0)
        assert status == 200
        status, second, headers = chat(daemon, temperature=0)
        assert cache_status(daemon)["entries"] == 0  # not in the file yet
    assert status == 200 and second == first
    assert headers["x-llmspool-cache"] == "hit" and float(headers["x-llmspool-cost-usd"]) == 0
    assert upstream_calls(sim) == 1
    # The call paid for (no saving), then the hit.
    assert requests_by_saving_source(daemon) == {None: 1, "cache": 1}
    counts = cache_status(daemon)
    assert counts["hits"] == 1 and counts["shared"] == 0


def test_a_seed_makes_a_request_cacheable_and_sampled_ones_are_not(
        daemon: Daemon, sim: Sim) -> None:
    chat(daemon, seed=7, temperature=1)
    wait_for_entries(daemon, 1)
    assert chat(daemon, seed=7, temperature=1)[2]["x-llmspool-cache"] == "hit"
    for _ in range(2):
        _status, _body, headers = chat(daemon, temperature=1)
        assert "x-llmspool-cache" not in headers
    assert upstream_calls(sim) == 3


def test_fields_that_do_not_change_the_answer_do_not_change_the_key(
        daemon: Daemon, sim: Sim) -> None:
    chat(daemon, temperature=0, user="alice", metadata={"run": "1"})
    wait_for_entries(daemon, 1)
    assert chat(daemon, temperature=0, user="bob")[2]["x-llmspool-cache"] == "hit"
    assert chat(daemon, temperature=0, max_tokens=5)[2]["x-llmspool-cache"] == "miss"
    assert upstream_calls(sim) == 2


def test_embeddings_are_cached_by_default(daemon: Daemon, sim: Sim) -> None:
    payload = {"model": "text-embedding-3-small", "input": ["one", "two"]}
    first = post(daemon, EMBEDDINGS, payload)
    wait_for_entries(daemon, 1)
    second = post(daemon, EMBEDDINGS, payload)
    assert second[2]["x-llmspool-cache"] == "hit"
    assert second[1] == first[1]
    assert upstream_calls(sim, EMBEDDINGS) == 1


def test_the_request_header_turns_the_cache_off_and_on(daemon: Daemon, sim: Sim) -> None:
    chat(daemon, {"x-llmspool-cache": "off"}, temperature=0)
    chat(daemon, {"x-llmspool-cache": "off"}, temperature=0)
    assert upstream_calls(sim) == 2
    assert cache_status(daemon)["entries"] == 0
    chat(daemon, {"x-llmspool-cache": "on"}, temperature=0.9)
    wait_for_entries(daemon, 1)
    assert chat(daemon, {"x-llmspool-cache": "on"}, temperature=0.9)[2][
        "x-llmspool-cache"] == "hit"
    status, body, _headers = chat(daemon, {"x-llmspool-cache": "sometimes"}, temperature=0)
    assert status == 400
    assert body["error"]["code"] == "invalid_cache_header"
    assert "on, off or auto" in body["error"]["message"]


def test_a_stream_is_cached_and_replayed_as_a_stream(daemon: Daemon, sim: Sim) -> None:
    status, first, headers = chat(daemon, temperature=0, stream=True)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    wait_for_entries(daemon, 1)
    status, second, headers = chat(daemon, temperature=0, stream=True)
    assert status == 200 and headers["x-llmspool-cache"] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert second == first
    assert b'"usage":{' not in second  # the client did not ask for the usage chunk
    assert second.rstrip().endswith(b"data: [DONE]")
    with_usage = chat(daemon, temperature=0, stream=True,
                      stream_options={"include_usage": True})
    assert with_usage[2]["x-llmspool-cache"] == "hit"
    assert b'"usage":{' in with_usage[1]
    # A whole answer is another request.
    assert chat(daemon, temperature=0)[2]["x-llmspool-cache"] == "miss"
    assert upstream_calls(sim) == 2


def test_entries_expire_after_their_ttl(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml='[cache]\nttl = "1s"\n')
    try:
        chat(daemon, temperature=0)
        wait_for_entries(daemon, 1)
        assert chat(daemon, temperature=0)[2]["x-llmspool-cache"] == "hit"
        # The behaviour is about time: the second must pass. A hit does not extend the entry's
        # life, so asking until the answer is a miss waits just as long as the ttl.
        wait_for(lambda: chat(daemon, temperature=0)[2]["x-llmspool-cache"] == "miss",
                 timeout=10, every=0.1, what="the entry to expire")
        assert upstream_calls(sim) == 2
    finally:
        daemon.terminate()


def test_answers_cached_before_a_restart_are_hits_after_it(tmp_path: Path, sim: Sim) -> None:
    """The front door knows which keys the file holds without reading it (a miss reads no
    file): after a restart that knowledge is rebuilt from the file, before the first write."""
    daemon = start_daemon(tmp_path, sim.url)
    try:
        chat(daemon, temperature=0)
        wait_for_entries(daemon, 1)
    finally:
        daemon.terminate()
    daemon = start_daemon(tmp_path, sim.url)
    try:
        assert chat(daemon, seed=1)[2]["x-llmspool-cache"] == "miss"
        wait_for_entries(daemon, 2)  # written: the keys were read from the file before
        status, _body, headers = chat(daemon, temperature=0)
        assert status == 200 and headers["x-llmspool-cache"] == "hit"
        assert chat(daemon, seed=2)[2]["x-llmspool-cache"] == "miss"
        assert upstream_calls(sim) == 3
    finally:
        daemon.terminate()


def test_least_recently_used_entries_are_evicted_past_max_entries(
        tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml="[cache]\nmax_entries = 3\n")
    try:
        for n in range(3):
            chat(daemon, seed=n)
        wait_for_entries(daemon, 3)
        assert chat(daemon, seed=0)[2]["x-llmspool-cache"] == "hit"  # 0 is now the freshest
        chat(daemon, seed=3)  # a fourth entry: the least recently used (seed 1) goes
        wait_for(lambda: cache_status(daemon)["evicted"] >= 1, timeout=10, what="an eviction")
        assert cache_status(daemon)["entries"] == 3
        assert chat(daemon, seed=0)[2]["x-llmspool-cache"] == "hit"
        assert chat(daemon, seed=1)[2]["x-llmspool-cache"] == "miss"
    finally:
        daemon.terminate()


def test_an_error_is_never_cached(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "status", "status": 400, "count": 1})
    status, _body, _headers = chat(daemon, temperature=0)
    assert status == 400
    status, _body, headers = chat(daemon, temperature=0)
    assert status == 200 and headers["x-llmspool-cache"] == "miss"
    assert upstream_calls(sim) == 2
    wait_for_entries(daemon, 1)  # write-behind commits in order: the error's turn has passed
    assert cache_status(daemon)["written"] == 1


def test_a_corrupt_entry_is_dropped_and_the_request_served_upstream(
        daemon: Daemon, sim: Sim) -> None:
    chat(daemon, temperature=0)
    wait_for_entries(daemon, 1)
    with sqlite3.connect(daemon.state_dir / "cache.sqlite3") as database:
        database.execute("UPDATE entries SET body = X'7b2262726f6b656e'")  # '{"broken'
    status, body, headers = chat(daemon, temperature=0)
    assert status == 200 and body["choices"]
    assert headers["x-llmspool-cache"] == "miss"
    assert cache_status(daemon)["corrupt_dropped"] == 1
    assert upstream_calls(sim) == 2
    assert "corrupt" in daemon.log()


def test_each_user_has_their_own_cache_unless_the_operation_shares(
        tmp_path: Path, sim: Sim) -> None:
    """Two users are two Unix peers: the same daemon seen from two uids cannot be made in a
    test without root, so the scope is checked through the key a shared operation uses."""
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        "[operations.faq]\ncache_shared = true\n[operations.private]\ncache = \"auto\"\n"))
    try:
        chat(daemon, {"x-llmspool-operation": "private"}, temperature=0)
        wait_for_entries(daemon, 1)
        # Same user, other operation that is not shared: same scope, so a hit.
        assert chat(daemon, temperature=0)[2]["x-llmspool-cache"] == "hit"
        # A shared operation keys on "shared", not the user: a separate entry.
        assert chat(daemon, {"x-llmspool-operation": "faq"}, temperature=0)[2][
            "x-llmspool-cache"] == "miss"
        wait_for_entries(daemon, 2)
        assert chat(daemon, {"x-llmspool-operation": "faq"}, temperature=0)[2][
            "x-llmspool-cache"] == "hit"
    finally:
        daemon.terminate()


def test_an_operation_can_turn_the_cache_off(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml='[operations.live]\ncache = "off"\n')
    try:
        for _ in range(2):
            _status, _body, headers = chat(daemon, {"x-llmspool-operation": "live",
                                                    "x-llmspool-cache": "on"}, temperature=0)
            assert "x-llmspool-cache" not in headers
        assert upstream_calls(sim) == 2
    finally:
        daemon.terminate()


def test_100_identical_concurrent_requests_make_one_upstream_call(
        tmp_path: Path) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "300ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda _n: chat(daemon, temperature=0), range(100)))
        assert all(status == 200 for status, _body, _headers in answers)
        assert len({orjson.dumps(body) for _status, body, _headers in answers}) == 1
        how = [headers["x-llmspool-cache"] for _status, _body, headers in answers]
        assert how.count("miss") == 1
        assert upstream_calls(sim) == 1

        # On a loaded machine a request may arrive after the flight ended and its answer was
        # cached: a hit (source "cache") rather than a shared answer (source "dedup").
        shared, hits = how.count("shared"), how.count("hit")
        assert shared + hits == 99

        def sources() -> dict[Any, Any] | None:
            # Answers go out before their ledger entries commit (a group commit later).
            status, report = daemon.get("/v1/ledger?by=source")
            assert status == 200
            rows = {row["source"]: row for row in report["rows"]}
            counted = sum(rows[source]["requests"] for source in ("dedup", "cache")
                          if source in rows)
            return rows if counted >= 99 else None

        rows = wait_for(sources, what="the 99 answers not sent upstream in the ledger")
        for source, count in (("dedup", shared), ("cache", hits)):
            if count:  # each answer an entry of cost 0 that saved the upstream call's cost
                assert rows[source]["requests"] == count and rows[source]["spend_usd"] == 0
                assert rows[source]["saved_usd"] == pytest.approx(
                    count * rows[None]["spend_usd"], rel=1e-6)
    finally:
        daemon.terminate()
        sim.terminate()


def test_hits_and_shared_calls_are_ledger_entries_of_cost_0_with_their_saving(
        daemon: Daemon, sim: Sim) -> None:
    _status, _body, first = chat(daemon, temperature=0)
    wait_for_entries(daemon, 1)
    chat(daemon, temperature=0)
    chat(daemon, temperature=0)
    paid = float(first["x-llmspool-cost-usd"])
    status, report = daemon.get("/v1/ledger?by=source")
    assert status == 200, report
    rows = {row["source"]: row for row in report["rows"]}
    assert rows["cache"]["requests"] == 2
    assert rows["cache"]["spend_usd"] == 0
    assert rows["cache"]["saved_usd"] == pytest.approx(2 * paid, rel=1e-6)
    status, report = daemon.get("/v1/ledger?by=tier")
    tiers = {row["tier"]: row for row in report["rows"]}
    assert tiers["cache"]["requests"] == 2


def test_llmspool_status_shows_the_cache(daemon: Daemon, sim: Sim) -> None:
    chat(daemon, temperature=0)
    wait_for_entries(daemon, 1)
    chat(daemon, temperature=0)
    shown = subprocess.run(python_command("status", "--socket", str(daemon.socket_path)),
                           capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "cache entries" in shown.stdout
    hits_line = next(line for line in shown.stdout.splitlines() if "cache hits" in line)
    assert "1 / 1" in hits_line and "50.0% hits" in hits_line


def lead_a_flight(daemon: Daemon) -> socket.socket:
    """A client whose deterministic chat leads a flight, once the flight is under way; it
    waits for its answer until the socket is closed."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0})
    leader = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leader.connect(str(daemon.socket_path))
    leader.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                   b"content-type: application/json\r\n"
                   + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: cache_status(daemon)["in_flight"] == 1, what="the leader's flight")
    return leader


def test_a_leader_whose_client_leaves_still_answers_those_who_wait(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "1s"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        leader = lead_a_flight(daemon)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            follower = pool.submit(chat, daemon, None, temperature=0)
            wait_for(lambda: cache_status(daemon)["waiting_on_flights"] == 1,
                     what="the follower waiting on the leader")
            leader.close()  # the first client goes away; the second still waits
            status, answer, headers = follower.result(timeout=20)
        assert status == 200 and answer["choices"]
        assert headers["x-llmspool-cache"] == "shared"
        assert upstream_calls(sim) == 1
    finally:
        daemon.terminate()
        sim.terminate()


def test_a_leader_alone_whose_client_leaves_stops_its_upstream_call(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + 'latency = "5s"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        leader = lead_a_flight(daemon)
        wait_for(lambda: sim.stats()["requests"]["total"] == 1, what="the upstream call")
        started = time.monotonic()
        leader.close()  # nobody else waits: the upstream call is not worth finishing
        wait_for(lambda: sim.stats()["requests"]["client_closed"] == 1, timeout=4,
                 what="the upstream call to be stopped")
        assert time.monotonic() - started < 4  # well before the 5 s answer
        wait_for(lambda: cache_status(daemon)["in_flight"] == 0, what="the flight to end")
        assert chat(daemon, None, temperature=0)[2]["x-llmspool-cache"] == "miss"  # no entry
    finally:
        daemon.terminate()
        sim.terminate()
