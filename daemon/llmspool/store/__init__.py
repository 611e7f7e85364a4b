"""The store: jobs, batches, the cost ledger, budgets, the Batch API's objects, feedback and
captures, in SQLite in the state directory (the default) or in PostgreSQL (``[store] url``),
which several daemons may share.

``backend.py`` says which it is; ``connections.py`` gives both one API (sqlite3's and
aiosqlite's), so each table's SQL (``ledger.py``, ``jobs.py``, ``batches.py``...) is written
once; ``connect.py`` opens connections; ``database.py`` and ``postgres.py`` migrate each
backend (``migrations/sqlite``, ``migrations/postgresql``) and ``schema.py`` reports on both;
``fleet.py`` keeps a shared store's daemons and their leases. Only the actor that owns a table
writes to it.
"""
