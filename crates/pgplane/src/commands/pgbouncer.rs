//! `pgplane pgbouncer`: a thin front end over [`pgplane_ops::pgbouncer`].

use anyhow::Result;
use pgplane_core::pgbouncer::PoolMode;

use crate::cli::{PgbouncerArgs, PoolModeArg};
use crate::ops::Ctx;

pub async fn pgbouncer(ctx: &mut Ctx, args: PgbouncerArgs) -> Result<i32> {
    let out = match &args.out {
        Some(dir) if dir.is_absolute() => Some(dir.clone()),
        Some(dir) => Some(std::env::current_dir()?.join(dir)),
        None => None,
    };
    let opts = pgplane_ops::pgbouncer::Options {
        listen_addr: args.listen.ip().to_string(),
        listen_port: args.listen.port(),
        pool_mode: match args.pool_mode {
            PoolModeArg::Session => PoolMode::Session,
            PoolModeArg::Transaction => PoolMode::Transaction,
        },
        reserve: args.reserve,
        // PgBouncer opens a relative auth_file from its working folder: name it in full.
        auth_file: match &out {
            Some(dir) => dir.join("userlist.txt").display().to_string(),
            None => "userlist.txt".to_string(),
        },
        userlist: out.is_some(),
    };
    let config =
        pgplane_ops::pgbouncer::generate(ctx, &args.manifest.file, args.manifest.env.as_deref(), &opts).await?;
    let files = match &out {
        Some(dir) => {
            let (ini, users) = pgplane_ops::pgbouncer::write(dir, &config)?;
            vec![ini, users]
        }
        None => Vec::new(),
    };
    if args.json {
        let mut doc = serde_json::to_value(&config)?;
        doc["files"] = serde_json::json!(files);
        if out.is_none() {
            doc["ini"] = serde_json::json!(config.ini);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    match &out {
        None => print!("{}", config.ini),
        Some(_) => {
            println!(
                "Wrote {} ({} databases) and {} ({} roles, mode 0600) for env {}.",
                files[0].display(),
                config.databases.len(),
                files[1].display(),
                config.users.len(),
                config.env
            );
            for b in &config.servers {
                println!("{}", b.summary());
            }
        }
    }
    Ok(0)
}
