-- How far the reservations' journal (`store/reservation_journal.py`) is covered: every row the
-- journal of this generation holds before byte `covered` is in `reservations`, settled, or
-- ended. The ledger's group commit moves it in the transaction that covers the rows, so at
-- start-up only the rows past it are put back into `reservations`. SQLite only: on
-- PostgreSQL a call's reservation is committed in the transaction that admits it.
CREATE TABLE reservation_journal (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL,
    covered     INTEGER NOT NULL
);
INSERT INTO reservation_journal (id, generation, covered) VALUES (1, 0, 0);
