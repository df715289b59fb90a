-- The leader's duties (the periodic gc) run before a backlog of requests: workers claim
-- the highest priority first, then the oldest. Requests are 0, the leader's duties 1.
ALTER TABLE pgplane.jobs ADD COLUMN priority smallint NOT NULL DEFAULT 0;
DROP INDEX pgplane.jobs_queued;
CREATE INDEX jobs_queued ON pgplane.jobs (priority DESC, id) WHERE status = 'queued';
