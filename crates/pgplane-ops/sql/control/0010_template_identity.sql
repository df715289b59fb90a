-- The OID of a template's database once pgplane built and swapped it in (issue 14:
-- `pgplane destroy` drops only the database pgplane built). NULL in rows of an older
-- pgplane: a template with `built_at` set is then taken by its name, as before.
ALTER TABLE pgplane.templates ADD COLUMN database_oid oid;
