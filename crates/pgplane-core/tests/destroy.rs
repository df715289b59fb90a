//! Snapshots of `pgplane destroy`'s plan: hand-made catalog and records in, the plan text
//! out. Update with `UPDATE_EXPECT=1 cargo test -p pgplane-core --test destroy`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use expect_test::expect;
use pgplane_core::destroy::{destroy_text, plan_destroy, Copy, CopyKind, Identity};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::{Desired, Record};
use pgplane_core::observed::{Contents, DatabaseState, Observed, RoleState, ServerState};

/// Env `dev` (a database module with a read-only role, a schema-per-tenant module with one
/// tenant) and env `other` (one database module), as apply leaves them; OIDs from 100 on.
fn world() -> Observed {
    let text = "version: 1\nmodules:\n  - name: app\n    storage: database\n    readonly_role: true\n  \
                - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n";
    let m = Manifest::parse(Path::new("pgplane.yaml"), text, &|_| None).unwrap();
    let mut s = ServerState::default();
    let mut records = Vec::new();
    let mut oid = 100;
    for env in ["dev", "other"] {
        let d = Desired::build(&m, env, &Default::default()).unwrap();
        for r in &d.roles {
            oid += 1;
            s.roles.insert(r.name.clone(), RoleState { oid, ..RoleState::default() });
        }
        for db in &d.databases {
            oid += 1;
            s.databases.insert(
                db.name.clone(),
                DatabaseState {
                    oid,
                    owner: db.owner.clone(),
                    connection_limit: -1,
                    is_template: false,
                    privileges: BTreeMap::new(),
                    settings: BTreeMap::new(),
                    contents: Contents::Unknown,
                },
            );
            let owner = s.roles.get_mut(&db.owner).unwrap();
            owner.dependent_databases.insert(db.name.clone());
            owner.owns_objects_in.insert(db.name.clone());
        }
        for (object, origin) in d.objects() {
            let oid = s.oid(object.kind, &object.name);
            records.push(Record { object, origin: origin.clone(), oid });
        }
    }
    // Copies: a template and two branches of `dev`, stamped by `dev_app`'s owner.
    for (name, oid, is_template) in [("tpl", 900, true), ("tpl_mr_1", 901, false), ("tpl_mr_2", 902, false)] {
        s.databases.insert(
            name.into(),
            DatabaseState {
                oid,
                owner: "postgres".into(),
                connection_limit: -1,
                is_template,
                privileges: BTreeMap::new(),
                settings: BTreeMap::new(),
                contents: Contents::Unknown,
            },
        );
        s.roles.get_mut("dev_app").unwrap().owns_objects_in.insert(name.into());
        s.roles.get_mut("dev_app_readonly").unwrap().dependent_databases.insert(name.into());
    }
    Observed { servers: BTreeMap::from([("local".to_string(), s)]), records }
}

fn copy(kind: CopyKind, owner: &str, server: &str, database: &str, identity: Identity) -> Copy {
    Copy { kind, owner: owner.into(), server: server.into(), database: database.into(), identity }
}

#[test]
fn everything_of_the_env_goes_copies_first_and_nothing_of_another_env() {
    let mut o = world();
    // dev_app_readonly was dropped and re-created outside pgplane: not pgplane's any more.
    o.servers.get_mut("local").unwrap().roles.get_mut("dev_app_readonly").unwrap().oid = 555;
    let copies = vec![
        copy(CopyKind::Template, "tpl", "local", "tpl", Identity::Oid(900)),
        copy(CopyKind::Branch, "mr-1", "local", "tpl_mr_1", Identity::Oid(901)),
        // Re-created outside pgplane after pgplane made it.
        copy(CopyKind::Branch, "mr-2", "local", "tpl_mr_2", Identity::Oid(700)),
        // Claimed but never copied; a database of that name is someone else's.
        copy(CopyKind::Branch, "mr-3", "local", "tpl_mr_1", Identity::NotCreated),
        copy(CopyKind::Branch, "mr-4", "local", "tpl_mr_4", Identity::Oid(904)),
        copy(CopyKind::Branch, "mr-5", "gone", "tpl_mr_5", Identity::ByName),
        copy(CopyKind::TemplateLeftover, "tpl", "local", "tpl__build", Identity::ByName),
    ];
    let p = plan_destroy("dev", copies, &o).unwrap();
    expect![[r#"
          1. keep branch mr-5 (database tpl_mr_5) [gone]  (server gone is not in the manifest: list it under `servers:`)
          2. drop branch mr-1 (database tpl_mr_1) [local]  (DROP DATABASE … WITH (FORCE))
          3. forget branch mr-3 (database tpl_mr_1) [local]  (database tpl_mr_1 was not created by pgplane for branch mr-3 (the copy was never recorded); left alone)
          4. forget branch mr-2 (database tpl_mr_2) [local]  (database tpl_mr_2 is not the one pgplane created for branch mr-2 (OID 700, now 902: dropped and re-created outside pgplane); left alone)
          5. forget branch mr-4 (database tpl_mr_4) [local]  (it no longer exists)
          6. drop template tpl (database tpl) [local]  (template: IS_TEMPLATE false, then DROP DATABASE … WITH (FORCE))
          7. forget template leftover tpl (database tpl__build) [local]  (it no longer exists)
          8. drop_database database dev_app  [local]  (destroy: the environment goes)
             DROP DATABASE "dev_app" WITH (FORCE);
          9. drop_database database dev_users  [local]  (destroy: the environment goes)
             DROP DATABASE "dev_users" WITH (FORCE);
         10. disable_role role dev_acme_users  [local]  (no new sessions while it is dropped)
             ALTER ROLE "dev_acme_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_acme_users';
         11. drop_owned role dev_acme_users  [local]  (revoke its privileges on databases)
             DROP OWNED BY "dev_acme_users";
         12. drop_role role dev_acme_users  [local]  (destroy: the environment goes)
             DROP ROLE "dev_acme_users";
         13. forget role dev_app_readonly  [local]  (another object holds its name (re-created outside pgplane); that one is left alone)
         14. disable_role role dev_users  [local]  (no new sessions while it is dropped)
             ALTER ROLE "dev_users" NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dev_users';
         15. drop_owned role dev_users  [local]  (revoke its privileges on databases)
             DROP OWNED BY "dev_users";
         16. drop_role role dev_users  [local]  (destroy: the environment goes)
             DROP ROLE "dev_users";
         17. forget schema dev_users.acme_users  [local]  (its database was dropped)
        note: role dev_app_readonly is not the one pgplane created (dropped and re-created outside pgplane: OID 103, now 555); pgplane never drops or alters it and forgets its record
        note: role dev_app is kept although orphaned: it owns objects in database tpl_mr_2, which pgplane does not manage; reassign or drop those, then run `pgplane destroy` again
        Destroy: 16 step(s): 4 database(s) and 2 role(s) to drop (env dev).
    "#]]
    .assert_eq(&destroy_text(&p));
}

#[test]
fn nothing_recorded_nothing_to_do() {
    let p = plan_destroy("nobody", Vec::new(), &world()).unwrap();
    expect![[r#"
        Nothing to destroy: pgplane manages nothing in env nobody.
    "#]]
    .assert_eq(&destroy_text(&p));
}
