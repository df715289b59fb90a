-- Repeatable: re-applied whenever this file changes.
CREATE OR REPLACE VIEW profile_names AS SELECT login, coalesce(display_name, login) AS name FROM profiles;
