-- Version 2: what the admin API's lists filter and sort on (store/postgres/admin_queries.py),
-- as plain columns filled from the job document by a trigger, so that every filter is an
-- index range and no query parses documents. One parse per written document (the trigger
-- fires only when `doc` is written; a publish mark does not).
-- job_type sorts bytewise (COLLATE "C"): a type prefix (`email.*`) is then one index range.

ALTER TABLE ojs_jobs
    ADD COLUMN job_type text COLLATE "C",
    ADD COLUMN created_at_ms bigint,
    ADD COLUMN scheduled_at_ms bigint,
    ADD COLUMN error_code text;

-- A job document as JSON text. PostgreSQL's JSON parsers refuse a NUL escape (\u0000)
-- anywhere in a document, and a job's args may hold one: such a document (only) has its NUL
-- escapes replaced by U+FFFD first. Escaped backslashes are respelled first (as \u005c), so
-- that a backslash followed by the text "u0000" is not mistaken for one.
CREATE FUNCTION ojs_doc_text(doc bytea) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN strpos(t, '\u0000') = 0 THEN t
                ELSE replace(replace(t, '\\', '\u005c'), '\u0000', '\ufffd') END
      FROM convert_from(doc, 'UTF8') AS t
$$;

-- jsonb: parsed once, then four cheap lookups (json would re-parse the text for each).
CREATE FUNCTION ojs_jobs_admin_fields() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb := ojs_doc_text(NEW.doc)::jsonb;
BEGIN
    NEW.job_type := d->>'type';
    NEW.created_at_ms := (d->>'created_at_ms')::bigint;
    NEW.scheduled_at_ms := (d->>'scheduled_at_ms')::bigint;
    NEW.error_code := d#>>'{error,code}';
    RETURN NEW;
END
$$;

CREATE TRIGGER ojs_jobs_admin_fields BEFORE INSERT OR UPDATE OF doc ON ojs_jobs
    FOR EACH ROW EXECUTE FUNCTION ojs_jobs_admin_fields();

UPDATE ojs_jobs SET doc = doc;  -- the rows a version-1 store already holds

-- Each ends in id, the lists' tie-break, so that one index range is the page in order.
CREATE INDEX ojs_admin_queue_state ON ojs_jobs (queue, state, created_at_ms, id);
CREATE INDEX ojs_admin_state ON ojs_jobs (state, created_at_ms, id);
CREATE INDEX ojs_admin_state_due ON ojs_jobs (state, scheduled_at_ms, id);
CREATE INDEX ojs_admin_queue ON ojs_jobs (queue, created_at_ms, id);
CREATE INDEX ojs_admin_type ON ojs_jobs (job_type, created_at_ms, id);
CREATE INDEX ojs_admin_created ON ojs_jobs (created_at_ms, id);
CREATE INDEX ojs_admin_dead_queue ON ojs_jobs (queue, finished_at_ms, id) WHERE dead_letter;
CREATE INDEX ojs_admin_dead_time ON ojs_jobs (finished_at_ms, id) WHERE dead_letter;
CREATE INDEX ojs_admin_dead_type ON ojs_jobs (job_type, finished_at_ms, id) WHERE dead_letter;
CREATE INDEX ojs_admin_dead_error ON ojs_jobs (error_code) WHERE dead_letter;

-- Run-time queue configuration set through the admin API (backpressure), kept across restarts.
CREATE TABLE ojs_admin_queue_config (queue text PRIMARY KEY, doc bytea NOT NULL);
