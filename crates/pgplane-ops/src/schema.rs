//! `pgplane schema`: introspection of a database, a branch, a template or any URL. The
//! catalog queries are in `sql/schema_*.sql`, one per object category whatever the number
//! of tables; a snapshot sends them together (pipelined on one connection), and `describe`
//! sends the same queries filtered to one relation.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use pgplane_core::schema::{
    split_qualified, Column, Constraint, EnumType, ForeignKey, Index, SchemaSnapshot, Sequence, TableDetail,
    TableSummary, Trigger,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::conn::{Role, Target as Server};
use crate::ops::Ctx;
use crate::ops::ManifestArgs;

pub const TABLES_SQL: &str = include_str!("../sql/schema_tables.sql");
const RELATIONS_SQL: &str = include_str!("../sql/schema_relations.sql");
const COLUMNS_SQL: &str = include_str!("../sql/schema_columns.sql");
const CONSTRAINTS_SQL: &str = include_str!("../sql/schema_constraints.sql");
const INDEXES_SQL: &str = include_str!("../sql/schema_indexes.sql");
const TRIGGERS_SQL: &str = include_str!("../sql/schema_triggers.sql");
const ENUMS_SQL: &str = include_str!("../sql/schema_enums.sql");
const SEQUENCES_SQL: &str = include_str!("../sql/schema_sequences.sql");

/// Connects to what `--db`, `--branch` or `--url` names; returns the database's name.
/// Which database a schema command reads: one on the manifest's servers, a branch, or any URL.
#[derive(Debug, Clone)]
pub struct SchemaTarget {
    pub db: Option<String>,
    pub branch: Option<String>,
    pub url: Option<String>,
    pub manifest: ManifestArgs,
}

pub async fn connect(ctx: &mut Ctx, target: &SchemaTarget) -> Result<(Client, String)> {
    if let Some(url) = &target.url {
        let (client, db, _) = connect_url(url).await?;
        return Ok((client, db));
    }
    if let Some(id) = &target.branch {
        let (client, _, database) = connect_branch(ctx, &target.manifest, id).await?;
        return Ok((client, database));
    }
    let Some(db) = &target.db else {
        bail!("say what to read: --db NAME, --branch ID or --url URL");
    };
    Ok((connect_db(ctx, &target.manifest, db).await?, db.clone()))
}

/// One side of `pgplane schema diff`: `db:NAME` (or a bare `NAME`), `branch:ID`,
/// `template:NAME`, or a `postgresql://` URL. Returns the connection and a label for
/// output (never the URL's password).
pub async fn connect_side(ctx: &mut Ctx, manifest: &ManifestArgs, side: &str) -> Result<(Client, String)> {
    match Side::parse(side)? {
        Side::Db(db) => Ok((connect_db(ctx, manifest, db).await?, format!("db:{db}"))),
        Side::Branch(id) => {
            let (client, _, database) = connect_branch(ctx, manifest, id).await?;
            Ok((client, format!("branch:{id} (database {database})")))
        }
        Side::Template(name) => Ok((connect_template(ctx, manifest, name).await?, format!("template:{name}"))),
        Side::Url(url) => {
            let (client, db, host) = connect_url(url).await?;
            Ok((client, format!("{host} database {db}")))
        }
    }
}

/// A parsed side of `schema diff`.
#[derive(Debug, PartialEq, Eq)]
enum Side<'a> {
    Db(&'a str),
    Branch(&'a str),
    Template(&'a str),
    Url(&'a str),
}

impl<'a> Side<'a> {
    fn parse(side: &'a str) -> Result<Side<'a>> {
        if side.starts_with("postgresql://") || side.starts_with("postgres://") {
            return Ok(Side::Url(side));
        }
        let (kind, name) = match side.split_once(':') {
            Some((kind, name)) => (kind, name),
            None => ("db", side),
        };
        if name.is_empty() {
            bail!("{side:?} names nothing: write db:NAME, branch:ID or template:NAME");
        }
        match kind {
            "db" => Ok(Side::Db(name)),
            "branch" => Ok(Side::Branch(name)),
            "template" => Ok(Side::Template(name)),
            _ => bail!(
                "{side:?} is not something to compare: write db:NAME (or just NAME), branch:ID, template:NAME or a postgresql:// URL"
            ),
        }
    }
}

/// Any database by URL; returns the connection, the database's name and `host:port`.
async fn connect_url(url: &str) -> Result<(Client, String, String)> {
    let server = Server::from_url("url", url)?;
    let db = server.config.get_dbname().unwrap_or("postgres").to_string();
    Ok((server.connect_as(None, Role::Read).await?, db, server.display()))
}

/// A database on the manifest's servers: the first server that has it (the first server
/// when none does, so the connection error names it).
async fn connect_db(ctx: &mut Ctx, manifest: &ManifestArgs, db: &str) -> Result<Client> {
    let s = crate::ops::Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let mut chosen = s.servers.first().clone();
    for server in &s.servers.list {
        if crate::branch::database_exists(&s.admins[&server.name], db).await? {
            chosen = server.clone();
            break;
        }
    }
    chosen.connect_as(Some(db), Role::Read).await
}

/// A branch's database; returns the connection, its server and the database's name.
async fn connect_branch(ctx: &mut Ctx, manifest: &ManifestArgs, id: &str) -> Result<(Client, String, String)> {
    let b = crate::branch::Branches::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let v = b.show(id).await?.with_context(|| format!("there is no branch {id:?} (see `pgplane branch list`)"))?;
    let server = b.s.servers.get(&v.server)?.clone();
    Ok((server.connect_as(Some(&v.database), Role::Read).await?, v.server, v.database))
}

/// A template's database (named like the template, on its module's server).
async fn connect_template(ctx: &mut Ctx, manifest: &ManifestArgs, name: &str) -> Result<Client> {
    let s = crate::ops::Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let Some(t) = s.manifest.template(name) else {
        let known: Vec<&str> = s.manifest.templates.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "template {name:?} is not in {} (templates: {})",
            s.manifest.file.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    };
    let module = s.manifest.module(&t.module).context("the template's module")?;
    let server = s.servers.get(&module.server)?;
    if !crate::branch::database_exists(&s.admins[&server.name], &t.name).await? {
        bail!("template {name} has not been built yet on server {} (run `pgplane template build {name}`)", server.name);
    }
    server.connect_as(Some(&t.name), Role::Read).await
}

/// Every table and view (of `schema`, or of all non-system schemas), sorted by schema and name.
pub async fn tables(client: &Client, schema: Option<&str>) -> Result<Vec<TableSummary>> {
    let rows = client.query(TABLES_SQL, &[&schema]).await.context("reading the catalog")?;
    Ok(rows.iter().map(table_summary).collect())
}

/// One row of [`TABLES_SQL`] (`serve` runs it as a prepared statement cached per connection).
pub fn table_summary(r: &tokio_postgres::Row) -> TableSummary {
    TableSummary {
        schema: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        description: r.get(3),
        columns: r.get(4),
        estimated_rows: r.get(5),
        size_bytes: r.get(6),
    }
}

/// The whole database: every table and view (partitions folded into their parent), enum
/// and sequence outside the system schemas. Seven catalog queries sent together.
pub async fn snapshot(client: &Client) -> Result<SchemaSnapshot> {
    read(client, None, None).await
}

/// One table or view by `schema.name` or bare `name` (`public` first, else the only schema
/// that has it; an error lists the candidates when several do). The snapshot's queries,
/// filtered to that name, so this stays cheap on databases with thousands of tables.
pub async fn describe(client: &Client, table: &str) -> Result<Option<TableDetail>> {
    let (schema, name) = split_qualified(table);
    let snap = read(client, schema, Some(name)).await?;
    match snap.find(table) {
        Ok(t) => Ok(t.cloned()),
        Err(ambiguous) => Err(ambiguous.into()),
    }
}

type Key = (String, String);

/// Runs the catalog queries with the filter `$1` schema, `$2` relation name (NULL: all)
/// and assembles their rows.
async fn read(client: &Client, schema: Option<&str>, name: Option<&str>) -> Result<SchemaSnapshot> {
    let p: [&(dyn ToSql + Sync); 2] = [&schema, &name];
    let (relations, columns, constraints, indexes, triggers, enums, sequences) = futures_util::try_join!(
        client.query(RELATIONS_SQL, &p),
        client.query(COLUMNS_SQL, &p),
        client.query(CONSTRAINTS_SQL, &p),
        client.query(INDEXES_SQL, &p),
        client.query(TRIGGERS_SQL, &p),
        client.query(ENUMS_SQL, &p),
        client.query(SEQUENCES_SQL, &p),
    )
    .context("reading the catalog")?;

    let key = |r: &tokio_postgres::Row, table: &str| -> Key { (r.get("schema"), r.get(table)) };
    let mut tables: BTreeMap<Key, TableDetail> = BTreeMap::new();
    for r in &relations {
        let t = TableDetail {
            schema: r.get("schema"),
            name: r.get("name"),
            kind: r.get("kind"),
            description: r.get("description"),
            view_definition: r.get("view_definition"),
            partition_key: r.get("partition_key"),
            partitions: r.get("partitions"),
            ..TableDetail::default()
        };
        tables.insert((t.schema.clone(), t.name.clone()), t);
    }

    // Rows of relations created after the relations query ran are skipped.
    let mut uses: BTreeMap<Key, BTreeSet<Key>> = BTreeMap::new();
    for r in &columns {
        let k = key(r, "relation");
        let Some(t) = tables.get_mut(&k) else { continue };
        t.columns.push(Column {
            name: r.get("name"),
            r#type: r.get("type"),
            nullable: r.get("nullable"),
            default: r.get("default"),
            identity: r.get("identity"),
            generated: r.get("generated"),
            comment: r.get("comment"),
        });
        if let (Some(s), Some(n)) = (r.get::<_, Option<String>>("enum_schema"), r.get::<_, Option<String>>("enum_name"))
        {
            uses.entry(k).or_default().insert((s, n));
        }
    }

    for r in &constraints {
        let k = key(r, "relation");
        let kind: String = r.get("type");
        if kind == "f" {
            let fk = ForeignKey {
                name: r.get("name"),
                schema: k.0.clone(),
                table: k.1.clone(),
                columns: r.get("columns"),
                referenced_schema: r.get("referenced_schema"),
                referenced_table: r.get("referenced_table"),
                referenced_columns: r.get("referenced_columns"),
                on_update: r.get("on_update"),
                on_delete: r.get("on_delete"),
                definition: r.get("definition"),
            };
            let target = (fk.referenced_schema.clone(), fk.referenced_table.clone());
            if let Some(t) = tables.get_mut(&target) {
                t.referenced_by.push(fk.clone());
            }
            if let Some(t) = tables.get_mut(&k) {
                t.foreign_keys.push(fk);
            }
            continue;
        }
        let Some(t) = tables.get_mut(&k) else { continue };
        let c = Constraint { name: r.get("name"), columns: r.get("columns"), definition: r.get("definition") };
        match kind.as_str() {
            "p" => t.primary_key = Some(c),
            "u" => t.unique.push(c),
            "c" => t.checks.push(c),
            _ => t.exclusions.push(c),
        }
    }

    for r in &indexes {
        let Some(t) = tables.get_mut(&key(r, "relation")) else { continue };
        t.indexes.push(Index {
            name: r.get("name"),
            definition: r.get("definition"),
            unique: r.get("unique"),
            primary: r.get("primary"),
            predicate: r.get("predicate"),
            constraint: r.get("constraint"),
        });
    }

    for r in &triggers {
        let Some(t) = tables.get_mut(&key(r, "relation")) else { continue };
        t.triggers.push(Trigger { name: r.get("name"), definition: r.get("definition"), enabled: r.get("enabled") });
    }

    let enums: Vec<EnumType> = enums
        .iter()
        .map(|r| EnumType {
            schema: r.get("schema"),
            name: r.get("name"),
            values: r.get("values"),
            comment: r.get("comment"),
        })
        .collect();
    for (k, used) in &uses {
        if let Some(t) = tables.get_mut(k) {
            t.enums = enums.iter().filter(|e| used.contains(&(e.schema.clone(), e.name.clone()))).cloned().collect();
        }
    }

    let mut all_sequences = Vec::new();
    for r in &sequences {
        let owner: Option<Key> = r.get::<_, Option<String>>("owned_by_schema").zip(r.get("owned_by_table"));
        let column: Option<String> = r.get("owned_by_column");
        let s = Sequence {
            schema: r.get("schema"),
            name: r.get("name"),
            r#type: r.get("type"),
            start: r.get("start"),
            increment: r.get("increment"),
            min: r.get("min"),
            max: r.get("max"),
            cache: r.get("cache"),
            cycle: r.get("cycle"),
            owned_by: owner.as_ref().zip(column).map(|((s, t), c)| format!("{s}.{t}.{c}")),
            comment: r.get("comment"),
        };
        if let Some(t) = owner.and_then(|k| tables.get_mut(&k)) {
            t.sequences.push(s.clone());
        }
        all_sequences.push(s);
    }

    let mut snap = SchemaSnapshot { tables: tables.into_values().collect(), enums, sequences: all_sequences };
    snap.normalize();
    Ok(snap)
}

/// The futures the HTTP server runs on its multi-thread runtime must be `Send`; this
/// fails to compile when one is not.
#[allow(dead_code)]
fn futures_are_send(ctx: &mut Ctx, client: &Client, manifest: &ManifestArgs) {
    fn send<T: Send>(_: T) {}
    send(snapshot(client));
    send(describe(client, "t"));
    send(tables(client, None));
    send(connect_side(ctx, manifest, "db:x"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(Side::parse("registry").unwrap(), Side::Db("registry"));
        assert_eq!(Side::parse("db:registry").unwrap(), Side::Db("registry"));
        assert_eq!(Side::parse("branch:MR-42").unwrap(), Side::Branch("MR-42"));
        assert_eq!(Side::parse("template:tpl").unwrap(), Side::Template("tpl"));
        assert_eq!(Side::parse("postgresql://u@h/db").unwrap(), Side::Url("postgresql://u@h/db"));
        let err = Side::parse("tag:v1").unwrap_err().to_string();
        assert!(err.contains("write db:NAME (or just NAME), branch:ID, template:NAME"), "{err}");
        assert!(Side::parse("branch:").unwrap_err().to_string().contains("names nothing"));
    }
}
