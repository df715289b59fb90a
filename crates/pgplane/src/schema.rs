//! `pgplane schema`: introspection of a database, a branch or any URL. The catalog
//! queries are in `sql/schema_*.sql`, one round trip each whatever the number of tables.

use anyhow::{bail, Context, Result};
use pgplane_core::schema::TableSummary;
use tokio_postgres::Client;

use crate::cli::SchemaTarget;
use crate::conn::{Role, Target as Server};
use crate::ops::Ctx;

const TABLES_SQL: &str = include_str!("../sql/schema_tables.sql");

/// Connects to what `--db`, `--branch` or `--url` names.
pub async fn connect(ctx: &mut Ctx, target: &SchemaTarget) -> Result<(Client, String)> {
    if let Some(url) = &target.url {
        let server = Server::from_url("url", url)?;
        let db = server.config.get_dbname().unwrap_or("postgres").to_string();
        return Ok((server.connect_as(None, Role::Read).await?, db));
    }
    if let Some(id) = &target.branch {
        let b = crate::branch::Branches::open(ctx, &target.manifest.file, target.manifest.env.as_deref()).await?;
        let v = b.show(id).await?.with_context(|| format!("there is no branch {id:?} (see `pgplane branch list`)"))?;
        let server = b.s.servers.get(&v.server)?.clone();
        return Ok((server.connect_as(Some(&v.database), Role::Read).await?, v.database));
    }
    let Some(db) = &target.db else {
        bail!("say what to read: --db NAME, --branch ID or --url URL");
    };
    let s = crate::ops::Session::open(ctx, &target.manifest.file, target.manifest.env.as_deref()).await?;
    // The server that has it (the first one when none does: the error then names it).
    let mut chosen = s.servers.first().clone();
    for server in &s.servers.list {
        let exists: bool = s.admins[&server.name]
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[db])
            .await?
            .get(0);
        if exists {
            chosen = server.clone();
            break;
        }
    }
    Ok((chosen.connect_as(Some(db), Role::Read).await?, db.clone()))
}

/// Every table and view (of `schema`, or of all non-system schemas), sorted by schema and name.
pub async fn tables(client: &Client, schema: Option<&str>) -> Result<Vec<TableSummary>> {
    let rows = client.query(TABLES_SQL, &[&schema]).await.context("reading the catalog")?;
    Ok(rows
        .iter()
        .map(|r| TableSummary {
            schema: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            description: r.get(3),
            columns: r.get(4),
            estimated_rows: r.get(5),
            size_bytes: r.get(6),
        })
        .collect())
}
