-- alpha reads events by kind. Builds on the shared table must not overlap (group `indexes`).
CREATE INDEX IF NOT EXISTS events_kind_alpha ON events (kind);
SELECT pg_sleep(0.5);
