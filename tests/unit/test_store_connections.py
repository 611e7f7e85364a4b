"""One SQL text on both backends (``llmspool.store.connections``): what the PostgreSQL
wrappers translate for the store's sqlite3-style SQL, and what they hand back, checked against
SQLite's own answers on the same statements."""

from __future__ import annotations

import anyio
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect, connected_async
from llmspool.store.connections import Connection


def test_placeholders_percent_signs_bools_and_sums_read_alike(
    store_connection: Connection,
) -> None:
    connection = store_connection
    connection.execute("CREATE TABLE t (a BIGINT, b TEXT)")
    connection.executemany("INSERT INTO t VALUES (?, ?)", [(1, "50%"), (2, "x%y"), (True, "?")])
    # A literal % with and without parameters; a ? inside no literal is a placeholder.
    assert connection.execute("SELECT b FROM t WHERE b LIKE '%\\%' ESCAPE '\\' ORDER BY a"
                              ).fetchall() == [("50%",)]
    assert connection.execute("SELECT a % 2 FROM t WHERE a = ?", (1,)).fetchone()[0] == 1
    # A bool is stored as the integer 1, and SUM of integers is an int on both.
    total = connection.execute("SELECT SUM(a), COUNT(*) FROM t").fetchone()
    assert (total[0], type(total[0]), total[1]) == (4, int, 3)
    assert connection.execute("SELECT AVG(a) FROM t").fetchone()[0] == 4 / 3
    # A transaction as the store begins them: BEGIN IMMEDIATE, and rolled back.
    connection.execute("BEGIN IMMEDIATE")
    assert connection.in_transaction
    connection.execute("DELETE FROM t WHERE a = ?", (1,))
    connection.execute("ROLLBACK")
    assert not connection.in_transaction
    assert connection.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 3


def test_the_async_face_reads_as_aiosqlite_does(store_location: StoreLocation) -> None:
    async def read() -> tuple[object, ...]:
        async with connected_async(store_location) as connection:
            await connection.execute("CREATE TABLE u (a BIGINT, b BYTEA)")
            await connection.executemany("INSERT INTO u VALUES (?, ?)", [(1, b"\x00x"),
                                                                        (2, None)])
            rows = await connection.execute_fetchall("SELECT a, b FROM u ORDER BY a")
            async with connection.execute("SELECT COUNT(*) FROM u WHERE a > ?", (0,)) as cur:
                counted = await cur.fetchone()
            cursor = await connection.execute("UPDATE u SET a = a + 10")
            return [tuple(row) for row in rows], tuple(counted or ()), cursor.rowcount

    rows, counted, changed = anyio.run(read)
    assert rows == [(1, b"\x00x"), (2, None)]
    assert counted == (2,) and changed == 2


def test_a_read_only_connection_cannot_write(store_location: StoreLocation) -> None:
    writer = connect(store_location)
    writer.execute("CREATE TABLE v (a BIGINT)")
    writer.close()
    reader = connect(store_location, read_only=True)
    try:
        assert reader.execute("SELECT COUNT(*) FROM v").fetchone()[0] == 0
        try:
            reader.execute("INSERT INTO v VALUES (?)", (1,))
        except Exception as exc:  # sqlite3.OperationalError or psycopg's ReadOnlySqlTransaction
            assert "read" in str(exc).lower()
        else:
            raise AssertionError("a read-only connection wrote")
    finally:
        reader.close()
