-- Tables and views of a database with their comment, column count, estimated rows and
-- estimated size: one round trip, whatever the number of tables. $1: a schema, or NULL for
-- all (system schemas are never listed).
--
-- Only catalog rows are read, no relation is opened: sizes are the planner's page counts
-- (`relpages` of the table, its TOAST table and all their indexes, times the block size),
-- current as of the last VACUUM, ANALYZE or CREATE INDEX, like `reltuples` for the rows;
-- tables never vacuumed nor analyzed get their exact size.
-- `pg_total_relation_size` would be exact but stats every fork of every relation: on
-- 2,000 tables that is ~5,400 stat() calls and two thirds of the query's time
-- (bench/README.md, section 5).
WITH index_pages AS (
    -- Pages of every index, counted for the table it belongs to: an index of a TOAST
    -- table counts for the table owning that TOAST table.
    SELECT coalesce(o.oid, x.indrelid) AS tbl, sum(i.relpages)::int8 AS pages
      FROM pg_index x
      JOIN pg_class i ON i.oid = x.indexrelid
      LEFT JOIN pg_class o ON o.reltoastrelid = x.indrelid
     GROUP BY 1
)
SELECT n.nspname AS schema,
       c.relname AS name,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned_table'
                      WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized_view'
                      WHEN 'f' THEN 'foreign_table' END AS kind,
       d.description,
       -- `relnatts` counts dropped columns too. They are rare and renamed
       -- `........pg.dropped.N........`, so one probe of the (attrelid, attname) index per
       -- table finds them; a scan of pg_attribute for `attisdropped` costs twice as much.
       c.relnatts - (SELECT count(*) FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attisdropped
                        AND a.attname >= '........pg.dropped.' AND a.attname < '........pg.dropped/') AS columns,
       greatest(c.reltuples, 0)::int8 AS estimated_rows,
       CASE WHEN c.relkind IN ('r', 'm') AND c.reltuples < 0
            -- never vacuumed nor analyzed (e.g. just created by a migration): no page
            -- counts yet, so the exact size (only these relations pay for the stat calls)
            THEN pg_total_relation_size(c.oid)
            WHEN c.relkind IN ('r', 'm')
            THEN (c.relpages::int8 + coalesce(t.relpages, 0) + coalesce(ip.pages, 0))
                 * current_setting('block_size')::int8
            ELSE 0 END AS size_bytes
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
  LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
  LEFT JOIN index_pages ip ON ip.tbl = c.oid
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
   AND ($1::text IS NULL OR n.nspname = $1)
 ORDER BY n.nspname, c.relname;
