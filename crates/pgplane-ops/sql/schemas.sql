-- Schemas of the current database with owner and privileges (`grantee:PRIVILEGE`).
SELECT n.nspname,
       pg_get_userbyid(n.nspowner) AS owner,
       ARRAY(SELECT COALESCE(r.rolname::text, 'PUBLIC') || ':' || a.privilege_type
               FROM aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a
               LEFT JOIN pg_roles r ON r.oid = a.grantee) AS privileges
  FROM pg_namespace n
 WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
