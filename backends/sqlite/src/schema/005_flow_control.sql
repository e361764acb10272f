-- Courier SQLite schema, version 5: flow control (Q14 pause, Q15 rate limit, E8 group pause).
--
-- Additive, so a version 4 database keeps all its rows as they are: old queues and groups are
-- not paused and have no rate limit.
--
-- The state lives in each queue's (or group's) row, which every operation already loads and
-- saves inside its write transaction: a claim reads it at no extra cost, and every process
-- sharing the file sees a change with its next operation.

-- Paused (Q14, E8): nothing is leased (for a group, nothing leaves the log either).
ALTER TABLE courier_queues ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;

-- The rate limit (Q15): at most `rate_max` deliveries per window of `rate_per_ns` ns (both
-- NULL: no limit). Windows are aligned to the epoch; `window_start` is the start (ms) of the
-- window counted in `window_count` (deliveries leased in it, by every process). The count is
-- updated by the claim that leases, in the same transaction.
ALTER TABLE courier_queues ADD COLUMN rate_max INTEGER;
ALTER TABLE courier_queues ADD COLUMN rate_per_ns INTEGER;
ALTER TABLE courier_queues ADD COLUMN window_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE courier_queues ADD COLUMN window_count INTEGER NOT NULL DEFAULT 0;

-- Consumer groups paused before they exist (E8): pausing must not create (and so list) the
-- group, which starts paused when it is created (the row moves into `courier_queues.paused`).
CREATE TABLE courier_pending_pauses (
    topic TEXT NOT NULL,
    name  TEXT NOT NULL,
    PRIMARY KEY (topic, name)
) WITHOUT ROWID;
