-- Tables and views of a database for `pgplane schema describe|diff`: kind, comment, view
-- definition, partition key and partitions (partitions are folded into their parent).
-- One round trip whatever the number of tables. $1: a schema, $2: a relation name; NULL
-- for all (system schemas are never listed).
SELECT n.nspname AS schema,
       c.relname AS name,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned_table'
                      WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized_view'
                      WHEN 'f' THEN 'foreign_table' END AS kind,
       obj_description(c.oid, 'pg_class') AS description,
       CASE WHEN c.relkind IN ('v', 'm') THEN ltrim(pg_get_viewdef(c.oid, true)) END AS view_definition,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key,
       ARRAY(SELECT pn.nspname || '.' || p.relname || ' ' || pg_get_expr(p.relpartbound, p.oid)
               FROM pg_inherits i
               JOIN pg_class p ON p.oid = i.inhrelid
               JOIN pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhparent = c.oid AND p.relispartition
              ORDER BY 1) AS partitions
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND ($1::text IS NULL OR n.nspname = $1)
   AND ($2::text IS NULL OR c.relname = $2)
 ORDER BY n.nspname, c.relname;
