-- beta reads events by time.
CREATE INDEX IF NOT EXISTS events_at_beta ON events (at);
SELECT pg_sleep(0.5);
