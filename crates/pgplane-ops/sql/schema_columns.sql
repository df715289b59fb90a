-- Columns of every table and view (dropped columns left out) in their order: type,
-- nullability, default, identity, generation expression, comment, and the enum type the
-- column uses (itself or as an array's element). $1: a schema, $2: a relation name; NULL
-- for all.
SELECT n.nspname AS schema,
       c.relname AS relation,
       a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS "default",
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by_default' END AS identity,
       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END AS generated,
       col_description(c.oid, a.attnum) AS comment,
       en.nspname AS enum_schema,
       e.typname AS enum_name
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_type e ON e.typtype = 'e' AND e.oid IN (t.oid, t.typelem)
  LEFT JOIN pg_namespace en ON en.oid = e.typnamespace
 WHERE a.attnum > 0 AND NOT a.attisdropped
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND ($1::text IS NULL OR n.nspname = $1)
   AND ($2::text IS NULL OR c.relname = $2)
 ORDER BY n.nspname, c.relname, a.attnum;
