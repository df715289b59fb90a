-- Per database ($1: names): a digest of its database OID and of every shared dependency
-- recorded for objects inside it (pg_shdepend is a shared catalog, so one connection
-- sees all databases). It changes when an object owned by or granted to a role other
-- than the bootstrap superuser is created, dropped, re-owned, granted or revoked, and
-- when the database is re-created. pgplane reuses a cached observation of a database's
-- contents only while this digest is unchanged.
SELECT d.datname,
       md5(d.oid::text || '|' || COALESCE(string_agg(
             s.classid::text || ':' || s.objid::text || ':' || s.objsubid::text || ':' ||
             s.refclassid::text || ':' || s.refobjid::text || ':' || s.deptype::text,
             ',' ORDER BY s.classid, s.objid, s.objsubid, s.refclassid, s.refobjid, s.deptype), '')) AS fingerprint
  FROM pg_database d
  LEFT JOIN pg_shdepend s ON s.dbid = d.oid
 WHERE d.datname = ANY($1::text[])
 GROUP BY d.oid, d.datname
