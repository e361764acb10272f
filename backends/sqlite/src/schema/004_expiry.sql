-- Courier SQLite schema, version 4: message expiry (Q12).
--
-- Additive, so a version 3 database keeps all its rows as they are: old queues and groups
-- have expired nothing (0).
--
-- No column holds a message's expiry: it lives in the body (wire tag 2), which a claim decodes
-- anyway before it leases a row, so the body is the one place it is read from. Rows stored by
-- an older version therefore need nothing: a body without the tag has no expiry, and any body
-- that carries one is honoured.

-- Messages (or, for a group, events) that a claim reached at or after their expiry and took
-- out of the queue instead of leasing them: buried with the reason "expired", or discarded.
-- Not counted in dead_lettered.
ALTER TABLE courier_queues ADD COLUMN expired INTEGER NOT NULL DEFAULT 0;
