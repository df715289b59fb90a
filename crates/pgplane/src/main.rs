//! The `pgplane` binary: parse arguments, set up logging, run one command, exit.

mod branch;
mod cli;
mod commands;
mod conn;
mod control;
mod exec;
mod local;
mod migrate;
mod observe;
mod ops;
mod output;
mod schema;
mod secrets;
mod serve;
mod stack;
mod stack_cmd;
mod wait;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // `serve` answers requests on every core; every other command is one task at a time.
    let runtime = match &cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgplane: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut ctx = ops::Ctx::new(cli.home.clone());
    let result = runtime.block_on(async {
        match cli.command {
            Command::Plan(a) => commands::plan(&mut ctx, a).await,
            Command::Apply(a) => commands::apply(&mut ctx, a).await,
            Command::Adopt(a) => commands::adopt(&mut ctx, a).await,
            Command::Status(a) => commands::status(&mut ctx, a).await,
            Command::Credentials(a) => commands::credentials(&mut ctx, a).await,
            Command::Wait(a) => commands::wait(&ctx, a).await,
            Command::Local { command } => commands::local(&mut ctx, command),
            Command::Migrate { command } => commands::migrate(&mut ctx, command).await,
            Command::Template { command } => commands::template(&mut ctx, command).await,
            Command::Branch { command } => commands::branch(&mut ctx, command).await,
            Command::Schema { command } => commands::schema(&mut ctx, command).await,
            Command::Stack { command } => stack_cmd::stack(&ctx, command).await,
            Command::Serve(a) => serve::run(ctx.home.clone(), a).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("pgplane: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = match std::env::var("PGPLANE_LOG").ok().as_deref() {
        Some("error") => LevelFilter::ERROR,
        Some("warn") => LevelFilter::WARN,
        Some("info") => LevelFilter::INFO,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        _ => match cli.verbose {
            0 if std::io::stderr().is_terminal() => LevelFilter::WARN,
            0 => LevelFilter::INFO,
            1 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
