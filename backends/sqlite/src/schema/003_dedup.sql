-- Courier SQLite schema, version 3: deduplication keys (Q11).
--
-- Every change is additive, so a version 2 database keeps all its rows as they are: old rows
-- have no key (NULL), old queues have counted no duplicates (0).

-- Publishes that stored nothing because their key was held.
ALTER TABLE courier_queues ADD COLUMN deduplicated INTEGER NOT NULL DEFAULT 0;

-- The message's deduplication key (NULL: none), copied from its body when it is stored, so
-- the paths where a message stops being live (ack, bury, discard) and requeue find it without
-- decoding the body.
ALTER TABLE courier_messages ADD COLUMN dedup_key TEXT;

-- Per queue, who holds each key: the last message stored with it (`owner`, its message id),
-- whether that message is live (ready, delayed or leased) and until when the key stays taken
-- even once it is not (`hold_until`, ms; 0 = no window). A key is held while
-- `live = 1 OR now < hold_until`; a row that holds nothing any more is deleted when its owner
-- leaves, or later by a bounded purge on keyed publishes.
CREATE TABLE courier_dedup (
    qid        INTEGER NOT NULL REFERENCES courier_queues (qid),
    key        TEXT    NOT NULL,
    owner      BLOB    NOT NULL,
    live       INTEGER NOT NULL,
    hold_until INTEGER NOT NULL,
    PRIMARY KEY (qid, key)
) WITHOUT ROWID;

-- Finds the rows whose window passed and whose owner left, for the purge.
CREATE INDEX courier_dedup_expired ON courier_dedup (qid, hold_until) WHERE live = 0;
