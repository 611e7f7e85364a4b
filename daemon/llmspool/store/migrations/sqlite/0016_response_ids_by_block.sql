-- The response-id index keyed by block of 8,192 consecutive ledger entries first
-- (`entry_block` = entry_id >> 13), then by response id (`store/response_ids.py`).
-- Keyed by response id alone (0015), every entry indexed went to a random page of the whole
-- index, since OpenAI's ids are random: once the index had more pages than the upkeep indexes
-- entries in one statement, each entry dirtied a page of its own, 4 KiB to the write-ahead log
-- and 4 KiB again at the checkpoint. A daemon on a ledger of 340,000 entries wrote 12.7 KB a
-- call, against 1.9 KB without the index. Keyed by block, new entries land in the newest
-- block's few pages, whatever the ledger's size; a lookup seeks once a block instead of once.
DROP TRIGGER response_ids_indexed_moved;

CREATE TABLE response_ids_by_block (
    entry_block INTEGER NOT NULL,
    response_id TEXT    NOT NULL,
    entry_id    INTEGER NOT NULL,
    PRIMARY KEY (entry_block, response_id, entry_id)
) WITHOUT ROWID;

-- In the new key's order: the rows go in as appends.
INSERT INTO response_ids_by_block (entry_block, response_id, entry_id)
SELECT entry_id >> 13, response_id, entry_id FROM response_ids
ORDER BY entry_id >> 13, response_id, entry_id;

DROP TABLE response_ids;
ALTER TABLE response_ids_by_block RENAME TO response_ids;

CREATE TRIGGER response_ids_indexed_moved AFTER UPDATE OF entry_id ON response_ids_indexed
BEGIN
    INSERT INTO response_ids (entry_block, response_id, entry_id)
    SELECT id >> 13, response_id, id FROM ledger_entries
    WHERE id > OLD.entry_id AND id <= NEW.entry_id AND response_id IS NOT NULL
    ORDER BY id >> 13, response_id
    ON CONFLICT DO NOTHING;
END;
