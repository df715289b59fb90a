#!/bin/sh
# Copies the shared events into the app's schema in batches (the app's "sync").
set -eu
app=$1
while :; do
  n=$(psql -X -At -v ON_ERROR_STOP=1 -c "WITH c AS (INSERT INTO app_$app.events SELECT id, kind, at FROM events e
        WHERE NOT EXISTS (SELECT 1 FROM app_$app.events a WHERE a.id = e.id) ORDER BY id LIMIT 300
        RETURNING 1) SELECT count(*) FROM c")
  [ "$n" -eq 0 ] && break
  echo "copied $n rows"
  sleep 0.1
done
echo "in sync"
