-- (schema, reader) pairs where the reader may SELECT every table and view; $1: readers.
SELECT n.nspname, r.rolname
  FROM pg_namespace n
 CROSS JOIN pg_roles r
 WHERE r.rolname = ANY($1::text[])
   AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
   AND NOT EXISTS (SELECT 1 FROM pg_class c
                    WHERE c.relnamespace = n.oid
                      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                      AND NOT has_table_privilege(r.oid, c.oid, 'SELECT'))
