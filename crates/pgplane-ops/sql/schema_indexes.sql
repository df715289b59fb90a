-- Indexes of tables and materialized views: definition, unique, primary, the predicate of
-- a partial index and the constraint the index implements. $1: a schema, $2: a relation
-- name; NULL for all.
SELECT n.nspname AS schema,
       c.relname AS relation,
       ic.relname AS name,
       pg_get_indexdef(i.indexrelid) AS definition,
       i.indisunique AS "unique",
       i.indisprimary AS "primary",
       pg_get_expr(i.indpred, i.indrelid, true) AS predicate,
       con.conname AS "constraint"
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                             AND con.contype IN ('p', 'u', 'x')
 WHERE c.relkind IN ('r', 'p', 'm')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND ($1::text IS NULL OR n.nspname = $1)
   AND ($2::text IS NULL OR c.relname = $2)
 ORDER BY n.nspname, c.relname, ic.relname;
