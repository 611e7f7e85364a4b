"""The PostgreSQL schema (every migrations/postgresql/ file applied) against the SQLite one
(every migrations/sqlite/ file applied in order), both built for real: the same
tables with the same columns in the same order (nullability, defaults, primary keys), the same
explicitly created indexes and triggers, and the two triggers giving the same rows on both
backends: the ledger's daily rollup (a repeated entry, skipped on conflict, never counted)
and the capture of a job line's request/answer pair when its result is stored. Only the
shared store's own tables (the fleet's leases and budget usage) are PostgreSQL's alone."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from llmspool.store import postgres
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.database import migrations

Row = tuple[Any, ...]

LEDGER_COLUMNS = (
    "request_id", "day", "started_at", "finished_at", "provider", "model", "endpoint", "tier",
    "operation", "uid", "status", "input_tokens", "cached_input_tokens", "output_tokens",
    "reasoning_tokens", "usage_estimated", "cost_picodollars", "standard_cost_picodollars",
    "flag", "saving_source", "deadline_window", "late",
)
CAPTURE_COLUMNS = ("response_id, uid, operation, provider, model, messages, tools, answer, "
                   "created_at, expires_at, job_id, custom_id")
CHAT = "/v1/chat/completions"


# What only a shared (PostgreSQL) store has: the fleet's leases and budget usage
# (postgresql/0002_fleet.sql), its index on who holds a reservation, and the triggers that keep
# the usage; the index of the lines offered to the fleet (0003_claims.sql); the fleet's
# response cache (0004_fleet_cache.sql); and the table of applied migrations (SQLite keeps the
# version in a PRAGMA).
FLEET_TABLES = {"daemons", "budget_usage", "llmspool_schema", "cache_entries", "cache_flights"}
FLEET_INDEXES = {"reservations_daemon", "cache_entries_expiry", "cache_flights_daemon",
                 "job_requests_offered"}
FLEET_TRIGGERS = {"reservations_usage", "ledger_entries_usage"}
# What only SQLite (one daemon) has: how far its reservations' journal is covered
# (sqlite/0014_reservation_journal.sql); PostgreSQL commits each reservation as it admits it.
# And the response ids kept apart from the ledger's entries, indexed after its commits
# (sqlite/0015_response_ids.sql), where PostgreSQL keeps an index on the entries instead.
SQLITE_TABLES = {"reservation_journal", "response_ids", "response_ids_indexed"}
SQLITE_TRIGGERS = {"response_ids_indexed_moved"}
PG_ONLY_INDEXES = {"ledger_entries_response_id"}


@pytest.fixture
def lite() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("PRAGMA foreign_keys=ON")
    for _version, _name, sql in migrations():
        connection.executescript(sql)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def pg(postgres_url: str) -> Iterator[psycopg.Connection[Row]]:
    postgres.migrate(StoreLocation(Backend.POSTGRESQL, postgres_url))
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def lite_rows(connection: sqlite3.Connection, sql: str,
              parameters: Sequence[Any] = ()) -> list[Row]:
    return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]


def pg_rows(connection: psycopg.Connection[Row], sql: str,
            parameters: Sequence[Any] = ()) -> list[Row]:
    return [tuple(row) for row in connection.execute(sql.encode(), parameters).fetchall()]


# --- structure ---------------------------------------------------------------------------------

def lite_tables(connection: sqlite3.Connection) -> list[str]:
    return sorted(name for (name,) in lite_rows(
        connection, "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"))


def pg_tables(connection: psycopg.Connection[Row]) -> list[str]:
    return sorted(name for (name,) in pg_rows(
        connection, "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"))


def lite_columns(connection: sqlite3.Connection, table: str) -> list[Row]:
    """(name, not null, default) of each column, in order. A primary key column counts as
    NOT NULL: SQLite lets a rowid table's non-integer key be NULL (a bug it keeps for
    compatibility; the daemon never writes one), which PostgreSQL cannot."""
    return [(name, bool(notnull or pk), default)
            for _cid, name, _type, notnull, default, pk
            in lite_rows(connection, f"PRAGMA table_info({table})")]


def pg_columns(connection: psycopg.Connection[Row], table: str) -> list[Row]:
    """(name, not null, default) of each column, in order; a default's cast is dropped."""
    found = []
    for name, nullable, default in pg_rows(
            connection, "SELECT column_name, is_nullable, column_default "
                        "FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = %s ORDER BY ordinal_position", (table,)):
        uncast = default.split("::")[0] if isinstance(default, str) else default
        found.append((name, nullable == "NO", uncast))
    return found


def lite_primary_key(connection: sqlite3.Connection, table: str) -> list[str]:
    keyed = [(pk, name) for _cid, name, _type, _notnull, _default, pk
             in lite_rows(connection, f"PRAGMA table_info({table})") if pk]
    return [name for _pk, name in sorted(keyed)]


def pg_primary_key(connection: psycopg.Connection[Row], table: str) -> list[str]:
    return [name for (name,) in pg_rows(
        connection, "SELECT k.column_name FROM information_schema.table_constraints c "
                    "JOIN information_schema.key_column_usage k "
                    "ON k.constraint_name = c.constraint_name "
                    "AND k.table_schema = c.table_schema "
                    "WHERE c.table_schema = 'public' AND c.table_name = %s "
                    "AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
        (table,))]


def lite_indexes(connection: sqlite3.Connection) -> dict[str, Row]:
    """name: (table, columns, partial) of each index made by CREATE INDEX (the automatic
    indexes of PRIMARY KEY and UNIQUE have no SQL)."""
    found: dict[str, Row] = {}
    for name, table in lite_rows(connection, "SELECT name, tbl_name FROM sqlite_master "
                                             "WHERE type = 'index' AND sql IS NOT NULL"):
        columns = tuple(column for _seq, _cid, column
                        in lite_rows(connection, f"PRAGMA index_info({name})"))
        partial = {index: bool(flag) for _seq, index, _unique, _origin, flag
                   in lite_rows(connection, f"PRAGMA index_list({table})")}[name]
        found[name] = (table, columns, partial)
    return found


def pg_indexes(connection: psycopg.Connection[Row]) -> dict[str, Row]:
    """name: (table, columns, partial) of each index that backs no constraint."""
    found: dict[str, Row] = {}
    for name, table, columns, partial in pg_rows(
            connection,
            "SELECT i.relname, t.relname, "
            "       ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k (num, pos) "
            "             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.num "
            "             ORDER BY k.pos), "
            "       x.indpred IS NOT NULL "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"):
        found[name] = (table, tuple(columns), partial)
    return found


def test_same_tables_columns_indexes_and_triggers(lite: sqlite3.Connection,
                                                   pg: psycopg.Connection[Row]) -> None:
    tables = lite_tables(lite)
    assert "ledger_rollup" in tables and "captures" in tables and set(tables) >= SQLITE_TABLES
    assert set(pg_tables(pg)) - FLEET_TABLES == set(tables) - SQLITE_TABLES
    for table in set(tables) - SQLITE_TABLES:
        assert pg_columns(pg, table) == lite_columns(lite, table), table
        assert pg_primary_key(pg, table) == lite_primary_key(lite, table), table
    indexes = lite_indexes(lite)
    assert len(indexes) == 17
    assert {name: index for name, index in pg_indexes(pg).items()
            if name not in FLEET_INDEXES | PG_ONLY_INDEXES} == indexes
    lite_triggers = {name for (name,) in lite_rows(
        lite, "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert lite_triggers == {"ledger_rollup_after_insert", "captures_after_job_result",
                             *SQLITE_TRIGGERS}
    assert {name for (name,) in pg_rows(
        pg, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")} == (
            lite_triggers - SQLITE_TRIGGERS | FLEET_TRIGGERS)


def test_unique_and_check_constraints_hold_on_both(lite: sqlite3.Connection,
                                                   pg: psycopg.Connection[Row]) -> None:
    reservation = ("INSERT INTO reservations (request_id, kind, reserved_at, provider, model, "
                   "endpoint, tier, estimate_picodollars) VALUES ('r', 'other', 0, 'p', 'm', "
                   "'e', 't', 1)")
    with pytest.raises(sqlite3.IntegrityError):
        lite.execute(reservation)
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute(reservation.encode())
    lite.execute("INSERT INTO jobs (id, created_at, deadline_at, status, total) "
                 "VALUES ('j', 0, 1, 'in_progress', 1)")
    pg.execute(b"INSERT INTO jobs (id, created_at, deadline_at, status, total) "
               b"VALUES ('j', 0, 1, 'in_progress', 1)")
    line = ("INSERT INTO job_requests (job_id, line, custom_id, endpoint, provider, model, "
            "body, deadline_at, state) VALUES ('j', 1, 'c', 'e', 'p', 'm', 'x', 1, 'queued')")
    lite.execute(line)
    pg.execute(line.encode())
    with pytest.raises(sqlite3.IntegrityError):
        lite.execute(line)
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg.execute(line.encode())
    # Deleting a job deletes its lines (ON DELETE CASCADE).
    lite.execute("DELETE FROM jobs")
    pg.execute(b"DELETE FROM jobs")
    assert lite_rows(lite, "SELECT count(*) FROM job_requests") == [(0,)]
    assert pg_rows(pg, "SELECT count(*) FROM job_requests") == [(0,)]


# --- the ledger's rollup -----------------------------------------------------------------------

def entry(request_id: str, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "request_id": request_id, "day": "2026-12-01", "started_at": 1.5, "finished_at": 2.25,
        "provider": "openai", "model": "gpt-4o-mini", "endpoint": CHAT, "tier": "standard",
        "operation": "extract", "uid": 1000, "status": 200, "input_tokens": 100,
        "cached_input_tokens": 10, "output_tokens": 20, "reasoning_tokens": 0,
        "usage_estimated": 0, "cost_picodollars": 5_000, "standard_cost_picodollars": 8_000,
        "flag": None, "saving_source": None, "deadline_window": None, "late": 0,
    }
    values.update(changes)
    return values


ENTRIES = [
    entry("a"),
    entry("b", input_tokens=7, cost_picodollars=1_000),  # the same group as "a"
    entry("c", cost_picodollars=None, standard_cost_picodollars=None),
    entry("d", standard_cost_picodollars=None, tier="batch"),
    entry("e", usage_estimated=1),
    entry("f", flag="unknown_tier", saving_source="tier"),
    entry("g", deadline_window=30.0),
    entry("h", deadline_window=600.0, late=1),
    entry("i", deadline_window=3600.0),
    entry("j", deadline_window=50_000.0, late=1),
    entry("k", deadline_window=100_000.0),
    entry("l", operation=None, uid=None),
    entry("m", operation=None, uid=None, flag="unpriced", cost_picodollars=None),
    entry("n", day="2026-12-02", saving_source="cache", late=1),
    entry("o", deadline_window=60.0, usage_estimated=1, flag="unknown_outcome"),
    entry("p", deadline_window=900.0, late=1),  # the same class as "h": two late calls
    # Repeats of entries already written: skipped, never counted.
    entry("a", input_tokens=999_999, cost_picodollars=999_999),
    entry("h", deadline_window=600.0, late=1, input_tokens=1),
]


def insert_entries(lite: sqlite3.Connection, pg: psycopg.Connection[Row]) -> None:
    columns = ", ".join(LEDGER_COLUMNS)
    for values in ENTRIES:
        row = [values[column] for column in LEDGER_COLUMNS]
        lite.execute(f"INSERT OR IGNORE INTO ledger_entries ({columns}) VALUES "
                     f"({', '.join('?' for _ in row)})", row)
        pg.execute(f"INSERT INTO ledger_entries ({columns}) VALUES "
                   f"({', '.join('%s' for _ in row)}) ON CONFLICT DO NOTHING".encode(), row)


def test_rollup_trigger_gives_the_same_rows(lite: sqlite3.Connection,
                                            pg: psycopg.Connection[Row]) -> None:
    insert_entries(lite, pg)
    select = "SELECT * FROM ledger_rollup"
    expected = sorted(lite_rows(lite, select), key=repr)
    assert sorted(pg_rows(pg, select), key=repr) == expected
    # The comparison is not vacuous: every entry counted once, the repeats not at all.
    distinct = len({values["request_id"] for values in ENTRIES})
    assert sum(row[8] for row in expected) == distinct == 16
    assert pg_rows(pg, "SELECT count(*) FROM ledger_entries") == [(distinct,)]
    deadlines = {row[7] for row in expected}
    assert deadlines == {"none", "<=1m", "<=15m", "<=2h", "<=24h", ">24h"}
    # "a", "b", "c" (unpriced) and "e" (estimated) share their day, provider, model, tier,
    # operation, uid, saving source and deadline class.
    [shared] = [row for row in expected if row[:8] == (
        "2026-12-01", "openai", "gpt-4o-mini", "standard", "extract", 1000, "", "none")]
    assert shared[8:] == (4, 307, 40, 80, 11_000, 24_000, 1, 1, 0, "")  # no daemon named
    [late] = [row for row in expected if row[7] == "<=15m"]
    assert late[8] == late[16] == 2


# --- captures ----------------------------------------------------------------------------------

def compact(value: Any) -> bytes:
    """JSON as the daemon writes it (orjson: no spaces)."""
    return json.dumps(value, separators=(",", ":")).encode()


def chat_result(custom_id: str, response_id: str, status: int = 200) -> bytes:
    """A line of the Batch output format whose body is a chat completion."""
    return compact({
        "id": f"batch_req_{custom_id}", "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{custom_id}", "body": {
            "id": response_id, "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": f"answer to {custom_id}", "refusal": None}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}},
        "error": None,
    })


def chat_body(custom_id: str, tools: bool = False) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"question {custom_id}: caf\u00e9?"}]}
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    return compact(body)


# (job, custom_id, endpoint, body, result, finished_at); the response ids say whether the line
# is captured.
LINES: list[tuple[str, str, str, bytes, bytes, float | None]] = [
    ("job-cap", "captured", CHAT, chat_body("captured"),
     chat_result("captured", "chatcmpl-captured"), 1_700.25),
    ("job-cap", "with-tools", CHAT, chat_body("with-tools", tools=True),
     chat_result("with-tools", "chatcmpl-with-tools"), None),
    ("job-cap", "server-error", CHAT, chat_body("server-error"),
     chat_result("server-error", "chatcmpl-not-500", status=500), 1_701.0),
    ("job-cap", "embedding", "/v1/embeddings", chat_body("embedding"),
     chat_result("embedding", "chatcmpl-not-embeddings"), 1_702.0),
    ("job-other", "other-operation", CHAT, chat_body("other-operation"),
     chat_result("other-operation", "chatcmpl-not-other"), 1_703.0),
]


def run_jobs(execute: Any, placeholder: str) -> None:
    """The same statements on either backend; ``execute(sql, parameters)``."""
    def sql(text: str) -> str:
        return text.replace("?", placeholder)

    execute(sql("INSERT INTO capture_operations (operation, retention) VALUES (?, ?)"),
            ("extract", 86_400.0))
    for job, operation, uid in (("job-cap", "extract", 1000), ("job-other", "chat", 1001)):
        execute(sql("INSERT INTO jobs (id, created_at, deadline_at, operation, uid, status, "
                    "total) VALUES (?, ?, ?, ?, ?, 'in_progress', ?)"),
                (job, 1_000.5, 90_000.0, operation, uid, 4))
    for number, (job, custom_id, endpoint, body, _result, _at) in enumerate(LINES, 1):
        execute(sql("INSERT INTO job_requests (job_id, line, custom_id, endpoint, provider, "
                    "model, body, deadline_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                    "'queued')"),
                (job, number, custom_id, endpoint, "openai", "gpt-4o-mini", body, 90_000.0))
    for job, custom_id, _endpoint, _body, result, finished_at in LINES:
        execute(sql("UPDATE job_requests SET state = 'succeeded', result = ?, finished_at = ? "
                    "WHERE job_id = ? AND custom_id = ? AND state = 'queued'"),
                (result, finished_at, job, custom_id))
    # A result stored again (state unchanged) captures nothing more.
    execute(sql("UPDATE job_requests SET state = 'succeeded' WHERE custom_id = ?"),
            ("captured",))


def parsed_captures(rows: list[Row]) -> list[Row]:
    """The rows with their JSON columns (messages, tools, answer) parsed: the JSON text's
    spacing is not part of what is compared."""
    return sorted(
        (row[:5] + tuple(None if text is None else json.loads(text) for text in row[5:8])
         + row[8:] for row in rows), key=repr)


def test_captures_trigger_gives_the_same_rows(lite: sqlite3.Connection,
                                              pg: psycopg.Connection[Row]) -> None:
    run_jobs(lite.execute, "?")

    def pg_execute(sql: str, parameters: Sequence[Any]) -> None:
        pg.execute(sql.encode(), parameters)

    run_jobs(pg_execute, "%s")
    select = f"SELECT {CAPTURE_COLUMNS} FROM captures"
    expected = parsed_captures(lite_rows(lite, select))
    assert parsed_captures(pg_rows(pg, select)) == expected
    assert [row[0] for row in expected] == ["chatcmpl-captured", "chatcmpl-with-tools"]
    captured, with_tools = expected
    assert captured[6] is None and with_tools[6] is not None
    assert captured[8:10] == (1_700.25, 1_700.25 + 86_400.0)
    assert with_tools[8:10] == (1_000.5, 1_000.5 + 86_400.0)  # no finished_at: the job's time
    assert captured[7] == {"role": "assistant", "content": "answer to captured",
                           "refusal": None}
    # The texts themselves: compact JSON on both, keys in the order written.
    assert pg_rows(pg, f"{select} ORDER BY response_id")[0][5:8] == \
        lite_rows(lite, f"{select} ORDER BY response_id")[0][5:8]
    statuses = {state for (state,) in pg_rows(pg, "SELECT state FROM job_requests")}
    assert statuses == {"succeeded"}


def test_unreadable_json_leaves_the_result_stored(pg: psycopg.Connection[Row]) -> None:
    """On PostgreSQL a line of a capturing operation whose JSON cannot be read (here a NUL
    escape, which no PostgreSQL text holds, and a truncated document) is not captured, and
    its result is stored all the same."""
    pg.execute(b"INSERT INTO capture_operations VALUES ('extract', 60)")
    pg.execute(b"INSERT INTO jobs (id, created_at, deadline_at, operation, status, total) "
               b"VALUES ('j', 0, 1, 'extract', 'in_progress', 2)")
    nul = chat_result("nul", "chatcmpl-nul").replace(b"answer to", b"answer\\u0000to")
    for number, result in enumerate((nul, b'{"response": {"status_code": 200'), 1):
        pg.execute(b"INSERT INTO job_requests (job_id, line, custom_id, endpoint, provider, "
                   b"model, body, deadline_at, state) VALUES ('j', %s, %s, %s, 'openai', 'm', "
                   b"%s, 1, 'queued')", (number, f"c{number}", CHAT, chat_body("x")))
        pg.execute(b"UPDATE job_requests SET state = 'succeeded', result = %s WHERE line = %s",
                   (result, number))
    assert pg_rows(pg, "SELECT count(*) FROM job_requests WHERE result IS NOT NULL") == [(2,)]
    assert pg_rows(pg, "SELECT count(*) FROM captures") == [(0,)]
