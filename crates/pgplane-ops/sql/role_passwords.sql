-- The stored password (a SCRAM verifier, or NULL) of the named roles. pg_authid is
-- readable by superusers only: pgplane's admin is one.
SELECT a.rolname::pg_catalog.text, a.rolpassword
  FROM pg_catalog.pg_authid a
 WHERE a.rolname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
