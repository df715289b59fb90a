-- Primary keys, unique, check, exclusion and foreign-key constraints of tables (those of
-- partitions that come from their parent are left out: conparentid). Foreign keys are
-- listed when either side matches the filter, so a table's incoming references come with
-- it. $1: a schema, $2: a relation name; NULL for all.
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname,
           ($1::text IS NULL OR n.nspname = $1) AND ($2::text IS NULL OR c.relname = $2) AS wanted
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND NOT c.relispartition
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
)
SELECT r.nspname AS schema,
       r.relname AS relation,
       con.conname AS name,
       con.contype::text AS type,
       pg_get_constraintdef(con.oid, true) AS definition,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
              ORDER BY k.i) AS columns,
       fn.nspname AS referenced_schema,
       f.relname AS referenced_table,
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
              ORDER BY k.i) AS referenced_columns,
       CASE con.confupdtype WHEN 'a' THEN 'no action' WHEN 'r' THEN 'restrict' WHEN 'c' THEN 'cascade'
                            WHEN 'n' THEN 'set null' WHEN 'd' THEN 'set default' END AS on_update,
       CASE con.confdeltype WHEN 'a' THEN 'no action' WHEN 'r' THEN 'restrict' WHEN 'c' THEN 'cascade'
                            WHEN 'n' THEN 'set null' WHEN 'd' THEN 'set default' END AS on_delete
  FROM pg_constraint con
  JOIN rel r ON r.oid = con.conrelid
  LEFT JOIN pg_class f ON f.oid = con.confrelid
  LEFT JOIN pg_namespace fn ON fn.oid = f.relnamespace
 WHERE con.contype IN ('p', 'u', 'c', 'x', 'f')
   AND con.conparentid = 0
   AND (r.wanted OR (con.contype = 'f' AND con.confrelid IN (SELECT oid FROM rel WHERE wanted)))
 ORDER BY r.nspname, r.relname, con.conname;
