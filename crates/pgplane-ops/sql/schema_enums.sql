-- Enum types with their values in order and comment. $1: a schema, $2: a relation name;
-- both NULL for every enum, else the enums the matching relations' columns use (as the
-- column's type or its array's element type).
SELECT n.nspname AS schema,
       t.typname AS name,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) AS "values",
       obj_description(t.oid, 'pg_type') AS comment
  FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typtype = 'e'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND (($1::text IS NULL AND $2::text IS NULL) OR EXISTS (
        SELECT 1 FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_type at ON at.oid = a.atttypid
         WHERE (at.oid = t.oid OR at.typelem = t.oid) AND a.attnum > 0 AND NOT a.attisdropped
           AND ($1::text IS NULL OR cn.nspname = $1)
           AND ($2::text IS NULL OR c.relname = $2)))
 ORDER BY n.nspname, t.typname;
