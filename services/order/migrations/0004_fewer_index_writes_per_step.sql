-- Fewer index writes per saga step: every step used to insert or move about a dozen index
-- entries in this database, and index maintenance was most of PostgreSQL's execution time
-- at load (see README, Benchmark).

-- The outbox is keyed by its message id alone. The bigserial id (and its index) only ordered
-- the relay's poll, which now orders the few stale rows by created_at.
ALTER TABLE outbox DROP COLUMN id;
ALTER TABLE outbox DROP CONSTRAINT outbox_msg_id_key;
ALTER TABLE outbox ADD PRIMARY KEY (msg_id);

-- The unfinished-saga index is keyed by phase alone, so a step that moves current_step and
-- updated_at changes no indexed column and can be a HOT update (no index entry at all) when
-- the row's page has room, which the fill factor keeps. The census reads the few unfinished
-- rows from the heap instead of the index.
DROP INDEX sagas_unfinished;
CREATE INDEX sagas_unfinished ON sagas (phase) WHERE phase <> 'done';
ALTER TABLE sagas SET (fillfactor = 80);

-- A step's timeline row is inserted, then updated once when the step finishes: room on its
-- page keeps that update HOT too.
ALTER TABLE saga_steps SET (fillfactor = 80);
