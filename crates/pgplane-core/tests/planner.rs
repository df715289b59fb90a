//! Snapshot tests of the planner: hand-written desired and observed states in, the plan
//! text out. Update snapshots with `UPDATE_EXPECT=1 cargo test -p pgplane-core`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use expect_test::{expect, Expect};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::{Desired, ObjectKind, ObjectRef, Origin, Purpose, Record};
use pgplane_core::observed::{
    Contents, DatabaseState, DbContents, Observed, RoleState, SchemaState, ServerState, PUBLIC,
};
use pgplane_core::plan::{plan, PlanOptions};
use pgplane_core::render::plan_text;
use pgplane_core::tenant::{ModuleState, Registry, TenantModule, TenantRecord};

fn desired(env: &str, body: &str) -> Desired {
    let text = format!("version: 1\n{body}");
    let m = Manifest::parse(Path::new("pgplane.yaml"), &text, &|_| None).expect("valid manifest");
    Desired::build(&m, env, &Registry::default()).expect("names are fine")
}

/// The observed state right after a successful apply of `d`, records included.
fn applied(d: &Desired) -> Observed {
    let mut s = ServerState::default();
    for r in &d.roles {
        s.roles.insert(r.name.clone(), RoleState { login: r.login, ..RoleState::default() });
    }
    for db in &d.databases {
        let readers =
            d.read_grants.iter().filter(|g| g.database == db.name).map(|g| (g.schema.clone(), g.reader.clone()));
        let mut contents = DbContents::fresh(readers);
        for sc in d.schemas.iter().filter(|s| s.database == db.name) {
            let mut privileges = BTreeMap::from([(sc.owner.clone(), set(&["USAGE", "CREATE"]))]);
            for g in d.read_grants.iter().filter(|g| g.database == db.name && g.schema == sc.name) {
                privileges.insert(g.reader.clone(), set(&["USAGE"]));
            }
            contents.schemas.insert(sc.name.clone(), SchemaState { owner: sc.owner.clone(), privileges });
        }
        for g in d.read_grants.iter().filter(|g| g.database == db.name) {
            if let Some(p) = contents.schemas.get_mut(&g.schema) {
                p.privileges.entry(g.reader.clone()).or_default().insert("USAGE".into());
            }
            contents.default_select.insert((g.owner.clone(), g.schema.clone(), g.reader.clone()));
            contents.select_all.insert((g.schema.clone(), g.reader.clone()));
        }
        for e in d.extensions.iter().filter(|e| e.database == db.name) {
            contents.extensions.insert(e.name.clone());
        }
        let owner = if db.revoke_connect.contains(&db.owner) {
            set(&["CREATE", "TEMPORARY"])
        } else {
            set(&["CONNECT", "CREATE", "TEMPORARY"])
        };
        let mut privileges = BTreeMap::from([(db.owner.clone(), owner)]);
        for r in &db.connect {
            privileges.insert(r.clone(), set(&["CONNECT"]));
        }
        s.databases.insert(
            db.name.clone(),
            DatabaseState {
                oid: 0,
                owner: db.owner.clone(),
                connection_limit: db.connection_limit,
                is_template: false,
                privileges,
                settings: db.settings.iter().cloned().collect(),
                contents: Contents::Known(contents),
            },
        );
    }
    for rs in &d.role_settings {
        s.role_settings.insert((rs.database.clone(), rs.role.clone()), vec![format!("search_path={}", rs.search_path)]);
    }
    let records =
        d.objects().into_iter().map(|(object, origin)| Record { object, origin: origin.clone(), oid: None }).collect();
    Observed { servers: BTreeMap::from([("local".to_string(), s)]), records }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check(d: &Desired, o: &Observed, opts: PlanOptions, expect: Expect) {
    let actual = match plan(d, o, opts) {
        Ok(p) => plan_text(&p),
        Err(e) => format!("error:\n{e}\n"),
    };
    expect.assert_eq(&actual);
}

const REGISTRY: &str = "modules:\n  - name: registry\n    storage: database\n    extensions: [pg_trgm]\n    connection_limit: 40\n    readonly_role: true\n";

#[test]
fn empty_server_gets_everything_in_order() {
    let d = desired("dev", REGISTRY);
    check(
        &d,
        &Observed::default(),
        PlanOptions::default(),
        expect![[r#"
              1. create_role role dev_registry  [local]  (role dev_registry is missing)
                 CREATE ROLE "dev_registry" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
              2. create_role role dev_registry_readonly  [local]  (role dev_registry_readonly is missing)
                 CREATE ROLE "dev_registry_readonly" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
              3. create_database database dev_registry  [local]  (database dev_registry is missing)
                 CREATE DATABASE "dev_registry" OWNER "dev_registry" CONNECTION LIMIT 40;
              4. revoke_public database dev_registry  [local]  (least privilege: only the module's roles may connect)
                 REVOKE ALL ON DATABASE "dev_registry" FROM PUBLIC;
              5. grant_connect database dev_registry  [local]  (role dev_registry_readonly must be able to connect)
                 GRANT CONNECT ON DATABASE "dev_registry" TO "dev_registry_readonly";
              6. create_extension extension dev_registry.pg_trgm  [local/dev_registry]  (extension dev_registry.pg_trgm is missing)
                 CREATE EXTENSION "pg_trgm" SCHEMA public;
              7. grant_usage schema dev_registry.public  [local/dev_registry]  (read-only role dev_registry_readonly reads this schema)
                 GRANT USAGE ON SCHEMA "public" TO "dev_registry_readonly";
              8. default_privileges schema dev_registry.public  [local/dev_registry]  (future tables of dev_registry must be readable by dev_registry_readonly)
                 ALTER DEFAULT PRIVILEGES FOR ROLE "dev_registry" IN SCHEMA "public" GRANT SELECT ON TABLES TO "dev_registry_readonly";
            Plan: 8 changes: 4 to create, 4 to change, 0 to drop (env dev).
        "#]],
    );
}

#[test]
fn applied_state_needs_nothing() {
    let d = desired(
        "dev",
        &format!("{REGISTRY}  - name: users\n    storage: schema-per-tenant\n    readonly_role: true\ntenants:\n  - name: acme\n    modules: [users]\n"),
    );
    check(
        &d,
        &applied(&d),
        PlanOptions::default(),
        expect![[r#"
        No changes (env dev).
    "#]],
    );
}

#[test]
fn drift_is_repaired() {
    let d = desired("dev", REGISTRY);
    let mut o = applied(&d);
    let s = o.servers.get_mut("local").unwrap();
    s.roles.get_mut("dev_registry_readonly").unwrap().superuser = true;
    let db = s.databases.get_mut("dev_registry").unwrap();
    db.owner = "postgres".into();
    db.connection_limit = -1;
    db.privileges.insert(PUBLIC.into(), set(&["CONNECT"]));
    db.privileges.remove("dev_registry_readonly");
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
          1. alter_role role dev_registry_readonly  [local]  (drift: role has SUPERUSER)
             ALTER ROLE "dev_registry_readonly" NOSUPERUSER;
          2. alter_database_owner database dev_registry  [local]  (drift: owner is postgres)
             ALTER DATABASE "dev_registry" OWNER TO "dev_registry";
          3. alter_database_connection_limit database dev_registry  [local]  (connection limit is -1, want 40)
             ALTER DATABASE "dev_registry" CONNECTION LIMIT 40;
          4. revoke_public database dev_registry  [local]  (drift: PUBLIC has CONNECT)
             REVOKE ALL ON DATABASE "dev_registry" FROM PUBLIC;
          5. grant_connect database dev_registry  [local]  (role dev_registry_readonly must be able to connect)
             GRANT CONNECT ON DATABASE "dev_registry" TO "dev_registry_readonly";
        Plan: 5 changes: 0 to create, 5 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn unmanaged_objects_are_refused_unless_adopted() {
    let d = desired("dev", "modules:\n  - name: app\n    storage: database\n");
    let mut o = applied(&d);
    o.records.clear();
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
        error:
        role dev_app already exists and pgplane does not manage it (wanted by env dev module app (owner_role)); adopt it with `pgplane adopt` or `pgplane apply --adopt`, or change the naming templates
        database dev_app already exists and pgplane does not manage it (wanted by env dev module app (database)); adopt it with `pgplane adopt` or `pgplane apply --adopt`, or change the naming templates
    "#]],
    );
    check(
        &d,
        &o,
        PlanOptions { adopt: true, prune: false },
        expect![[r#"
          1. adopt role dev_app  [local]  (exists and --adopt was given: pgplane records it as its own)
          2. adopt database dev_app  [local]  (exists and --adopt was given: pgplane records it as its own)
          3. set_password role dev_app  [local]  (adopted: pgplane sets a password it can hand out with `pgplane credentials`)
             ALTER ROLE "dev_app" PASSWORD '********';
        Plan: 3 changes: 0 to create, 3 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn orphans_are_reported_and_dropped_only_with_prune() {
    let before = desired(
        "dev",
        "modules:\n  - name: keep\n    storage: database\n  - name: users\n    storage: schema-per-tenant\n    extensions: [pg_trgm]\ntenants:\n  - name: acme\n    modules: [users]\n",
    );
    let o = applied(&before);
    let after = desired("dev", "modules:\n  - name: keep\n    storage: database\n");
    check(
        &after,
        &o,
        PlanOptions::default(),
        expect![[r#"
        orphaned (managed, no longer in the manifest; `apply --prune` drops them):
          - extension dev_users.pg_trgm [local]
          - schema dev_users.acme_users [local]
          - database dev_users [local]
          - role dev_acme_users [local]
          - role dev_users [local]
        No changes (env dev), 5 orphaned.
    "#]],
    );
    check(
        &after,
        &o,
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
              1. drop_database database dev_users  [local]  (removed from the manifest; --prune given)
                 DROP DATABASE "dev_users" WITH (FORCE);
              2. disable_role role dev_acme_users  [local]  (no new sessions while it is dropped)
                 ALTER ROLE "dev_acme_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_users';
              3. drop_owned role dev_acme_users  [local]  (revoke its privileges on databases)
                 DROP OWNED BY "dev_acme_users";
              4. drop_role role dev_acme_users  [local]  (removed from the manifest; --prune given)
                 DROP ROLE "dev_acme_users";
              5. disable_role role dev_users  [local]  (no new sessions while it is dropped)
                 ALTER ROLE "dev_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_users';
              6. drop_owned role dev_users  [local]  (revoke its privileges on databases)
                 DROP OWNED BY "dev_users";
              7. drop_role role dev_users  [local]  (removed from the manifest; --prune given)
                 DROP ROLE "dev_users";
              8. forget extension dev_users.pg_trgm  [local]  (its database was dropped)
              9. forget schema dev_users.acme_users  [local]  (its database was dropped)
            Plan: 9 changes: 0 to create, 4 to change, 5 to drop (env dev).
        "#]],
    );
}

#[test]
fn records_of_other_environments_are_never_orphans() {
    let other = desired("qa", "modules:\n  - name: app\n    storage: database\n");
    let o = applied(&other);
    let d = desired("dev", "modules:\n  - name: app\n    storage: database\n");
    let p = plan(&d, &o, PlanOptions { prune: true, adopt: false }).unwrap();
    assert!(p.orphans.is_empty());
    assert!(p.actions.iter().all(|a| !a.kind.is_drop()));
}

#[test]
fn foreign_grants_on_tenant_schemas_are_revoked() {
    let d = desired(
        "dev",
        "modules:\n  - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n  - name: globex\n    modules: [users]\n",
    );
    let mut o = applied(&d);
    let Contents::Known(c) = &mut o.servers.get_mut("local").unwrap().databases.get_mut("dev_users").unwrap().contents
    else {
        unreachable!()
    };
    c.schemas.get_mut("acme_users").unwrap().privileges.insert("dev_globex_users".into(), set(&["USAGE"]));
    c.schemas.get_mut("public").unwrap().privileges.insert(PUBLIC.into(), set(&["USAGE", "CREATE"]));
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
          1. revoke_schema schema dev_users.public  [local/dev_users]  (drift: PUBLIC may create in public)
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
          2. revoke_schema schema dev_users.acme_users  [local/dev_users]  (isolation: dev_globex_users must not reach this schema)
             REVOKE ALL ON SCHEMA "acme_users" FROM "dev_globex_users";
        Plan: 2 changes: 0 to create, 2 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn a_name_managed_for_another_origin_is_a_clash() {
    let other = desired("dev_a", "modules:\n  - name: b\n    storage: database\n");
    let o = applied(&other);
    let d = desired("dev", "modules:\n  - name: a_b\n    storage: database\n");
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
        error:
        name clash: role dev_a_b is already managed by pgplane for env dev_a module b (owner_role), and env dev module a_b (owner_role) wants it too; change a name or the naming templates
        name clash: database dev_a_b is already managed by pgplane for env dev_a module b (database), and env dev module a_b (database) wants it too; change a name or the naming templates
    "#]],
    );
}

#[test]
fn a_missing_managed_object_is_recreated() {
    let d = desired("dev", "modules:\n  - name: app\n    storage: database\n");
    let mut o = applied(&d);
    o.servers.get_mut("local").unwrap().databases.remove("dev_app");
    let p = plan(&d, &o, PlanOptions::default()).unwrap();
    assert_eq!(p.actions[0].sql.redacted(), "CREATE DATABASE \"dev_app\" OWNER \"dev_app\" CONNECTION LIMIT -1");
    // Unused helper kept honest.
    let _ = ObjectRef::cluster("local", ObjectKind::Role, "x");
    let _ = Origin { env: "dev".into(), module: "m".into(), tenant: None, purpose: Purpose::OwnerRole };
}

const ACME_USERS: &str =
    "modules:\n  - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n";

#[test]
fn a_renamed_tenant_role_hands_its_objects_to_its_successor() {
    let mut o = applied(&desired("dev", ACME_USERS));
    let old = o.servers.get_mut("local").unwrap().roles.get_mut("dev_acme_users").unwrap();
    old.dependent_databases.insert("dev_users".into());
    old.owns_objects_in.insert("dev_users".into());
    let after = desired("dev", &format!("naming:\n  tenant_role: \"{{env}}_{{tenant}}_{{module}}_rw\"\n{ACME_USERS}"));
    check(
        &after,
        &o,
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
          1. create_role role dev_acme_users_rw  [local]  (role dev_acme_users_rw is missing)
             CREATE ROLE "dev_acme_users_rw" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
          2. grant_connect database dev_users  [local]  (role dev_acme_users_rw must be able to connect)
             GRANT CONNECT ON DATABASE "dev_users" TO "dev_acme_users_rw";
          3. alter_schema_owner schema dev_users.acme_users  [local/dev_users]  (drift: owner is dev_acme_users)
             ALTER SCHEMA "acme_users" OWNER TO "dev_acme_users_rw";
          4. set_search_path role dev_acme_users_rw  [local]  (the role works in schema acme_users by default)
             ALTER ROLE "dev_acme_users_rw" IN DATABASE "dev_users" SET search_path TO "acme_users";
          5. disable_role role dev_acme_users  [local]  (no new sessions while it is dropped)
             ALTER ROLE "dev_acme_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_users';
          6. reassign_owned role dev_acme_users  [local/dev_users]  (its objects in dev_users move to dev_acme_users_rw; its privileges there go)
             REASSIGN OWNED BY "dev_acme_users" TO "dev_acme_users_rw"; DROP OWNED BY "dev_acme_users";
          7. drop_owned role dev_acme_users  [local]  (revoke its privileges on databases)
             DROP OWNED BY "dev_acme_users";
          8. drop_role role dev_acme_users  [local]  (removed from the manifest; --prune given)
             DROP ROLE "dev_acme_users";
        Plan: 8 changes: 1 to create, 5 to change, 2 to drop (env dev).
    "#]],
    );
}

#[test]
fn a_role_owning_objects_elsewhere_is_kept_with_a_note() {
    let mut o = applied(&desired("dev", ACME_USERS));
    let old = o.servers.get_mut("local").unwrap().roles.get_mut("dev_acme_users").unwrap();
    old.dependent_databases.insert("legacy".into());
    old.owns_objects_in.insert("legacy".into());
    let after = desired("dev", "modules:\n  - name: users\n    storage: schema-per-tenant\n");
    check(
        &after,
        &o,
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
          1. drop_schema schema dev_users.acme_users  [local/dev_users]  (removed from the manifest; --prune given)
             DROP SCHEMA "acme_users" CASCADE;
        orphaned (managed, no longer in the manifest; `apply --prune` drops them):
          - role dev_acme_users [local]
        note: role dev_acme_users is kept although orphaned: it owns objects in database legacy, which pgplane does not manage; reassign or drop those, then run apply --prune again
        Plan: 1 change: 0 to create, 0 to change, 1 to drop (env dev).
    "#]],
    );
}

#[test]
fn records_on_a_server_missing_from_the_manifest_are_never_dropped() {
    let mut o = applied(&desired("dev", "modules:\n  - name: app\n    storage: database\n"));
    for r in &mut o.records {
        r.object.server = "old".into();
    }
    let after = desired("dev", "modules:\n  - name: other\n    storage: database\n");
    let p = plan(
        &after,
        &Observed { servers: BTreeMap::new(), records: o.records.clone() },
        PlanOptions { prune: true, adopt: false },
    )
    .unwrap();
    assert!(p.actions.iter().all(|a| a.object.server != "old"), "{:?}", p.actions);
    assert!(p.notes.iter().any(|n| n.contains("server old is not in the manifest")), "{:?}", p.notes);
}

#[test]
fn new_databases_are_planned_from_template1() {
    let d = desired("dev", "modules:\n  - name: app\n    storage: database\n    extensions: [pg_trgm, citext]\n");
    let mut template = DbContents::fresh(Vec::<(String, String)>::new());
    template.extensions.insert("pg_trgm".into());
    template.schemas.get_mut("public").unwrap().privileges.insert(PUBLIC.into(), set(&["USAGE", "CREATE"]));
    let server = ServerState { template: Some(template), ..ServerState::default() };
    let o = Observed { servers: BTreeMap::from([("local".to_string(), server)]), records: vec![] };
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
          1. create_role role dev_app  [local]  (role dev_app is missing)
             CREATE ROLE "dev_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
          2. create_database database dev_app  [local]  (database dev_app is missing)
             CREATE DATABASE "dev_app" OWNER "dev_app" CONNECTION LIMIT -1;
          3. revoke_public database dev_app  [local]  (least privilege: only the module's roles may connect)
             REVOKE ALL ON DATABASE "dev_app" FROM PUBLIC;
          4. revoke_schema schema dev_app.public  [local/dev_app]  (drift: PUBLIC may create in public)
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
          5. create_extension extension dev_app.citext  [local/dev_app]  (extension dev_app.citext is missing)
             CREATE EXTENSION "citext" SCHEMA public;
        Plan: 5 changes: 3 to create, 2 to change, 0 to drop (env dev).
    "#]],
    );
}

const SETTINGS: &str = "modules:\n  - name: registry\n    storage: database\n    settings:\n      search_path: '\"$user\", registry, public'\n      statement_timeout: 5000\n      app.mode: \"it's\"\n  - name: files\n    storage: database-per-tenant\n    settings: {work_mem: 64MB}\ntenants:\n  - name: acme\n    modules: [files]\n";

#[test]
fn database_settings_are_set_on_new_databases() {
    // Right after each database's creation and privileges; the module's settings on every
    // tenant database; a list setting sent one literal per name.
    let d = desired("dev", SETTINGS);
    check(
        &d,
        &Observed::default(),
        PlanOptions::default(),
        expect![[r#"
          1. create_role role dev_acme_files  [local]  (role dev_acme_files is missing)
             CREATE ROLE "dev_acme_files" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
          2. create_role role dev_registry  [local]  (role dev_registry is missing)
             CREATE ROLE "dev_registry" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
          3. create_database database dev_acme_files  [local]  (database dev_acme_files is missing)
             CREATE DATABASE "dev_acme_files" OWNER "dev_acme_files" CONNECTION LIMIT -1;
          4. revoke_public database dev_acme_files  [local]  (least privilege: only the module's roles may connect)
             REVOKE ALL ON DATABASE "dev_acme_files" FROM PUBLIC;
          5. set_database_setting database dev_acme_files  [local]  (setting work_mem is missing)
             ALTER DATABASE "dev_acme_files" SET "work_mem" = '64MB';
          6. create_database database dev_registry  [local]  (database dev_registry is missing)
             CREATE DATABASE "dev_registry" OWNER "dev_registry" CONNECTION LIMIT -1;
          7. revoke_public database dev_registry  [local]  (least privilege: only the module's roles may connect)
             REVOKE ALL ON DATABASE "dev_registry" FROM PUBLIC;
          8. set_database_setting database dev_registry  [local]  (setting app.mode is missing)
             ALTER DATABASE "dev_registry" SET "app.mode" = 'it''s';
          9. set_database_setting database dev_registry  [local]  (setting search_path is missing)
             ALTER DATABASE "dev_registry" SET "search_path" = '$user', 'registry', 'public';
         10. set_database_setting database dev_registry  [local]  (setting statement_timeout is missing)
             ALTER DATABASE "dev_registry" SET "statement_timeout" = '5000';
        Plan: 10 changes: 4 to create, 6 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn a_missing_database_setting_is_added() {
    let d = desired("dev", SETTINGS);
    let mut o = applied(&d);
    o.servers.get_mut("local").unwrap().databases.get_mut("dev_registry").unwrap().settings.remove("statement_timeout");
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
              1. set_database_setting database dev_registry  [local]  (setting statement_timeout is missing)
                 ALTER DATABASE "dev_registry" SET "statement_timeout" = '5000';
            Plan: 1 change: 0 to create, 1 to change, 0 to drop (env dev).
        "#]],
    );
}

#[test]
fn a_changed_database_setting_is_drift() {
    let d = desired("dev", SETTINGS);
    let mut o = applied(&d);
    let db = o.servers.get_mut("local").unwrap().databases.get_mut("dev_acme_files").unwrap();
    db.settings.insert("work_mem".into(), "4MB".into());
    // A whole list given as one literal is one schema named "registry, public" to PostgreSQL.
    let db = o.servers.get_mut("local").unwrap().databases.get_mut("dev_registry").unwrap();
    db.settings.insert("search_path".into(), "\"\"\"$user\"\", registry, public\"".into());
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
              1. set_database_setting database dev_acme_files  [local]  (drift: work_mem is 4MB, want 64MB)
                 ALTER DATABASE "dev_acme_files" SET "work_mem" = '64MB';
              2. set_database_setting database dev_registry  [local]  (drift: search_path is """$user"", registry, public", want "$user", registry, public)
                 ALTER DATABASE "dev_registry" SET "search_path" = '$user', 'registry', 'public';
            Plan: 2 changes: 0 to create, 2 to change, 0 to drop (env dev).
        "#]],
    );
}

#[test]
fn unchanged_and_unlisted_database_settings_need_nothing() {
    let d = desired("dev", SETTINGS);
    let mut o = applied(&d);
    let db = o.servers.get_mut("local").unwrap().databases.get_mut("dev_registry").unwrap();
    // As PostgreSQL stores them: the list re-quoted element by element, canonical names
    // lowercased by the observer; a setting the manifest does not list is not pgplane's.
    db.settings.insert("search_path".into(), "\"$user\", registry, public".into());
    db.settings.insert("datestyle".into(), "ISO, DMY".into());
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
            No changes (env dev).
        "#]],
    );
}

#[test]
fn the_branch_readonly_role_is_created_without_grants() {
    let d = desired(
        "dev",
        "modules:\n  - name: registry\n    storage: database\ntemplates:\n  - name: registry_template\n    module: registry\n    sources: [db/changelog.yaml]\nbranches:\n  readonly_role: registry_dev_role\n",
    );
    check(
        &d,
        &Observed::default(),
        PlanOptions::default(),
        expect![[r#"
              1. create_role role dev_registry  [local]  (role dev_registry is missing)
                 CREATE ROLE "dev_registry" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
              2. create_role role registry_dev_role  [local]  (role registry_dev_role is missing)
                 CREATE ROLE "registry_dev_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '********';
              3. create_database database dev_registry  [local]  (database dev_registry is missing)
                 CREATE DATABASE "dev_registry" OWNER "dev_registry" CONNECTION LIMIT -1;
              4. revoke_public database dev_registry  [local]  (least privilege: only the module's roles may connect)
                 REVOKE ALL ON DATABASE "dev_registry" FROM PUBLIC;
            Plan: 4 changes: 3 to create, 1 to change, 0 to drop (env dev).
        "#]],
    );
    check(
        &d,
        &applied(&d),
        PlanOptions::default(),
        expect![[r#"
            No changes (env dev).
        "#]],
    );
    // Removed from the manifest: an orphan, dropped only with --prune.
    let o = applied(&d);
    let after = desired("dev", "modules:\n  - name: registry\n    storage: database\n");
    check(
        &after,
        &o,
        PlanOptions::default(),
        expect![[r#"
            orphaned (managed, no longer in the manifest; `apply --prune` drops them):
              - role registry_dev_role [local]
            No changes (env dev), 1 orphaned.
        "#]],
    );
    let p = plan(&after, &o, PlanOptions { prune: true, adopt: false }).unwrap();
    assert_eq!(p.actions.last().unwrap().sql.redacted(), "DROP ROLE \"registry_dev_role\"");
}

#[test]
fn the_branch_readonly_role_must_not_clash() {
    let m = Manifest::parse(
        Path::new("pgplane.yaml"),
        "version: 1\nmodules:\n  - name: registry\n    storage: database\nbranches:\n  readonly_role: dev_registry\n",
        &|_| None,
    )
    .unwrap();
    let e = Desired::build(&m, "dev", &Registry::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "name clash: role dev_registry is wanted by env dev module registry (owner_role) and by env dev (branch_readonly_role); change a name or the naming templates"
    );
    // The same name managed for another environment is a clash at plan time.
    let qa =
        desired("qa", "modules:\n  - name: app\n    storage: database\nbranches:\n  readonly_role: shared_reader\n");
    let d =
        desired("dev", "modules:\n  - name: app\n    storage: database\nbranches:\n  readonly_role: shared_reader\n");
    let err = plan(&d, &applied(&qa), PlanOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("role shared_reader is already managed by pgplane for env qa (branch_readonly_role)"),
        "{err}"
    );
}

#[test]
fn schema_per_tenant_settings_go_on_the_shared_database() {
    let d = desired(
        "dev",
        "modules:\n  - name: users\n    storage: schema-per-tenant\n    settings: {statement_timeout: 1s}\ntenants:\n  - name: acme\n    modules: [users]\n",
    );
    let dbs: Vec<(&str, &[(String, String)])> =
        d.databases.iter().map(|db| (db.name.as_str(), &db.settings[..])).collect();
    assert_eq!(dbs, [("dev_users", &[("statement_timeout".to_string(), "1s".to_string())][..])]);
}

/// `applied(d)` with OIDs: every role and database gets one, and its record remembers it.
fn applied_with_oids(d: &Desired) -> Observed {
    let mut o = applied(d);
    let s = o.servers.get_mut("local").unwrap();
    let mut next = 16384;
    let mut oids = BTreeMap::new();
    for (name, r) in s.roles.iter_mut() {
        next += 1;
        r.oid = next;
        oids.insert((ObjectKind::Role, name.clone()), next);
    }
    for (name, db) in s.databases.iter_mut() {
        next += 1;
        db.oid = next;
        oids.insert((ObjectKind::Database, name.clone()), next);
    }
    for r in &mut o.records {
        r.oid = oids.get(&(r.object.kind, r.object.name.clone())).copied();
    }
    o
}

#[test]
fn objects_recreated_under_a_managed_name_are_a_conflict_until_adopted() {
    let d = desired("dev", "modules:\n  - name: app\n    storage: database\n");
    let mut o = applied_with_oids(&d);
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
            No changes (env dev).
        "#]],
    );
    let s = o.servers.get_mut("local").unwrap();
    s.roles.get_mut("dev_app").unwrap().oid = 99001;
    s.databases.get_mut("dev_app").unwrap().oid = 99002;
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
        error:
        role dev_app is not the one pgplane created: it was dropped and re-created outside pgplane (OID 16385, now 99001), so pgplane leaves it alone; adopt it with `pgplane adopt` or `pgplane apply --adopt` if it is meant to be env dev module app (owner_role), or drop it
        database dev_app is not the one pgplane created: it was dropped and re-created outside pgplane (OID 16386, now 99002), so pgplane leaves it alone; adopt it with `pgplane adopt` or `pgplane apply --adopt` if it is meant to be env dev module app (database), or drop it
    "#]],
    );
    check(
        &d,
        &o,
        PlanOptions { adopt: true, prune: false },
        expect![[r#"
          1. adopt role dev_app  [local]  (re-created outside pgplane (OID 16385, now 99001) and --adopt was given: pgplane records it as its own)
          2. adopt database dev_app  [local]  (re-created outside pgplane (OID 16386, now 99002) and --adopt was given: pgplane records it as its own)
          3. set_password role dev_app  [local]  (adopted: pgplane sets a password it can hand out with `pgplane credentials`)
             ALTER ROLE "dev_app" PASSWORD '********';
        Plan: 3 changes: 0 to create, 3 to change, 0 to drop (env dev).
    "#]],
    );
    let p = plan(&d, &o, PlanOptions { adopt: true, prune: false }).unwrap();
    let adopt = p.actions.iter().find(|a| a.kind == pgplane_core::plan::ActionKind::Adopt).unwrap();
    assert!(matches!(&adopt.record, pgplane_core::plan::RecordChange::Claim(r) if r.oid == Some(99001)));
}

#[test]
fn recreated_orphans_are_forgotten_never_dropped() {
    let before = desired(
        "dev",
        "modules:\n  - name: keep\n    storage: database\n  - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n",
    );
    let mut o = applied_with_oids(&before);
    let s = o.servers.get_mut("local").unwrap();
    s.roles.get_mut("dev_acme_users").unwrap().oid = 99001;
    s.databases.get_mut("dev_users").unwrap().oid = 99002;
    let after = desired("dev", "modules:\n  - name: keep\n    storage: database\n");
    check(
        &after,
        &o,
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
          1. forget schema dev_users.acme_users  [local]  (another object holds its name (re-created outside pgplane); that one is left alone)
          2. forget database dev_users  [local]  (another object holds its name (re-created outside pgplane); that one is left alone)
          3. forget role dev_acme_users  [local]  (another object holds its name (re-created outside pgplane); that one is left alone)
        orphaned (managed, no longer in the manifest; `apply --prune` drops them):
          - role dev_users [local]
        note: role dev_acme_users is not the one pgplane created (dropped and re-created outside pgplane: OID 16385, now 99001); pgplane never drops or alters it and forgets its record
        note: database dev_users is not the one pgplane created (dropped and re-created outside pgplane: OID 16389, now 99002); pgplane never drops or alters it and forgets its record
        note: schema dev_users.acme_users is not the one pgplane created (its database dev_users was dropped and re-created outside pgplane: OID 16389, now 99002); pgplane never drops or alters it and forgets its record
        note: role dev_users is kept although orphaned: it owns database dev_users, which pgplane does not manage; reassign or drop those, then run apply --prune again
        Plan: 3 changes: 0 to create, 3 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn actions_carry_the_oids_they_expect() {
    let d = desired("dev", REGISTRY);
    let mut o = applied_with_oids(&d);
    let s = o.servers.get_mut("local").unwrap();
    s.roles.get_mut("dev_registry_readonly").unwrap().superuser = true;
    s.databases.get_mut("dev_registry").unwrap().privileges.insert(PUBLIC.into(), set(&["CONNECT"]));
    let p = plan(&d, &o, PlanOptions::default()).unwrap();
    let expects: Vec<String> = p
        .actions
        .iter()
        .map(|a| {
            let e: Vec<String> = a.expect.iter().map(|e| format!("{} {}={}", e.kind.as_str(), e.name, e.oid)).collect();
            format!("{} {}: {}", a.kind.as_str(), a.target, e.join(", "))
        })
        .collect();
    expect![[r#"
        [
            "alter_role role dev_registry_readonly: role dev_registry_readonly=16386",
            "revoke_public database dev_registry: database dev_registry=16387",
        ]
    "#]]
    .assert_debug_eq(&expects);
}

#[test]
fn password_drift_is_repaired() {
    use pgplane_core::observed::PasswordState;
    let d = desired("dev", REGISTRY);
    let mut o = applied(&d);
    let s = o.servers.get_mut("local").unwrap();
    s.roles.get_mut("dev_registry").unwrap().password = PasswordState::Differs;
    s.roles.get_mut("dev_registry_readonly").unwrap().password = PasswordState::Missing;
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
          1. set_password role dev_registry  [local]  (drift: its password is not the one pgplane derives (changed outside pgplane); `pgplane credentials` hands out the derived one)
             ALTER ROLE "dev_registry" PASSWORD '********';
          2. set_password role dev_registry_readonly  [local]  (drift: it has no password)
             ALTER ROLE "dev_registry_readonly" PASSWORD '********';
        Plan: 2 changes: 0 to create, 2 to change, 0 to drop (env dev).
    "#]],
    );
    let s = o.servers.get_mut("local").unwrap();
    for r in s.roles.values_mut() {
        r.password = PasswordState::Matches;
    }
    check(
        &d,
        &o,
        PlanOptions::default(),
        expect![[r#"
            No changes (env dev).
        "#]],
    );
}

// ----- registered tenants (issue 14) ------------------------------------------------------

const USERS: &str = "modules:\n  - name: users\n    storage: schema-per-tenant\n    readonly_role: true\n  - name: files\n    storage: database-per-tenant\n";

fn registered(tenant: &str, modules: &[(&str, ModuleState)]) -> TenantRecord {
    TenantRecord {
        name: tenant.into(),
        labels: BTreeMap::new(),
        expires_at: None,
        created_at: String::new(),
        modules: modules
            .iter()
            .map(|(m, state)| TenantModule {
                module: m.to_string(),
                version: None,
                target_version: None,
                parameters: BTreeMap::new(),
                state: *state,
                server: None,
                status: "ready".into(),
                error: None,
                last_job: None,
            })
            .collect(),
    }
}

fn desired_with(env: &str, body: &str, registry: &Registry) -> Desired {
    let text = format!("version: 1\n{body}");
    let m = Manifest::parse(Path::new("pgplane.yaml"), &text, &|_| None).expect("valid manifest");
    Desired::build(&m, env, registry).expect("names are fine")
}

#[test]
fn a_registered_tenant_is_desired_like_a_manifest_one() {
    let manifest_tenant = desired("dev", &format!("{USERS}tenants:\n  - name: acme\n    modules: [users]\n"));
    let reg = Registry { tenants: vec![registered("acme", &[("users", ModuleState::Enabled)])], ..Default::default() };
    let registered_tenant = desired_with("dev", USERS, &reg);
    let empty = Observed::default();
    let a = plan_text(&plan(&manifest_tenant, &empty, PlanOptions::default()).unwrap());
    let b = plan_text(&plan(&registered_tenant, &empty, PlanOptions::default()).unwrap());
    assert_eq!(a, b, "one engine: the same plan whichever way the tenant is declared");
    // Applied, then planned with pruning against the manifest alone plus the registry:
    // nothing is an orphan.
    check(
        &registered_tenant,
        &applied(&registered_tenant),
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
        No changes (env dev).
    "#]],
    );
    assert!(registered_tenant.endpoint("users", Some("acme")).is_some_and(|e| e.registered && e.enabled));
}

#[test]
fn a_registered_tenant_listed_in_the_manifest_too_is_refused() {
    let reg = Registry { tenants: vec![registered("acme", &[("users", ModuleState::Enabled)])], ..Default::default() };
    let text = format!("version: 1\n{USERS}tenants:\n  - name: acme\n    modules: [users]\n");
    let m = Manifest::parse(Path::new("pgplane.yaml"), &text, &|_| None).unwrap();
    let e = Desired::build(&m, "dev", &reg).unwrap_err().to_string();
    assert!(e.contains("tenant \"acme\" is listed in pgplane.yaml and registered"), "{e}");
    let reg = Registry { tenants: vec![registered("acme", &[("gone", ModuleState::Enabled)])], ..Default::default() };
    let e = Desired::build(&m, "dev", &reg).unwrap_err().to_string();
    assert!(e.contains("has module \"gone\", which is not in pgplane.yaml") && e.contains("--purge"), "{e}");
}

#[test]
fn a_disabled_tenant_loses_login_and_connect_and_keeps_its_data() {
    let on = Registry {
        tenants: vec![registered("acme", &[("users", ModuleState::Enabled), ("files", ModuleState::Enabled)])],
        ..Default::default()
    };
    let off = Registry {
        tenants: vec![registered("acme", &[("users", ModuleState::Disabled), ("files", ModuleState::Disabled)])],
        ..Default::default()
    };
    let enabled = desired_with("dev", USERS, &on);
    let disabled = desired_with("dev", USERS, &off);
    check(
        &disabled,
        &applied(&enabled),
        PlanOptions { prune: true, adopt: false },
        expect![[r#"
          1. alter_role role dev_acme_files  [local]  (disabled: the role may not log in)
             ALTER ROLE "dev_acme_files" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_files';
          2. alter_role role dev_acme_users  [local]  (disabled: the role may not log in)
             ALTER ROLE "dev_acme_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_users';
          3. alter_role role dev_acme_users_readonly  [local]  (disabled: the role may not log in)
             ALTER ROLE "dev_acme_users_readonly" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_users_readonly';
          4. revoke_connect database dev_acme_files  [local]  (disabled: role dev_acme_files may not connect)
             REVOKE CONNECT ON DATABASE "dev_acme_files" FROM "dev_acme_files";
          5. revoke_connect database dev_users  [local]  (disabled: role dev_acme_users may not connect)
             REVOKE CONNECT ON DATABASE "dev_users" FROM "dev_acme_users";
          6. revoke_connect database dev_users  [local]  (disabled: role dev_acme_users_readonly may not connect)
             REVOKE CONNECT ON DATABASE "dev_users" FROM "dev_acme_users_readonly";
        Plan: 6 changes: 0 to create, 6 to change, 0 to drop (env dev).
    "#]],
    );
    check(
        &disabled,
        &applied(&disabled),
        PlanOptions::default(),
        expect![[r#"
        No changes (env dev).
    "#]],
    );
    check(
        &enabled,
        &applied(&disabled),
        PlanOptions::default(),
        expect![[r#"
          1. alter_role role dev_acme_files  [local]  (enabled: the role may log in)
             ALTER ROLE "dev_acme_files" LOGIN;
          2. alter_role role dev_acme_users  [local]  (enabled: the role may log in)
             ALTER ROLE "dev_acme_users" LOGIN;
          3. alter_role role dev_acme_users_readonly  [local]  (enabled: the role may log in)
             ALTER ROLE "dev_acme_users_readonly" LOGIN;
          4. grant_connect database dev_acme_files  [local]  (role dev_acme_files (the owner) must be able to connect)
             GRANT CONNECT ON DATABASE "dev_acme_files" TO "dev_acme_files";
          5. grant_connect database dev_users  [local]  (role dev_acme_users must be able to connect)
             GRANT CONNECT ON DATABASE "dev_users" TO "dev_acme_users";
          6. grant_connect database dev_users  [local]  (role dev_acme_users_readonly must be able to connect)
             GRANT CONNECT ON DATABASE "dev_users" TO "dev_acme_users_readonly";
        Plan: 6 changes: 0 to create, 6 to change, 0 to drop (env dev).
    "#]],
    );
}

#[test]
fn a_purge_drops_only_the_purged_tenants_storage() {
    let both = Registry {
        tenants: vec![
            registered("acme", &[("users", ModuleState::Enabled), ("files", ModuleState::Enabled)]),
            registered("globex", &[("users", ModuleState::Enabled)]),
        ],
        ..Default::default()
    };
    let o = applied(&desired_with("dev", USERS, &both));
    // globex also left the registry by hand (an orphan of its own): the purge of acme's
    // files must not drop it.
    let purging = Registry {
        tenants: vec![registered("acme", &[("users", ModuleState::Enabled), ("files", ModuleState::Purging)])],
        ..Default::default()
    };
    let d = desired_with("dev", USERS, &purging);
    let mut p = plan(&d, &o, PlanOptions { prune: true, adopt: false }).unwrap();
    pgplane_core::tenant::retain_drops(&mut p, |origin| {
        origin.tenant.as_deref() == Some("acme") && origin.module == "files"
    });
    expect![[r#"
          1. drop_database database dev_acme_files  [local]  (purge requested)
             DROP DATABASE "dev_acme_files" WITH (FORCE);
          2. disable_role role dev_acme_files  [local]  (no new sessions while it is dropped)
             ALTER ROLE "dev_acme_files" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_files';
          3. drop_owned role dev_acme_files  [local]  (revoke its privileges on databases)
             DROP OWNED BY "dev_acme_files";
          4. drop_role role dev_acme_files  [local]  (purge requested)
             DROP ROLE "dev_acme_files";
        Plan: 4 changes: 0 to create, 1 to change, 3 to drop (env dev).
    "#]]
    .assert_eq(&plan_text(&p));
}

#[test]
fn auto_placed_tenant_databases_go_to_their_recorded_server() {
    let body = "servers:\n  - name: a\n    url: postgresql://a/postgres\n  - name: b\n    url: postgresql://b/postgres\n    capacity: {databases: 10}\nmodules:\n  - name: files\n    storage: database-per-tenant\n    server: auto\n";
    let mut t = registered("acme", &[("files", ModuleState::Enabled)]);
    t.modules[0].server = Some("b".into());
    let d = desired_with("dev", body, &Registry { tenants: vec![t.clone()], ..Default::default() });
    assert_eq!(
        d.databases.iter().map(|db| (db.server.as_str(), db.name.as_str())).collect::<Vec<_>>(),
        [("b", "dev_acme_files")]
    );
    assert_eq!(d.endpoint("files", Some("acme")).map(|e| e.server.as_str()), Some("b"));
    t.modules[0].server = None;
    let m = Manifest::parse(Path::new("pgplane.yaml"), &format!("version: 1\n{body}"), &|_| None).unwrap();
    let e = Desired::build(&m, "dev", &Registry { tenants: vec![t], ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("has no server yet"), "{e}");
}
