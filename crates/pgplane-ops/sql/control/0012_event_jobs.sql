-- Jobs queued for events are marked, so that the end of every other job (nearly all of
-- them) does not call the event trigger: a PL/pgSQL call and a look at pgplane.events per
-- job end was a third of the finish's cost on the queue's hot path (bench/jobs).
ALTER TABLE pgplane.jobs ADD COLUMN event boolean NOT NULL DEFAULT false;

UPDATE pgplane.jobs j SET event = true
 WHERE EXISTS (SELECT 1 FROM pgplane.events e WHERE e.job_id = j.id);

DROP TRIGGER jobs_event_end ON pgplane.jobs;

CREATE TRIGGER jobs_event_end AFTER UPDATE OF status ON pgplane.jobs
    FOR EACH ROW WHEN (NEW.event AND NEW.status IN ('succeeded', 'failed', 'cancelled')
                       AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION pgplane.event_job_ended();
