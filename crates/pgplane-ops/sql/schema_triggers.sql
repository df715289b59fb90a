-- Triggers of tables and views, without the internal ones (foreign keys' triggers) and
-- the clones on partitions. $1: a schema, $2: a relation name; NULL for all.
SELECT n.nspname AS schema,
       c.relname AS relation,
       t.tgname AS name,
       pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled <> 'D' AS enabled
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND ($1::text IS NULL OR n.nspname = $1)
   AND ($2::text IS NULL OR c.relname = $2)
 ORDER BY n.nspname, c.relname, t.tgname;
