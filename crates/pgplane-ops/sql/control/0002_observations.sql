-- Cache of database contents as apply last read them, keyed by the pg_shdepend
-- fingerprint (sql/fingerprints.sql). Only apply writes it; plan and status read it.
CREATE TABLE pgplane.observations (
    server      text        NOT NULL,
    database    text        NOT NULL,
    fingerprint text        NOT NULL,
    readers     text[]      NOT NULL,
    contents    jsonb       NOT NULL,
    observed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, database)
);
