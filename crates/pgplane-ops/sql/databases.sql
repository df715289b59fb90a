-- Databases with owner, connection limit, privileges as `grantee:PRIVILEGE` pairs
-- (grantee PUBLIC for the pseudo-role; a NULL ACL means the defaults, so expand them) and
-- database-level settings as `name=value` (ALTER DATABASE ... SET; pg_db_role_setting is
-- a shared catalog, so this one query covers every database).
SELECT d.datname,
       pg_get_userbyid(d.datdba) AS owner,
       d.datconnlimit,
       d.datistemplate,
       ARRAY(SELECT COALESCE(r.rolname::text, 'PUBLIC') || ':' || a.privilege_type
               FROM aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
               LEFT JOIN pg_roles r ON r.oid = a.grantee) AS privileges,
       COALESCE((SELECT s.setconfig FROM pg_db_role_setting s
                  WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}') AS settings,
       d.oid
  FROM pg_database d
