-- Roles with their attributes, the databases where they own objects or hold privileges,
-- and the subset where they own objects (pg_shdepend is a shared catalog: one query
-- covers every database; entries for shared objects have dbid 0 and are left out).
SELECT r.rolname,
       r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       r.rolreplication, r.rolbypassrls, r.rolinherit,
       ARRAY(SELECT DISTINCT d.datname::text
               FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
              WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
              ORDER BY 1) AS dependent_databases,
       ARRAY(SELECT DISTINCT d.datname::text
               FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
              WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid AND s.deptype = 'o'
              ORDER BY 1) AS owns_objects_in
  FROM pg_roles r
 WHERE r.rolname !~ '^pg_'
