#!/bin/sh
# The main instance replays its data: BATCHES batches of SIZE rows, then marks itself live.
# Connection settings (PGHOST, PGUSER, PGPASSWORD, …) come from pgplane.
set -eu
batches=${1:-40}
size=${2:-50}
i=0
while [ "$i" -lt "$batches" ]; do
  psql -X -q -v ON_ERROR_STOP=1 -c "INSERT INTO events (kind) SELECT 'kind' || (g % 7) FROM generate_series(1, $size) g"
  i=$((i + 1))
  [ $((i % 10)) -eq 0 ] && echo "replayed $((i * size)) rows"
  sleep 0.05
done
psql -X -q -v ON_ERROR_STOP=1 -c "UPDATE replay_state SET live = true"
echo "live"
