-- A random id for this control database. Sessions that run plan statements are named
-- `pgplane-apply/<id>/<nonce>`, so the next lock holder reaps only sessions of processes
-- that shared this control database (not of another installation, nor of a clone).
CREATE TABLE pgplane.installation (
    id         text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX installation_one_row ON pgplane.installation ((true));
INSERT INTO pgplane.installation (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
