-- The shared tables the apps build on, and the replay's state. Every run replays from
-- the start: the rows are emptied and the instance is not live until the replay says so.
CREATE TABLE IF NOT EXISTS events (
    id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text        NOT NULL,
    at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS replay_state (
    live boolean NOT NULL
);
TRUNCATE events RESTART IDENTITY;
DELETE FROM replay_state;
INSERT INTO replay_state (live) VALUES (false);
