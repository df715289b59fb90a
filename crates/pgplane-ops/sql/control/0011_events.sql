-- Event-driven provisioning (issue 15). The embedded queue's log, every consumed event
-- with its identity and job, consumer positions (the truth on restart), the outbox of
-- status events and dead letters, and keys held by a poison event.

-- The embedded queue: one per environment (its `topic`), an append-only log per
-- partition. A publisher updates the partition's head row before it inserts, holding
-- that row until its commit, so offsets are dense and commit in order: a consumer never
-- skips a row that commits later with a smaller offset.
CREATE TABLE pgplane.event_heads (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, partition)
);

CREATE TABLE pgplane.event_log (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    key          text        NOT NULL,
    -- The `event_type` header, when the type came apart from the envelope.
    type_header  text,
    payload      text        NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

-- Where each consumer group is in each partition of its source: the next offset to read.
-- Written in the same transaction as the events it covers; a consumer seeks here when it
-- takes a partition. `high_watermark` is the source's end as last seen (lag = hw - next).
CREATE TABLE pgplane.event_offsets (
    consumer       text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    high_watermark bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Every consumed event: its identity in the source (unique: an offset is recorded once),
-- its envelope id (the idempotency key), what became of it and its job.
CREATE TABLE pgplane.events (
    seq          bigserial   PRIMARY KEY,
    source       text        NOT NULL CHECK (source IN ('queue', 'kafka')),
    consumer     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    event_id     text,
    type         text,
    subject      text,
    key          text,
    env          text,
    outcome      text        NOT NULL CHECK (outcome IN ('queued', 'succeeded', 'duplicate', 'skipped',
                                                         'dead_lettered', 'blocked', 'cancelled')),
    job_id       bigint,
    on_failure   text        NOT NULL DEFAULT 'dead_letter' CHECK (on_failure IN ('dead_letter', 'block')),
    reason       text,
    -- The message as received (for dead letters and inspection; never a secret: events
    -- carry none, and typed data refuses unknown fields).
    payload      text,
    -- Where credentials of what the event provisions are fetched (status events carry this).
    hints        jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE UNIQUE INDEX events_identity ON pgplane.events (consumer, topic, partition, "offset");
-- The idempotency key's scope: one stream (a group reading a topic or an environment's queue).
CREATE UNIQUE INDEX events_idempotency ON pgplane.events (consumer, topic, event_id) WHERE outcome <> 'duplicate';
CREATE INDEX events_job ON pgplane.events (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX events_key ON pgplane.events (key, seq);

-- Status events and dead letters, written in the transaction that decides them (a job's
-- end, a rejected event). The Kafka relay publishes them and sets `published_at`; with
-- the embedded queue they are read at GET /api/v1/events/status?after=ID.
CREATE TABLE pgplane.event_outbox (
    id           bigserial   PRIMARY KEY,
    stream       text        NOT NULL CHECK (stream IN ('status', 'dead_letter')),
    -- The event stream it belongs to (its relay publishes only its own rows).
    consumer     text        NOT NULL,
    topic        text        NOT NULL,
    event_seq    bigint      NOT NULL,
    job_id       bigint,
    type         text,
    subject      text,
    key          text,
    -- Status: the status event's `data`. Dead letter: NULL (`payload` is the message).
    body         jsonb,
    payload      text,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX event_outbox_stream ON pgplane.event_outbox (consumer, topic, id);
CREATE INDEX event_outbox_unpublished ON pgplane.event_outbox (consumer, topic, id) WHERE published_at IS NULL;

-- Keys whose queued jobs are not run: a poison event under `on_failure: block` holds its
-- key until `pgplane events retry|skip`.
CREATE TABLE pgplane.job_holds (
    key        text        PRIMARY KEY,
    event_seq  bigint      NOT NULL,
    job_id     bigint,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A job's end decides its event's outcome in the same transaction, whichever way it ended
-- (a worker's finish, the leader's recovery of a dead worker's last attempt, an operator's
-- cancel of a queued job): the outcome, the status event, and a dead letter or a hold.
CREATE FUNCTION pgplane.event_job_ended() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $fn$
DECLARE
    e pgplane.events%ROWTYPE;
    ok boolean := NEW.status = 'succeeded';
    decided text;
BEGIN
    FOR e IN SELECT * FROM pgplane.events WHERE job_id = NEW.id AND outcome = 'queued' ORDER BY seq FOR UPDATE
    LOOP
        decided := CASE
            WHEN ok THEN 'succeeded'
            WHEN NEW.status = 'cancelled' THEN 'cancelled'
            WHEN e.on_failure = 'block' AND e.key IS NOT NULL THEN 'blocked'
            ELSE 'dead_lettered' END;
        UPDATE pgplane.events SET outcome = decided, reason = NEW.error, finished_at = pg_catalog.now()
         WHERE seq = e.seq;
        INSERT INTO pgplane.event_outbox (stream, consumer, topic, event_seq, job_id, type, subject, key, body)
        VALUES ('status', e.consumer, e.topic, e.seq, NEW.id, e.type || CASE WHEN ok THEN '.succeeded' ELSE '.failed' END, e.subject,
                e.key, pg_catalog.jsonb_build_object(
                    'job', NEW.id, 'error', NEW.error, 'event', e.event_id, 'outcome', decided,
                    'env', NEW.env, 'credentials', CASE WHEN ok THEN e.hints END, 'result', NEW.result));
        IF decided = 'dead_lettered' THEN
            INSERT INTO pgplane.event_outbox (stream, consumer, topic, event_seq, job_id, type, subject, key, payload, reason)
            VALUES ('dead_letter', e.consumer, e.topic, e.seq, NEW.id, e.type, e.subject, e.key, e.payload, NEW.error);
        ELSIF decided = 'blocked' THEN
            INSERT INTO pgplane.job_holds (key, event_seq, job_id, reason)
            VALUES (NEW.key, e.seq, NEW.id, NEW.error) ON CONFLICT (key) DO NOTHING;
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER jobs_event_end AFTER UPDATE OF status ON pgplane.jobs
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION pgplane.event_job_ended();
