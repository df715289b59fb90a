-- Per-database role settings (ALTER ROLE ... IN DATABASE ... SET).
SELECT d.datname, r.rolname, s.setconfig
  FROM pg_db_role_setting s
  JOIN pg_database d ON d.oid = s.setdatabase
  JOIN pg_roles r ON r.oid = s.setrole
