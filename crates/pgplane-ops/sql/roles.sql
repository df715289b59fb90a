-- Roles with their attributes, the databases where they own objects or hold privileges,
-- and the subset where they own objects. pg_shdepend is a shared catalog: one pass over
-- it covers every database (entries for shared objects have dbid 0 and are left out).
WITH deps AS (
    SELECT s.refobjid AS role,
           array_agg(DISTINCT d.datname::text) AS dependent_databases,
           array_agg(DISTINCT d.datname::text) FILTER (WHERE s.deptype = 'o') AS owns_objects_in
      FROM pg_shdepend s
      JOIN pg_database d ON d.oid = s.dbid
     WHERE s.refclassid = 'pg_authid'::regclass
     GROUP BY s.refobjid
)
SELECT r.rolname,
       r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       r.rolreplication, r.rolbypassrls, r.rolinherit,
       COALESCE(deps.dependent_databases, '{}') AS dependent_databases,
       COALESCE(deps.owns_objects_in, '{}') AS owns_objects_in,
       r.oid
  FROM pg_roles r
  LEFT JOIN deps ON deps.role = r.oid
 WHERE r.rolname !~ '^pg_'
