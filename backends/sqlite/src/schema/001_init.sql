-- Courier SQLite schema, version 1.
--
-- All times are milliseconds since the Unix epoch from the application's clock (never
-- SQLite's own clock). Message bodies are Courier's wire encoding (docs/wire-format.md).

-- One row per queue and per consumer group (kind 'queue' or 'group'): the state-machine
-- counters and, for groups, the read cursor into the topic's log.
CREATE TABLE courier_queues (
    qid           INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL CHECK (kind IN ('queue', 'group')),
    topic         TEXT    NOT NULL DEFAULT '',   -- groups: the topic; queues: ''
    name          TEXT    NOT NULL,              -- the queue or group name
    next_seq      INTEGER NOT NULL DEFAULT 1,    -- ordering counter (ready back, delayed, dead) and lease tokens
    front_seq     INTEGER NOT NULL DEFAULT 0,    -- decreasing: released messages go to the front
    cursor        INTEGER NOT NULL DEFAULT 0,    -- groups: next log sequence number to read
    published     INTEGER NOT NULL DEFAULT 0,
    acked         INTEGER NOT NULL DEFAULT 0,
    retried       INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, topic, name)
);

-- Every stored queue message and every per-group delivery row, in exactly one state:
-- 0 ready, 1 delayed, 2 leased (in flight), 3 dead.
CREATE TABLE courier_messages (
    rid          INTEGER PRIMARY KEY,
    qid          INTEGER NOT NULL REFERENCES courier_queues (qid),
    id           BLOB    NOT NULL,               -- the message id (16 bytes)
    priority     INTEGER NOT NULL,               -- 0 Critical .. 3 Low (groups: always 2)
    state        INTEGER NOT NULL CHECK (state IN (0, 1, 2, 3)),
    seq          INTEGER NOT NULL,               -- ready: FIFO order in its level; delayed/dead: tie-breaker
    due          INTEGER,                        -- delayed: when it becomes ready
    deadline     INTEGER,                        -- leased: when the lease ends
    token        INTEGER,                        -- leased: the lease token
    deliveries   INTEGER NOT NULL DEFAULT 0,     -- deliveries counted so far (= attempt of the current lease)
    max_attempts INTEGER,                        -- the message's override of the retry policy
    last_error   TEXT,                           -- the last failure
    failed_at    INTEGER,                        -- dead: when it was buried
    body         BLOB    NOT NULL                -- wire-encoded message
);

-- Partial indexes keep each hot path proportional to what it touches, however many
-- delayed, leased or dead rows exist.
CREATE INDEX courier_messages_ready   ON courier_messages (qid, priority, seq)  WHERE state = 0;
CREATE INDEX courier_messages_delayed ON courier_messages (qid, due, seq)       WHERE state = 1;
CREATE INDEX courier_messages_leases  ON courier_messages (qid, deadline, token) WHERE state = 2;
CREATE INDEX courier_messages_tokens  ON courier_messages (qid, token)          WHERE state = 2;
CREATE INDEX courier_messages_dead    ON courier_messages (qid, failed_at, seq) WHERE state = 3;
CREATE INDEX courier_messages_dead_id ON courier_messages (qid, id)             WHERE state = 3;

-- Event topics: the log's bounds and retention.
CREATE TABLE courier_topics (
    topic      TEXT    PRIMARY KEY,
    base       INTEGER NOT NULL DEFAULT 0,       -- sequence number of the oldest retained event
    next       INTEGER NOT NULL DEFAULT 0,       -- sequence number of the next event
    last_at    INTEGER NOT NULL DEFAULT 0,       -- append time of the newest event (never decreases)
    max_len    INTEGER,                          -- retention: keep at most this many events
    max_age_ms INTEGER                           -- retention: keep events at most this old
) WITHOUT ROWID;

-- The append-only event logs.
CREATE TABLE courier_events (
    topic      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,                 -- append time (ms)
    id         BLOB    NOT NULL,
    due          INTEGER,                        -- the event's not_before, if any
    max_attempts INTEGER,                        -- the event's override of the retry policy
    body       BLOB    NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;

CREATE INDEX courier_events_time ON courier_events (topic, created_at);
CREATE INDEX courier_events_id   ON courier_events (topic, id);

-- Short-lived pub/sub relay between processes: rows are read by other processes' pollers
-- from their last seen row and deleted after a few seconds.
CREATE TABLE courier_pubsub (
    rid        INTEGER PRIMARY KEY AUTOINCREMENT,
    origin     INTEGER NOT NULL,                 -- the publishing process (its rows are skipped there)
    channel    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    body       BLOB    NOT NULL
);

CREATE INDEX courier_pubsub_time ON courier_pubsub (created_at);
