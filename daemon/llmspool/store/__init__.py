"""The store: one SQLite database in the state directory, reached through aiosqlite.

``database.py`` opens it (WAL, foreign keys, numbered migrations from ``migrations/``);
``ledger.py`` holds the SQL of the cost ledger's entries. Only the actor that owns a table
writes to it.
"""
