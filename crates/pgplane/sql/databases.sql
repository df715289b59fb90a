-- Databases with owner, connection limit and privileges as `grantee:PRIVILEGE` pairs
-- (grantee PUBLIC for the pseudo-role). A NULL ACL means the defaults, so expand them.
SELECT d.datname,
       pg_get_userbyid(d.datdba) AS owner,
       d.datconnlimit,
       d.datistemplate,
       ARRAY(SELECT COALESCE(r.rolname::text, 'PUBLIC') || ':' || a.privilege_type
               FROM aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
               LEFT JOIN pg_roles r ON r.oid = a.grantee) AS privileges
  FROM pg_database d
