-- Identity, not just names (issue 11). The OID of every role and database pgplane created
-- or adopted: an object dropped and re-created by someone else under the same name has
-- another OID, and pgplane never drops or alters it. NULL in rows written by an older
-- pgplane (and for schemas and extensions, which live in a database pgplane owns): apply
-- records the OID the first time it sees the object.
ALTER TABLE pgplane.objects ADD COLUMN object_oid oid;

-- The OID of a branch's database once pgplane created it. NULL: pgplane has not created
-- it (the row is claimed first), so no database of that name is pgplane's to drop.
-- 0: a row of an older pgplane, identity unknown: the first operation that sees the
-- database records its OID.
ALTER TABLE pgplane.branches ADD COLUMN database_oid oid;
UPDATE pgplane.branches SET database_oid = 0;

-- Which secret key this control database's passwords derive from: a fingerprint
-- (HMAC of the key, never the key), so a process with another key is stopped and told
-- instead of handing out passwords that fail.
ALTER TABLE pgplane.installation ADD COLUMN key_fingerprint text;

-- A role's server-side verifier as last found to match the derived password (an HMAC
-- keyed by the secret key over server, role, generation and the verifier), so checking
-- for password drift costs a SCRAM derivation only for roles whose verifier changed.
ALTER TABLE pgplane.role_secrets ADD COLUMN verified text;
