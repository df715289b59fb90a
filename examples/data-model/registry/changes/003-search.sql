--liquibase formatted sql

--changeset registry-team:search-1
--comment: trigram search on names (pg_trgm is provisioned by the manifest)
CREATE INDEX entries_name_trgm ON entries USING gin (name gin_trgm_ops);
--rollback DROP INDEX entries_name_trgm;
