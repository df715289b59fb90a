-- The shared tables the apps build on, and the replay's state.
CREATE TABLE IF NOT EXISTS events (
    id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text        NOT NULL,
    at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS replay_state (
    live boolean NOT NULL
);
INSERT INTO replay_state (live) SELECT false WHERE NOT EXISTS (SELECT 1 FROM replay_state);
