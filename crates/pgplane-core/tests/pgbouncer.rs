//! Snapshots of `pgplane pgbouncer`'s pure half: entries from a manifest's desired state,
//! the budget check and the rendered files. Update with `UPDATE_EXPECT=1 cargo test -p pgplane-core`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use expect_test::{expect, Expect};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::Desired;
use pgplane_core::pgbouncer::{budget, entries, render_ini, render_userlist, users, Hosts, Limits, PoolMode, Settings};

const MANIFEST: &str = "\
version: 1
servers:
  - name: main
    url: postgresql://admin@db:5432/postgres
modules:
  - name: registry
    storage: database
    readonly_role: true
    pool_size: 10
  - name: users
    storage: schema-per-tenant
    pool_size: 2
    max_db_connections: 8
  - name: files
    storage: database-per-tenant
    connection_limit: 4
tenants:
  - name: acme
    modules: [users, files]
  - name: globex
    modules: [users, files]
";

fn setup(text: &str) -> (Manifest, Desired, Hosts) {
    let m = Manifest::parse(Path::new("pgplane.yaml"), text, &|_| None).unwrap();
    let d = Desired::build(&m, "dev", &Default::default()).unwrap();
    let hosts = Hosts::from([("main".to_string(), ("db".to_string(), 5432))]);
    (m, d, hosts)
}

fn limits(max: u32) -> Vec<Limits> {
    vec![Limits {
        server: "main".into(),
        max_connections: max,
        superuser_reserved_connections: 3,
        reserved_connections: None,
    }]
}

fn check(text: &str, max: u32, reserve: u32, expect: Expect) {
    let (m, d, hosts) = setup(text);
    let e = entries(&d, &m, &hosts).unwrap();
    let out = match budget(&e, &limits(max), reserve) {
        Ok(b) => {
            let s = Settings {
                env: "dev".into(),
                listen_addr: "127.0.0.1".into(),
                listen_port: 6432,
                auth_file: "/etc/pgbouncer/userlist.txt".into(),
                pool_mode: PoolMode::Session,
            };
            render_ini(&e, &b, &s).unwrap()
        }
        Err(err) => format!("REFUSED\n{err}\n"),
    };
    expect.assert_eq(&out);
}

#[test]
fn one_entry_per_module_and_tenant_database() {
    check(
        MANIFEST,
        100,
        0,
        expect![[r#"
            ;; PgBouncer configuration of environment dev, written by `pgplane pgbouncer`.
            ;; Applications connect here with their own roles; pgplane's admin connections go to
            ;; PostgreSQL directly (they send startup options PgBouncer does not pass on).
            ;; server main: pools hold up to 34 of 97 server connections (max_connections 100 - superuser_reserved_connections 3)

            [databases]
            ;; module files, tenant acme: up to 4 server connections
            dev_acme_files = host=db port=5432 dbname=dev_acme_files pool_size=20 max_db_connections=4
            ;; module files, tenant globex: up to 4 server connections
            dev_globex_files = host=db port=5432 dbname=dev_globex_files pool_size=20 max_db_connections=4
            ;; module registry (database): up to 20 server connections
            dev_registry = host=db port=5432 dbname=dev_registry pool_size=10
            ;; module users (schema-per-tenant): up to 6 server connections
            dev_users = host=db port=5432 dbname=dev_users pool_size=2 max_db_connections=8

            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = 6432
            auth_type = scram-sha-256
            auth_file = /etc/pgbouncer/userlist.txt
            pool_mode = session
            default_pool_size = 20
            reserve_pool_size = 0
            ignore_startup_parameters = extra_float_digits
        "#]],
    );
}

#[test]
fn overflow_names_the_server_figures_and_largest_pools() {
    check(
        MANIFEST,
        30,
        0,
        expect![[r#"
            REFUSED
            server main: pools hold up to 34 of 27 server connections (max_connections 30 - superuser_reserved_connections 3): 7 over. Largest: dev_registry (module registry) 20 (2 users x pool_size 10 = 20); dev_users (module users) 6 (3 users x pool_size 2 = 6, max_db_connections 8); dev_acme_files (module files) 4 (1 user x pool_size 20 = 20, max_db_connections 4); and 1 more. Lower `pool_size` or set `max_db_connections` on these modules in the manifest, or raise the server's max_connections
        "#]],
    );
}

#[test]
fn exactly_full_fits_and_reserve_and_reserved_connections_count() {
    let (m, d, hosts) = setup(MANIFEST);
    let e = entries(&d, &m, &hosts).unwrap();
    let summary = |l: &[Limits], reserve: u32| match budget(&e, l, reserve) {
        Ok(b) => b[0].summary(),
        Err(err) => format!("REFUSED {}", err.problems[0].split(':').take(2).collect::<Vec<_>>().join(":")),
    };
    let mut pg16 = limits(38);
    pg16[0].reserved_connections = Some(1);
    expect![[r#"
        server main: pools hold up to 34 of 34 server connections (max_connections 37 - superuser_reserved_connections 3)
        REFUSED server main: pools hold up to 34 of 33 server connections (max_connections 37 - superuser_reserved_connections 3 - --reserve 1)
        server main: pools hold up to 34 of 34 server connections (max_connections 38 - superuser_reserved_connections 3 - reserved_connections 1)
    "#]]
    .assert_eq(&format!("{}\n{}\n{}\n", summary(&limits(37), 0), summary(&limits(37), 1), summary(&pg16, 0)));
}

#[test]
fn userlist_holds_every_user_once_with_its_verifier() {
    let (m, d, hosts) = setup(MANIFEST);
    let e = entries(&d, &m, &hosts).unwrap();
    let u = users(&e).unwrap();
    let verifiers: BTreeMap<String, String> =
        u.iter().map(|(role, _)| (role.clone(), format!("SCRAM-SHA-256$4096:c2FsdA==${role}:key"))).collect();
    expect![[r#"
        "dev_acme_files" "SCRAM-SHA-256$4096:c2FsdA==$dev_acme_files:key"
        "dev_acme_users" "SCRAM-SHA-256$4096:c2FsdA==$dev_acme_users:key"
        "dev_globex_files" "SCRAM-SHA-256$4096:c2FsdA==$dev_globex_files:key"
        "dev_globex_users" "SCRAM-SHA-256$4096:c2FsdA==$dev_globex_users:key"
        "dev_registry" "SCRAM-SHA-256$4096:c2FsdA==$dev_registry:key"
        "dev_registry_readonly" "SCRAM-SHA-256$4096:c2FsdA==$dev_registry_readonly:key"
        "dev_users" "SCRAM-SHA-256$4096:c2FsdA==$dev_users:key"
    "#]]
    .assert_eq(&render_userlist(&verifiers).unwrap());
}

#[test]
fn a_role_on_two_servers_cannot_share_one_pgbouncer() {
    let text = MANIFEST.replace(
        "    url: postgresql://admin@db:5432/postgres\n",
        "    url: postgresql://admin@db:5432/postgres\n  - name: other\n    url: postgresql://admin@db2:5432/postgres\n",
    );
    let (m, mut d, mut hosts) = setup(&text);
    hosts.insert("other".into(), ("db2".into(), 5432));
    // The same owner name on another server (possible with a naming template without {env}
    // across environments; made here by hand).
    let mut copy = d.databases.iter().find(|x| x.name == "dev_registry").unwrap().clone();
    copy.server = "other".into();
    copy.name = "dev_registry2".into();
    d.databases.push(copy);
    let e = entries(&d, &m, &hosts).unwrap();
    let err = users(&e).unwrap_err();
    assert!(err.contains("role dev_registry logs in on servers main and other"), "{err}");
}
