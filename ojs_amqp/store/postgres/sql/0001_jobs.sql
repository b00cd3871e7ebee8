-- Version 1: the shape of the SQLite store's version 3 (ojs_amqp/store/sqlite.py), with
-- PostgreSQL types, and the function that applies a loop turn's row writes in one call.

CREATE TABLE ojs_jobs (
    id text PRIMARY KEY,
    queue text NOT NULL,
    state text NOT NULL,
    copy integer NOT NULL,
    published boolean NOT NULL,
    dead_letter boolean NOT NULL,
    expires_at_ms bigint,
    finished_at_ms bigint,
    doc bytea NOT NULL
);
CREATE INDEX ojs_jobs_outbox ON ojs_jobs (id) WHERE NOT published;
CREATE INDEX ojs_jobs_dead ON ojs_jobs (queue, finished_at_ms) WHERE dead_letter;
CREATE INDEX ojs_jobs_expiry ON ojs_jobs (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL AND finished_at_ms IS NULL;
CREATE INDEX ojs_jobs_finished ON ojs_jobs (finished_at_ms)
    WHERE finished_at_ms IS NOT NULL AND NOT dead_letter;
CREATE INDEX ojs_jobs_open ON ojs_jobs (queue) WHERE finished_at_ms IS NULL;

CREATE TABLE ojs_queues (name text PRIMARY KEY, created_at_ms bigint NOT NULL);

CREATE TABLE ojs_crons (
    name text PRIMARY KEY,
    next_run_at_ms bigint NOT NULL,
    doc bytea NOT NULL
);

-- Applies row writes in the order given and says, for each, whether it took effect: an
-- insert (kind 1) that met an existing id, a compare-and-set update (kind 2) whose copy or
-- state no longer matched, or a publish mark (3) / delete (4) of a missing row answers false.
-- In order, so two moves of one job in one batch behave as two calls one after the other.
CREATE FUNCTION ojs_apply(
    p_kinds smallint[], p_ids text[], p_queues text[], p_states text[], p_copies integer[],
    p_published boolean[], p_dead boolean[], p_expires bigint[], p_finished bigint[],
    p_docs bytea[], p_expect_copies integer[], p_expect_states text[]
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    w record;
    changed integer;
    outcome boolean[] := '{}';
BEGIN
    FOR w IN SELECT * FROM unnest(p_kinds, p_ids, p_queues, p_states, p_copies, p_published,
            p_dead, p_expires, p_finished, p_docs, p_expect_copies, p_expect_states)
            AS t(kind, id, queue, state, copy, published, dead, expires, finished, doc,
                 expect_copy, expect_state) LOOP
        IF w.kind = 1 THEN
            INSERT INTO ojs_jobs VALUES (w.id, w.queue, w.state, w.copy, w.published, w.dead,
                                         w.expires, w.finished, w.doc)
            ON CONFLICT (id) DO NOTHING;
        ELSIF w.kind = 2 THEN
            UPDATE ojs_jobs j SET queue = w.queue, state = w.state, copy = w.copy,
                   published = w.published, dead_letter = w.dead, expires_at_ms = w.expires,
                   finished_at_ms = w.finished, doc = w.doc
             WHERE j.id = w.id
               AND (w.expect_copy IS NULL OR j.copy = w.expect_copy)
               AND (w.expect_state IS NULL OR j.state = w.expect_state);
        ELSIF w.kind = 3 THEN
            UPDATE ojs_jobs j SET published = true WHERE j.id = w.id;
        ELSE
            DELETE FROM ojs_jobs j WHERE j.id = w.id;
        END IF;
        GET DIAGNOSTICS changed = ROW_COUNT;
        outcome := outcome || (changed = 1);
    END LOOP;
    RETURN outcome;
END
$$;
