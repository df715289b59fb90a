-- Per database ($1: names): a digest of its database OID, of every shared dependency
-- recorded for objects inside it (with the referenced role's current name), and of all
-- role memberships. pg_shdepend, pg_roles and pg_auth_members are shared catalogs, so one
-- connection sees all databases. The digest changes when an object owned by or granted
-- to a role other than the bootstrap superuser is created, dropped, re-owned, granted or
-- revoked, when such a role is renamed, when any membership changes, and when the
-- database is re-created. pgplane reuses a cached observation of a database's contents
-- only while this digest is unchanged.
WITH members AS (
    SELECT md5(COALESCE(string_agg(roleid::text || ':' || member::text, ',' ORDER BY roleid, member), '')) AS digest
      FROM pg_auth_members
)
SELECT d.datname,
       md5(d.oid::text || '|' || (SELECT digest FROM members) || '|' || COALESCE(string_agg(
             s.classid::text || ':' || s.objid::text || ':' || s.objsubid::text || ':' ||
             s.refclassid::text || ':' || s.refobjid::text || ':' || s.deptype::text || ':' ||
             COALESCE(r.rolname::text, ''),
             ',' ORDER BY s.classid, s.objid, s.objsubid, s.refclassid, s.refobjid, s.deptype), '')) AS fingerprint
  FROM pg_database d
  LEFT JOIN pg_shdepend s ON s.dbid = d.oid
  LEFT JOIN pg_roles r ON r.oid = s.refobjid
 WHERE d.datname = ANY($1::text[])
 GROUP BY d.oid, d.datname
