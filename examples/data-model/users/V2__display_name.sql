ALTER TABLE profiles ADD COLUMN display_name text;
