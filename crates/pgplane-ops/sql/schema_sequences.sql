-- Sequences with their parameters, comment and owning column (OWNED BY, serial). Identity
-- columns' sequences are left out: the column says `identity`. $1: a schema, $2: a
-- relation name; both NULL for every sequence, else those owned by the matching relations.
SELECT n.nspname AS schema,
       c.relname AS name,
       format_type(s.seqtypid, NULL) AS type,
       s.seqstart AS start,
       s.seqincrement AS increment,
       s.seqmin AS min,
       s.seqmax AS max,
       s.seqcache AS cache,
       s.seqcycle AS cycle,
       o.nspname AS owned_by_schema,
       o.relname AS owned_by_table,
       o.attname AS owned_by_column,
       obj_description(c.oid, 'pg_class') AS comment
  FROM pg_sequence s
  JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
        SELECT tn.nspname, t.relname, a.attname::text, d.deptype
          FROM pg_depend d
          JOIN pg_class t ON t.oid = d.refobjid
          JOIN pg_namespace tn ON tn.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
         LIMIT 1) o ON true
 WHERE (o.deptype IS NULL OR o.deptype <> 'i')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND (($1::text IS NULL AND $2::text IS NULL)
        OR (o.relname IS NOT NULL AND ($1::text IS NULL OR o.nspname = $1) AND ($2::text IS NULL OR o.relname = $2)))
 ORDER BY n.nspname, c.relname;
