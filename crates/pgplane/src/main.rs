//! The `pgplane` binary: parse arguments, set up logging, run one command, exit.

// Every print of this crate goes through `output`: control characters that come from the
// catalog or from requests are escaped, and a stdout closed by its reader (`| head -1`)
// ends the process quietly instead of panicking. Defined before the modules, these shadow
// the standard macros in all of them.
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::write_stdout(&::std::format!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::output::write_stdout("\n") };
    ($($arg:tt)*) => {{ let mut s = ::std::format!($($arg)*); s.push('\n'); $crate::output::write_stdout(&s) }};
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::write_stderr(&::std::format!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::output::write_stderr("\n") };
    ($($arg:tt)*) => {{ let mut s = ::std::format!($($arg)*); s.push('\n'); $crate::output::write_stderr(&s) }};
}

mod cli;
mod commands;
mod output;
mod serve;

// The operations live in the library; front ends call them by these names.
use pgplane_ops::{
    branch, cancel, conn, control, credentials, error, events, exec, jobs, migrate, ops, runner, schema, stack, status,
    tenants, wait,
};
mod stack_cmd;
mod stack_render;

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
        Command::Serve(_) | Command::Worker(_) | Command::Consume(_) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        }
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
            Command::Migrate { command } => commands::migrate(&mut ctx, *command).await,
            Command::Template { command } => commands::template(&mut ctx, command).await,
            Command::Branch { command } => commands::branch(&mut ctx, command).await,
            Command::Schema { command } => commands::schema(&mut ctx, command).await,
            Command::Stack { command } => stack_cmd::stack(&ctx, command).await,
            Command::Serve(a) => serve::run(ctx.home.clone(), a).await,
            Command::Worker(a) => commands::worker(&mut ctx, a).await,
            Command::Job { command } => commands::job(&mut ctx, command).await,
            Command::Tenant { command } => commands::tenant(&mut ctx, command).await,
            Command::Pgbouncer(a) => commands::pgbouncer(&mut ctx, a).await,
            Command::Destroy(a) => commands::destroy(&mut ctx, a).await,
            Command::Consume(a) => commands::consume(&mut ctx, a).await,
            Command::Events { command } => commands::events(&mut ctx, command).await,
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
        // Every line escaped (values may come from tenants); so no colour codes either.
        .with_writer(|| output::CleanStderr)
        .with_target(false)
        .with_ansi(false);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
