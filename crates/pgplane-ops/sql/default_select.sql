-- Default privileges that give SELECT on future tables: (owner, schema, grantee).
SELECT pg_get_userbyid(d.defaclrole) AS owner, n.nspname, COALESCE(r.rolname::text, 'PUBLIC') AS grantee
  FROM pg_default_acl d
  JOIN pg_namespace n ON n.oid = d.defaclnamespace
  CROSS JOIN LATERAL aclexplode(d.defaclacl) a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE d.defaclobjtype = 'r' AND a.privilege_type = 'SELECT'
