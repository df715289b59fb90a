//! Raw command-line arguments (clap derive). Doc comments are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pgplane: the control plane for shared PostgreSQL.
///
/// Describe modules and tenants in pgplane.yaml; `pgplane plan` shows what must change on
/// the server(s), `pgplane apply` makes it so, `pgplane credentials` hands each module its
/// connection settings. With no `servers:` in the manifest pgplane runs an embedded local
/// PostgreSQL in $PGPLANE_HOME/local.
///
/// Exit codes: 0 success; 1 error (nothing was executed when the input was bad), or `wait`
/// timed out; 2 `plan --detailed-exitcode` found changes, or invalid arguments; 3 `local
/// status` found no running server.
#[derive(Debug, Parser)]
#[command(
    name = "pgplane",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Examples:
  pgplane plan -f examples/platform.yaml              # what would change (env from the manifest)
  pgplane apply -f pgplane.yaml --env sandbox1 --yes  # provision another sandbox
  pgplane credentials registry --format env           # what the registry module deploys with
  pgplane credentials users --tenant acme --format k8s-secret
  pgplane status --json                               # everything pgplane manages, with drift
  pgplane wait --for server --for database:dev_app --timeout 60s  # before a deployment
  pgplane local url                                   # admin URL of the embedded server"
)]
pub struct Cli {
    /// pgplane's home folder: the secret key and the embedded server live here.
    #[arg(long, global = true, env = "PGPLANE_HOME", default_value = ".pgplane")]
    pub home: PathBuf,

    /// Log more (-v info, -vv debug). Logs go to stderr; PGPLANE_LOG=debug works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGPLANE_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what apply would change, without changing anything.
    ///
    /// Reads the manifest, the catalog of every server and the control database, and
    /// prints the ordered actions with their SQL (passwords redacted), orphaned objects and
    /// a summary. Creates nothing, not even the control database.
    Plan(PlanArgs),
    /// Make the servers match the manifest.
    ///
    /// Computes the same plan as `plan`, shows it, asks (on a terminal) and runs it with a
    /// progress bar. Serialized with other pgplane processes by a lock on the first server.
    /// A second apply of the same manifest changes nothing. Afterwards every module with
    /// `migrations:` is migrated (as `pgplane migrate up -f FILE` would); --skip-migrations
    /// provisions only.
    Apply(ApplyArgs),
    /// Record existing objects with target names as managed by pgplane.
    ///
    /// For databases or roles created before pgplane: they become pgplane's (their
    /// passwords are reset so that `credentials` can hand them out). Run `apply` afterwards
    /// to repair owners and privileges.
    Adopt(AdoptArgs),
    /// Show what pgplane manages, per environment, and any drift from the manifest.
    Status(StatusArgs),
    /// Print the connection settings a module (or tenant) deploys with.
    Credentials(CredentialsArgs),
    /// Wait until a server is ready: it accepts logins, databases and roles exist, a query
    /// is true.
    ///
    /// Checks every condition each --interval on one connection to the target database,
    /// reconnecting when it breaks (a server restart), until all hold or --timeout passes.
    /// Prints one line per condition (`ok  database:app  after 1.3s`); on timeout, what was
    /// last observed for each (the connection error, the missing object, the query's value
    /// or error) and the results of --diagnose-sql. Messages name host:port/database, never
    /// the URL or its password.
    ///
    /// Exit codes: 0 every condition holds; 1 the timeout passed (or an error such as an
    /// invalid manifest); 2 invalid arguments (e.g. an unknown condition).
    #[command(after_help = "Examples:
  pgplane wait --url \"$DATABASE_URL\" --for server --timeout 60s
  pgplane wait -f pgplane.yaml --module registry --for database:dev_registry --for role:dev_registry
  pgplane wait --for \"sql:SELECT count(*) > 0 FROM pg_extension WHERE extname = 'pg_trgm'\" --json")]
    Wait(WaitArgs),
    /// Manage the embedded local PostgreSQL server.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Run migrations: SQL folders and Liquibase changelogs, per module and per tenant.
    ///
    /// A source is a folder of `V<version>__<description>.sql` / `R__<description>.sql`
    /// files (history in the table `pgplane_schema_history` of the target schema), or a
    /// Liquibase changelog (`.yaml`, `.yml`, `.xml`, `.json`, or `.sql` starting with
    /// `--liquibase formatted sql`; history in Liquibase's own `databasechangelog`, so real
    /// Liquibase and pgplane continue each other's work).
    ///
    /// Targets: `--url URL --source PATH` migrates one database; `-f FILE` migrates the
    /// modules whose manifest entry has `migrations:` (or `--module M`, optionally
    /// `--tenant T`), every tenant of a per-tenant module, `--jobs` at a time, each as the
    /// module's owner role inside its own schema. Exit code 0 when every target is fine,
    /// 1 otherwise (each target's outcome is reported).
    #[command(after_help = "Examples:
  pgplane migrate status -f pgplane.yaml                      # every module with `migrations:`
  pgplane migrate up -f pgplane.yaml --module users --jobs 8  # all tenants of users, 8 at a time
  pgplane migrate up --url postgresql://app@db/registry --source data-model/changelog.yaml
  pgplane migrate validate -f pgplane.yaml --module registry --contexts dev --json
  pgplane migrate up --url postgresql://app@db/registry --source changelog.yaml --to-tag v1.4
  pgplane migrate rollback -f pgplane.yaml --module registry --to-tag v1.3 --dry-run")]
    Migrate {
        #[command(subcommand)]
        command: Box<MigrateCommand>,
    },
    /// Template databases that branches are stamped from.
    #[command(after_help = "Example:
  pgplane template build registry_template -f pgplane.yaml   # build, or rebuild and swap in")]
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Branch databases for version candidates: stamped from a template, then migrated.
    ///
    /// A branch database is `CREATE DATABASE … TEMPLATE <template>` (WAL_LOG for small
    /// templates, FILE_COPY for big ones), owned by the template module's owner, closed to
    /// other modules' roles, readable by `branches.readonly_role`; then the given sources
    /// are applied in order. Its status (RUNNING, SUCCESS, FAILED with the error) is
    /// recorded in the control database. Operations on one branch serialize; different
    /// branches run in parallel.
    #[command(after_help = "Examples:
  pgplane branch create MR-1234 --template registry_template --source candidate/changelog.yaml --label mr=1234 --ttl 72h
  pgplane branch show MR-1234 --json
  pgplane branch reset MR-1234 --source candidate/changelog.yaml   # a new patch set
  pgplane branch gc --keep-file open-merge-requests.txt --dry-run
  pgplane branch delete --all --match 'registry_template_dev_*'")]
    Branch {
        #[command(subcommand)]
        command: BranchCommand,
    },
    /// Serve the REST API, the web console, health checks and metrics in one process.
    ///
    /// REST under /api/v1 (OpenAPI at /api/v1/openapi.json), the console at /, /healthz
    /// (process up), /readyz (control database reachable) and /metrics (Prometheus).
    /// Long operations (apply, branch create/reset) answer 202 with an operation: a durable
    /// job in the control database that the worker slots of any serve replica or `pgplane
    /// worker` run (--workers here; 0 makes an API-only replica). Any number of replicas
    /// may share one control database and answer the same; one of them is the elected
    /// leader, which recovers jobs of dead workers and queues the periodic branch gc.
    /// Bearer tokens with scope `read` or `admin` come from --tokens-file (one
    /// `scope:token` per line) or PGPLANE_TOKENS (`scope:token,scope:token`); without
    /// tokens, serve only listens on loopback. SIGTERM stops accepting requests; running
    /// jobs get the grace period to finish and are handed back to the queue otherwise.
    #[command(after_help = "Examples:
  pgplane serve -f pgplane.yaml                                  # http://127.0.0.1:7070
  PGPLANE_TOKENS=admin:$ADMIN,read:$PORTAL pgplane serve --listen 0.0.0.0:7070
  curl -H \"Authorization: Bearer $PORTAL\" localhost:7070/api/v1/branches")]
    Serve(ServeArgs),
    /// Run queued jobs without the HTTP service: worker slots and a candidate for leader,
    /// like a serve replica with no routes.
    ///
    /// Runs the jobs queued for this manifest (by serve replicas, the leader's gc, the
    /// event consumer) until SIGTERM; then running jobs get --grace to finish and are
    /// handed back to the queue.
    #[command(after_help = "Examples:
  pgplane worker -f pgplane.yaml --workers 8
  pgplane worker -f pgplane.yaml --env staging --grace 60s")]
    Worker(WorkerArgs),
    /// Tenants registered in the control database: add, upgrade, disable, enable, remove,
    /// list, show, and garbage-collect previews.
    ///
    /// Registered tenants are desired state like the manifest's: `plan` and `apply` compute
    /// them with the same planner, and a manifest that does not list them leaves them alone.
    /// Each command computes a plan first (`--dry-run` prints it and changes nothing), runs
    /// it under the apply lock, then migrates the tenant's modules as the tenant's own
    /// roles, at the version it runs, with its parameters. Every one is a job (`pgplane job
    /// list`); `disable` and `remove` ask on a terminal (`--yes` otherwise).
    #[command(after_help = "Examples:
  pgplane tenant add acme --module users --module files@1.0 --param loadReference=true
  pgplane tenant add pr-123 --module users --ttl 72h --label pr=123     # a preview
  pgplane tenant upgrade acme --module users@2.0 --dry-run
  pgplane tenant upgrade --all --module users@2.0 --canary 2 --jobs 8 --max-failures 3
  pgplane tenant disable acme --yes                                     # roles lose LOGIN and CONNECT
  pgplane tenant remove acme --module files --purge --yes               # drops its storage and roles
  pgplane tenant list --json
  pgplane tenant gc --keep-file open-pull-requests.txt                  # purge previews not listed")]
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Consume provisioning events (the embedded queue, or Kafka when the manifest has
    /// `events.kafka`) and run their jobs, until SIGTERM.
    ///
    /// Each event becomes a job in the same control-database transaction that records it
    /// (its offset, its id as idempotency key), so a crash at any point neither loses nor
    /// repeats an effect; events of one key take effect in order. Several consumers share
    /// the partitions (a fair share each; a dead one's partitions move within seconds).
    /// With --workers N (default 4) this process also runs jobs, like `pgplane worker`;
    /// status events go to the outbox (and, with Kafka, to `status_topic`).
    #[command(after_help = "Examples:
  pgplane consume -f pgplane.yaml                      # consume and run jobs in one process
  pgplane consume -f pgplane.yaml --workers 0          # consume only; `pgplane worker`s run the jobs
  pgplane events publish --type candidate.opened --key MR-42 --data '{\"id\":\"MR-42\",\"template\":\"registry_template\"}'")]
    Consume(ConsumeArgs),
    /// Provisioning events: publish one, see what became of them, unblock a key.
    #[command(after_help = "Examples:
  pgplane events publish --type tenant.created --key acme --data '{\"tenant\":\"acme\",\"modules\":[\"users\"]}'
  pgplane events status -f pgplane.yaml
  pgplane events retry 42      # run a blocked event's job again (its key stays in order)
  pgplane events skip 42       # give up a blocked event; its key goes on")]
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Read and cancel jobs: every long operation (apply, migrate, template build, branch
    /// create/reset/delete/gc, …) of every pgplane process, from the control database.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Read a database's structure: its tables and views, one relation in full, or the
    /// differences between two databases, branches or templates.
    #[command(after_help = "Examples:
  pgplane schema tables --db dev_registry -f pgplane.yaml
  pgplane schema tables --branch MR-42 --json
  pgplane schema tables --url postgresql://reader@db/registry --schema public
  pgplane schema describe entries --db dev_registry
  pgplane schema describe audit.events --branch MR-42 --json
  pgplane schema diff template:registry_template branch:MR-42
  pgplane schema diff db:dev_registry db:prod_registry --json --exit-code")]
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Write a PgBouncer configuration for an environment's databases.
    ///
    /// One `[databases]` entry per module database, shared schema-per-tenant database and
    /// database-per-tenant database (tenants of the manifest and registered ones), each with
    /// its module's `pool_size` (default 20) and `max_db_connections` (default: the module's
    /// `connection_limit`); an `auth_file` with the SCRAM verifiers the server holds for the
    /// managed roles (never a password; each checked to be the one pgplane set). Refused
    /// when the pools could hold more server connections than the server allows
    /// (`max_connections` minus its reserved connections and --reserve), naming the overflow.
    /// Without --out, prints pgbouncer.ini; the userlist is only ever written to a file.
    /// pgplane's own admin URLs must point at PostgreSQL, not at PgBouncer.
    #[command(after_help = "Examples:
  pgplane pgbouncer -f pgplane.yaml --env dev                     # pgbouncer.ini on stdout
  pgplane pgbouncer -f pgplane.yaml --out /etc/pgbouncer --listen 0.0.0.0:6432
  pgplane pgbouncer --pool-mode transaction --reserve 10 --out ./pgbouncer --json")]
    Pgbouncer(PgbouncerArgs),
    /// Drop everything pgplane manages for an environment, and nothing else.
    ///
    /// Plans first: the environment's branch and template databases, its tenants' and
    /// modules' schemas, extensions and databases, then its roles, and their records in
    /// the control database. Only what pgplane recorded as its own: a role or database
    /// dropped and re-created outside pgplane under a recorded name is left alone (its
    /// record is forgotten), as are objects of other environments. Shows the plan and asks
    /// on a terminal; refuses without --yes when stdin is not one. Runs as a job of kind
    /// `destroy`; refuses while other jobs of the environment are queued or running. Exit
    /// code 1 when something of the environment is still recorded afterwards (it says what).
    #[command(after_help = "Examples:
  pgplane destroy --env pr-123 --dry-run        # what would go
  pgplane destroy --env pr-123 -f pgplane.yaml --yes --json")]
    Destroy(DestroyArgs),
    /// Phased setup on shared databases: commands, SQL, waits on SQL conditions and
    /// long-running services, ordered by `needs` and exclusive or parallel groups.
    ///
    /// The stack file (or a `stacks:` entry of the manifest) is checked completely before
    /// anything runs; every problem names its file and line. Steps that name a module get
    /// its role's credentials (DATABASE_URL, PGHOST…PGPASSWORD) from pgplane; SQL steps and
    /// waits log in as that role. Each step's state is recorded in the control database,
    /// its output goes to $PGPLANE_HOME/stacks/<run>/<step>.log and, prefixed with its
    /// name, to stderr. Services keep running after the run until `stack down`.
    ///
    /// Exit codes of `stack run`: 0 every step completed (services up); 1 error, nothing
    /// ran if the file was bad; 3 a step failed or timed out (what needs it was skipped;
    /// `--resume` continues); 4 interrupted by SIGINT/SIGTERM (`--resume` continues).
    /// `stack status` and `stack down`: 0, or 1 on error.
    #[command(after_help = "Examples:
  pgplane stack run -f stack.yaml --dry-run        # the phases and steps, nothing runs
  pgplane stack run -f stack.yaml --env demo       # run it; services stay up
  pgplane stack run -f stack.yaml --resume         # after a failure or a crash: continue
  pgplane stack run -f stack.yaml --from sync-alpha   # again from a step, with what needs it
  pgplane stack status -f stack.yaml --json
  pgplane stack down -f stack.yaml --grace 10s     # stop the services, dependents first")]
    Stack {
        #[command(subcommand)]
        command: StackCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Run the stack: steps start as soon as what they need holds.
    Run(StackRunArgs),
    /// Show the latest run: each step's state, times, waits' last values, failures' log lines.
    Status(StackStatusArgs),
    /// Stop the services of the latest run in reverse dependency order (SIGTERM, then
    /// SIGKILL after the grace period), each one after the other.
    Down(StackDownArgs),
    /// Keep one service running (started by `stack run`; not for people).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(Debug, Args)]
pub struct StackFileArgs {
    /// The stack file, or a manifest with `stacks:`.
    #[arg(short = 'f', long = "file", default_value = "stack.yaml")]
    pub file: PathBuf,
    /// Which stack of a manifest's `stacks:` (needed when it has several).
    #[arg(long)]
    pub stack: Option<String>,
    /// Environment; defaults to the manifest's `environment:` (`default` without a manifest).
    #[arg(long, env = "PGPLANE_ENV")]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct StackRunArgs {
    #[command(flatten)]
    pub file: StackFileArgs,
    /// Continue the latest run: completed steps do not run again; services are re-checked
    /// and only started again when their process is gone.
    #[arg(long)]
    pub resume: bool,
    /// Run this step and every step that needs it (again, even if completed) in the latest run.
    #[arg(long, value_name = "STEP", conflicts_with = "only")]
    pub from: Option<String>,
    /// Run only this step (repeatable) in the latest run, even if completed; its needs are not checked.
    #[arg(long, value_name = "STEP")]
    pub only: Vec<String>,
    /// After a failure, let steps that do not need the failed one run on.
    #[arg(long)]
    pub keep_going: bool,
    /// Show only the summary (the log files still get every line).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the phases and steps in order; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run (as `stack status --json`) or the dry run as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StackStatusArgs {
    #[command(flatten)]
    pub file: StackFileArgs,
    /// This run instead of the latest.
    #[arg(long)]
    pub run: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StackDownArgs {
    #[command(flatten)]
    pub file: StackFileArgs,
    /// This run instead of the latest.
    #[arg(long)]
    pub run: Option<i64>,
    /// Time between SIGTERM and SIGKILL for each service.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The step's log file.
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long, default_value = "no")]
    pub restart: String,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    /// A variable whose value is hidden in the log (repeatable).
    #[arg(long)]
    pub redact_env: Vec<String>,
    /// The service's command.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The manifest file (its servers; the environment's own modules need not be listed).
    #[arg(short = 'f', long = "file", default_value = "pgplane.yaml")]
    pub file: PathBuf,
    /// The environment to destroy; never taken from the manifest or PGPLANE_ENV.
    #[arg(long)]
    pub env: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: the plan ({"env", "changes", "copies", "actions", "notes"}) and, after a
    /// run, "applied", "remaining" and "job".
    #[arg(long)]
    pub json: bool,
    /// How long to wait for another pgplane operation on the same server.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct PgbouncerArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Write pgbouncer.ini and userlist.txt (mode 0600) into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where PgBouncer listens (`listen_addr`, `listen_port`).
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: std::net::SocketAddr,
    /// `pool_mode`: session (every feature works) or transaction (more clients per connection).
    #[arg(long, value_enum, default_value_t = PoolModeArg::Session)]
    pub pool_mode: PoolModeArg,
    /// Server connections kept out of the budget for clients that connect directly
    /// (pgplane itself, migrations, administrators).
    #[arg(long, default_value_t = 0)]
    pub reserve: u32,
    /// Print JSON: {"env", "databases": [...], "servers": [budget], "users": [...], "files": [...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PoolModeArg {
    Session,
    Transaction,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Address to listen on. Anything but loopback requires tokens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Tokens, one `scope:token` per line (scope `read` or `admin`; `#` comments).
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How long running operations may take to finish after SIGTERM before they are
    /// recorded as interrupted.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Another name this service is reached by (a proxy's, a Kubernetes Service's), as
    /// `NAME` (any port) or `NAME:PORT`; repeat for several. Requests whose `Host` is
    /// neither the listen address (nor `localhost:PORT` on loopback) nor one of these are
    /// refused with 421: a web page cannot reach the service through a name of its own
    /// (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME[:PORT]")]
    pub allowed_hosts: Vec<String>,
    /// Worker slots: queued jobs (apply, branch create/reset, gc, template builds) this
    /// process runs at once, whichever replica queued them. 0 makes an API-only replica.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: u16,
    /// Jobs of this environment waiting for a worker at most; beyond, a request that would
    /// queue one is answered 429 with Retry-After.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub backlog: u16,
    /// How often the elected leader queues the periodic branch gc (expired, interrupted,
    /// and with `branches.keep_file` those not in the live list).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Also consume provisioning events (as `pgplane consume` does): the embedded queue,
    /// or Kafka when the manifest has `events.kafka`.
    #[arg(long)]
    pub consume: bool,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Worker slots running jobs in this process (0: consume only).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: u16,
    /// How long running jobs may take to finish after SIGTERM before they are handed back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How often the elected leader queues the periodic branch gc.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish an event: to the embedded queue (the control database), or to the Kafka
    /// topic when the manifest has `events.kafka`. Prints where it went.
    Publish {
        /// The event type: tenant.created, candidate.opened, module.requested, … (see README).
        #[arg(long = "type", value_name = "TYPE", required_unless_present = "from")]
        kind: Option<String>,
        /// The ordering key (a tenant, a candidate): events of one key take effect in order.
        #[arg(long, required_unless_present = "from")]
        key: Option<String>,
        /// Publish every event of a JSON-lines FILE instead (one `{"type", "key", "id"?,
        /// "subject"?, "data"?}` per line), in order.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "key", "id", "subject"])]
        from: Option<std::path::PathBuf>,
        /// With --from: at most this many events per second (a steady load; default: as fast as possible).
        #[arg(long, requires = "from")]
        rate: Option<f64>,
        /// The event id, its idempotency key (default: a new UUID). The same id twice does
        /// nothing the second time.
        #[arg(long)]
        id: Option<String>,
        /// The event's `data`, a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// The envelope's subject (default: the key).
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
    /// Recent events with their outcome and job, lag per partition, blocked keys and dead
    /// letters. Exit 1 when a key is blocked.
    Status {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// How many recent events.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a blocked event's job again (its key stays blocked until it succeeds or fails again).
    Retry {
        /// The event's number (SEQ in `events status`).
        seq: i64,
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
    /// Give up a blocked event: its key's later events go on.
    Skip {
        seq: i64,
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Jobs this process runs at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// How long running jobs may take to finish after SIGTERM before they are handed back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How often the elected leader queues the periodic branch gc.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Recent jobs, newest first (`--status queued,running` for the unfinished ones).
    #[command(after_help = "Examples:
  pgplane job list -f pgplane.yaml
  pgplane job list --status queued,running --kind branch_create --json")]
    List {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Only these statuses (comma-separated): queued, running, succeeded, failed, cancelled.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only this kind (apply, branch_create, branch_reset, branch_delete, branch_gc, template_build, …).
        #[arg(long)]
        kind: Option<String>,
        /// Jobs of every environment, not only --env's.
        #[arg(long)]
        all_envs: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON: the jobs as `GET /api/v1/operations` has them.
        #[arg(long)]
        json: bool,
    },
    /// One job with its stages, attempts, worker and error.
    Show {
        id: i64,
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued one at once, a running one at its next safe point (its
    /// running migration is cancelled and rolled back). Exit 1 when it already ended.
    Cancel {
        id: i64,
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Register a tenant (or add modules to one) and provision its storage.
    Add(TenantAddArgs),
    /// Move a tenant's modules to another version, or every tenant of a module (--all).
    Upgrade(TenantUpgradeArgs),
    /// Keep a tenant's data but take away its roles' LOGIN and CONNECT (all its modules, or
    /// --module).
    Disable(TenantModulesArgs),
    /// Give a disabled tenant's roles LOGIN and CONNECT again.
    Enable(TenantModulesArgs),
    /// Purge a tenant's modules (--purge: drop their storage and roles); without --purge,
    /// disable them.
    Remove(TenantRemoveArgs),
    /// Every tenant of the environment (the manifest's and the registered ones) with its
    /// modules, versions, status, labels and expiry.
    List(TenantListArgs),
    /// One tenant in full: storage, parameters, the last job and its error.
    Show(TenantShowArgs),
    /// Purge previews (tenants with a TTL or labels) that expired and, with --keep-file or
    /// --keep, those the live list names neither by name nor by a `key=value` label.
    Gc(TenantGcArgs),
}

/// Options of every tenant command that changes something.
#[derive(Debug, Args)]
pub struct TenantChangeArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Print the plan (and the migrations that would run); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for another operation on the tenant or the server (e.g. 30s, 5m).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct TenantAddArgs {
    pub tenant: String,
    /// A module to enable, `MODULE` or `MODULE@VERSION` (default: its newest version); repeat.
    #[arg(long = "module", value_name = "MODULE[@VERSION]", required = true)]
    pub modules: Vec<String>,
    /// A module parameter, e.g. loadReference=true (see the module's `parameters:`); repeat.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Time to live (e.g. 72h): the tenant is a preview, purged when it expires.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// A label, e.g. pr=123 (the tenant is a preview); repeat.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub change: TenantChangeArgs,
}

#[derive(Debug, Args)]
pub struct TenantUpgradeArgs {
    /// The tenant (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub tenant: Option<String>,
    /// Every registered tenant of the one --module given.
    #[arg(long)]
    pub all: bool,
    /// `MODULE@VERSION` (or `MODULE`: its newest version); repeat for one tenant.
    #[arg(long = "module", value_name = "MODULE[@VERSION]", required_unless_present = "all_modules")]
    pub modules: Vec<String>,
    /// Every module of the tenant to its newest version.
    #[arg(long, conflicts_with_all = ["modules", "all"])]
    pub all_modules: bool,
    /// With --all: tenants migrated at once after the canaries.
    #[arg(long, default_value_t = 4, requires = "all", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// With --all: this many tenants go first, one at a time; a failure among them stops the rest.
    #[arg(long, default_value_t = 0, requires = "all")]
    pub canary: usize,
    /// With --all: start no more tenants after this many failures.
    #[arg(long, default_value_t = 1, requires = "all", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failures: u32,
    /// Allow going back to an older version (only where the source can roll it back).
    #[arg(long)]
    pub allow_downgrade: bool,
    #[command(flatten)]
    pub change: TenantChangeArgs,
}

#[derive(Debug, Args)]
pub struct TenantModulesArgs {
    pub tenant: String,
    /// Only this module; repeat (default: every module of the tenant).
    #[arg(long = "module", value_name = "MODULE")]
    pub modules: Vec<String>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub change: TenantChangeArgs,
}

#[derive(Debug, Args)]
pub struct TenantRemoveArgs {
    pub tenant: String,
    /// Only this module; repeat (default: every module of the tenant).
    #[arg(long = "module", value_name = "MODULE")]
    pub modules: Vec<String>,
    /// Drop the storage and the roles (all data is lost). Without it, the modules are disabled.
    #[arg(long)]
    pub purge: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub change: TenantChangeArgs,
}

#[derive(Debug, Args)]
pub struct TenantListArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Print JSON: the tenants as `GET /api/v1/tenants` has them.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TenantShowArgs {
    pub tenant: String,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TenantGcArgs {
    /// A file of live previews, one tenant name or `key=value` label per line (# comments
    /// and blank lines ignored); previews it does not name are purged.
    #[arg(long)]
    pub keep_file: Option<PathBuf>,
    /// A live tenant name or `key=value` label; repeat.
    #[arg(long = "keep", value_name = "NAME|KEY=VALUE")]
    pub keep: Vec<String>,
    /// Accept an empty live list (it purges every preview).
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub change: TenantChangeArgs,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Tables and views with their comment, columns, estimated rows and size, sorted by
    /// schema and name (views are flagged by `kind`).
    Tables(SchemaTablesArgs),
    /// One table or view in full: columns (type, nullability, default, identity, generated,
    /// comment), primary key, unique, check and exclusion constraints, foreign keys both
    /// ways, indexes (partial ones flagged), triggers, partitions, the view's definition,
    /// the enums its columns use and the sequences it owns.
    #[command(after_help = "Examples:
  pgplane schema describe entries --db dev_registry -f pgplane.yaml
  pgplane schema describe audit.events --branch MR-42 --json
  pgplane schema describe live_entries --url postgresql://reader@db/registry")]
    Describe(SchemaDescribeArgs),
    /// What changed from one database to another: tables, views, columns (type,
    /// nullability, default, identity, generation), constraints, indexes, triggers,
    /// comments, enums and sequences, added, removed or changed. Each side is `db:NAME` (or
    /// just `NAME`) on the manifest's servers, `branch:ID`, `template:NAME`, or a
    /// `postgresql://` URL. Exit code 0 (with --exit-code: 0 when equal, 2 when different),
    /// 1 on error.
    #[command(after_help = "Examples:
  pgplane schema diff template:registry_template branch:MR-42 -f pgplane.yaml
  pgplane schema diff dev_registry staging_registry --json
  pgplane schema diff db:dev_registry branch:MR-42 --exit-code   # 2 when they differ")]
    Diff(SchemaDiffArgs),
}

#[derive(Debug, Args)]
pub struct SchemaDescribeArgs {
    /// The table or view: `schema.name`, or `name` (in `public`, else the only schema that has it).
    pub table: String,
    #[command(flatten)]
    pub target: SchemaTarget,
    /// `{"schema", "name", "kind", "description", "columns": [{"name", "type", "nullable",
    /// "default", "identity", "generated", "comment"}], "primary_key", "unique", "checks",
    /// "exclusions", "foreign_keys", "referenced_by", "indexes", "triggers",
    /// "view_definition", "partition_key", "partitions", "enums", "sequences"}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SchemaDiffArgs {
    /// The old side: db:NAME, NAME, branch:ID, template:NAME or a postgresql:// URL.
    pub from: String,
    /// The new side, written the same way.
    pub to: String,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// `{"from", "to", "changes": [{"object", "name", "table", "change", "attribute",
    /// "from", "to"}], "summary": {"added", "removed", "changed", "total"}}`.
    #[arg(long)]
    pub json: bool,
    /// Exit 2 when the two sides differ (0 when they do not, 1 on error).
    #[arg(long)]
    pub exit_code: bool,
}

/// Which database `pgplane schema` reads.
#[derive(Debug, Args)]
pub struct SchemaTarget {
    /// A database on the manifest's servers.
    #[arg(long, conflicts_with_all = ["branch", "url"])]
    pub db: Option<String>,
    /// A branch database (by its id).
    #[arg(long, conflicts_with = "url")]
    pub branch: Option<String>,
    /// Any database, by connection URL.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

#[derive(Debug, Args)]
pub struct SchemaTablesArgs {
    #[command(flatten)]
    pub target: SchemaTarget,
    /// Only this schema.
    #[arg(long)]
    pub schema: Option<String>,
    /// `[{"name", "schema", "kind", "description", "columns", "estimated_rows", "size_bytes"}]`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build (or rebuild) a template from its sources: a new database is built and swapped
    /// in only when every source succeeded; a failed rebuild leaves the old template intact.
    Build(TemplateBuildArgs),
}

#[derive(Debug, Args)]
pub struct TemplateBuildArgs {
    /// The template's name (`templates[].name`).
    pub name: String,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[command(flatten)]
    pub deploy: DeployArgs,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Liquibase contexts, comma-separated (default: the template's `contexts`, else all).
    #[arg(long, value_delimiter = ',')]
    pub contexts: Vec<String>,
    /// How long to wait for another operation on the same branch or template.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// How long sessions on the template may delay the copy (waited for or terminated, per
    /// `branches.template_sessions`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub session_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum BranchCommand {
    /// Stamp a branch database from a template and deploy the given sources in order.
    /// Exit code 0 when its status is SUCCESS, 1 when FAILED.
    Create(BranchCreateArgs),
    /// Drop and re-create the branch from its template, then deploy again (a new patch set).
    Reset(BranchResetArgs),
    /// Every branch of the environment with its status.
    List(BranchListArgs),
    /// One branch: id, database, template, labels, created, expires, status and error.
    Show(BranchShowArgs),
    /// Drop a branch (ending its sessions) and its record; or every branch with --all.
    Delete(BranchDeleteArgs),
    /// Reconcile: drop branches not in the live list, past their TTL, or interrupted.
    Gc(BranchGcArgs),
}

#[derive(Debug, Args)]
pub struct BranchCreateArgs {
    /// The branch id from CI (`feature/ABC-12`, `1234`); sanitised into the database name.
    pub id: String,
    /// The template to stamp from.
    #[arg(long)]
    pub template: String,
    /// Migration sources to apply after stamping, in order (e.g. the master changelog, then
    /// the candidate's).
    #[arg(long = "source", value_name = "PATH")]
    pub sources: Vec<String>,
    /// Time to live (e.g. 72h); `gc` drops the branch afterwards. Default: `branches.ttl`.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// A label `key=value` (repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BranchResetArgs {
    pub id: String,
    /// New sources (default: the ones of the last deployment).
    #[arg(long = "source", value_name = "PATH")]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BranchListArgs {
    /// Only branches of this template.
    #[arg(long)]
    pub template: Option<String>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BranchShowArgs {
    pub id: String,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BranchDeleteArgs {
    /// The branch to delete (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every branch pgplane manages in the environment (with --match: those whose id or
    /// database matches). Databases pgplane does not manage are never touched.
    #[arg(long)]
    pub all: bool,
    /// A pattern with `*` and `?`, matched against the database name and the id.
    #[arg(long = "match", requires = "all", value_name = "PATTERN")]
    pub pattern: Option<String>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BranchGcArgs {
    /// A live branch id (e.g. an open merge request); repeat for several. With --keep or
    /// --keep-file, every branch not listed is dropped.
    #[arg(long = "keep", value_name = "ID")]
    pub keep: Vec<String>,
    /// A file with live branch ids, one per line (# comments and blank lines ignored).
    #[arg(long)]
    pub keep_file: Option<PathBuf>,
    /// Show what would be dropped; drop nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept an empty live list (it drops every branch).
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("parameter {s:?} is not NAME=VALUE (e.g. loadReference=true)")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Apply pending migrations (under a per-target lock; re-running applies nothing twice).
    Up(UpArgs),
    /// Show each migration's state per target; changes nothing.
    Status(MigrateArgs),
    /// Check that applied migrations were not changed and the source is consistent;
    /// changes nothing. Exit code 1 when a target is invalid.
    Validate(MigrateArgs),
    /// Undo applied Liquibase changesets, newest first, as Liquibase's `rollback-count`,
    /// `rollback` (to a tag) and `rollback-to-date` do.
    ///
    /// Each changeset is undone by its `<rollback>` (or `--rollback` lines), or else by
    /// Liquibase's automatic inverse of each change (createTable → dropTable, addColumn →
    /// dropColumn, …), in one transaction with the removal of its DATABASECHANGELOG row.
    /// If any changeset to undo has neither, nothing runs and each is named with its
    /// file:line. SQL folders have no down migrations and cannot be rolled back. With -f,
    /// --module is required.
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: MigrateArgs,
    /// Liquibase: apply changesets up to and including the one that carries TAG (its
    /// `tagDatabase`, or the ledger's row tagged so), as Liquibase's `update-to-tag`.
    #[arg(long, value_name = "TAG", conflicts_with = "target")]
    pub to_tag: Option<String>,
    /// SQL folder: apply versioned migrations up to and including VERSION (repeatable
    /// migrations still run).
    #[arg(long, value_name = "VERSION")]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("how_far").required(true).args(["count", "to_tag", "to_date"])))]
pub struct RollbackArgs {
    #[command(flatten)]
    pub common: MigrateArgs,
    /// Roll back the last N changesets (Liquibase's `rollback-count`).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Roll back everything applied after the changeset that carries TAG (Liquibase's
    /// `rollback --tag`; a changeset that only tags is rolled back too, as Liquibase does).
    #[arg(long, value_name = "TAG")]
    pub to_tag: Option<String>,
    /// Roll back everything applied after DATE (`YYYY-MM-DD[ HH:MM[:SS]]`, compared with
    /// DATEEXECUTED as stored; Liquibase's `rollback-to-date`).
    #[arg(long, value_name = "DATE")]
    pub to_date: Option<String>,
    /// Print the SQL that would run (rollback statements and ledger deletes); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Migrate this database directly (needs --source); the manifest is not read.
    #[arg(long, conflicts_with_all = ["module", "tenant"], requires = "source")]
    pub url: Option<String>,
    /// The migration source: a SQL folder or a Liquibase changelog. With -f it replaces
    /// the module's `migrations:` (needs --module).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Liquibase's search path: includes and files are found from here and FILENAME is
    /// the changelog's path relative to it (default: the changelog's folder).
    #[arg(long, requires = "source")]
    pub search_path: Option<PathBuf>,
    /// Target schema with --url (default: public). Tenants always use their own schema.
    #[arg(long, requires = "url")]
    pub schema: Option<String>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Only this module (default: every module with `migrations:`).
    #[arg(long)]
    pub module: Option<String>,
    /// Only this tenant of a per-tenant module (default: all its tenants).
    #[arg(long, requires = "module")]
    pub tenant: Option<String>,
    /// Liquibase contexts to run, comma-separated (default: all changesets).
    #[arg(long, value_delimiter = ',')]
    pub contexts: Vec<String>,
    /// Liquibase label expression, e.g. `v2 and !slow` (default: all changesets).
    #[arg(long)]
    pub labels: Option<String>,
    /// How many targets (tenants) to migrate at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Run again a migration that failed outside a transaction (check the target first).
    #[arg(long)]
    pub retry_failed: bool,
    /// How long to wait for another migration of the same target.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Liquibase's changelog table (default databasechangelog).
    #[arg(long)]
    pub changelog_table: Option<String>,
    /// Liquibase's lock table (default databasechangeloglock).
    #[arg(long)]
    pub changelog_lock_table: Option<String>,
    /// pgplane's history table for SQL folders (default pgplane_schema_history).
    #[arg(long)]
    pub history_table: Option<String>,
    /// A Liquibase changelog property, `NAME=VALUE` (repeatable); wins over the
    /// changelog's own `<property>` and the manifest's `migrations.properties`.
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_property)]
    pub property: Vec<(String, String)>,
    /// Let Liquibase `executeCommand` changes run their program (refused otherwise).
    #[arg(long)]
    pub allow_execute_command: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The manifest file.
    #[arg(short = 'f', long = "file", default_value = "pgplane.yaml")]
    pub file: PathBuf,
    /// Environment (sandbox) name; defaults to the manifest's `environment:`.
    #[arg(long, env = "PGPLANE_ENV")]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Print JSON: {"changes": N, "actions": [{"kind", "target", "sql", ...}], ...}.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Include drops of orphaned objects (as `apply --prune` would run).
    #[arg(long)]
    pub prune: bool,
    /// Include adoption of existing unmanaged objects (as `apply --adopt` would run).
    #[arg(long)]
    pub adopt: bool,
    /// Read every database afresh instead of reusing apply's cached observations (which
    /// are used only while the database's pg_shdepend fingerprint is unchanged).
    #[arg(long)]
    pub deep: bool,
}

/// Options of every command that changes servers.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for another pgplane operation on the same server (e.g. 30s, 5m).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Provision only; do not run the `migrations:` of modules afterwards.
    #[arg(long)]
    pub skip_migrations: bool,
    /// Drop managed objects that are no longer in the manifest. Never touches objects
    /// pgplane does not manage.
    #[arg(long)]
    pub prune: bool,
    /// Take over existing objects with target names that pgplane does not manage.
    #[arg(long)]
    pub adopt: bool,
    /// The secret key was replaced on purpose: record it as this control database's key
    /// and set every managed role's password anew (deployments need new credentials).
    /// Without it, apply stops when the key is not the one the passwords derive from.
    #[arg(long)]
    pub new_secret_key: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest: which servers to read, and the desired state to compare with.
    #[arg(short = 'f', long = "file", default_value = "pgplane.yaml")]
    pub file: PathBuf,
    /// Only this environment (default: every environment pgplane manages).
    #[arg(long)]
    pub env: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Read every database afresh instead of reusing apply's cached observations.
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialFormat {
    /// postgresql://USER:PASSWORD@HOST:PORT/DATABASE, usable by psql as is.
    Url,
    /// PGHOST=... lines plus DATABASE_URL, for env files.
    Env,
    /// One JSON object.
    Json,
    /// A Kubernetes Secret manifest (stringData).
    K8sSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleChoice {
    /// The owner (or tenant) role: owns the storage, migrates it.
    Owner,
    /// The read-only role (needs `readonly_role: true`).
    Readonly,
}

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// The module, as named in the manifest.
    #[arg(required_unless_present = "branch_readonly")]
    pub module: Option<String>,
    /// The role of `branches.readonly_role` instead of a module's (reads every branch and
    /// template; the URL names the first template on its server, else `postgres`).
    #[arg(long, conflicts_with_all = ["module", "tenant", "role"])]
    pub branch_readonly: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// The tenant, for schema-per-tenant and database-per-tenant modules.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Which role's credentials.
    #[arg(long, value_enum, default_value_t = RoleChoice::Owner)]
    pub role: RoleChoice,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CredentialFormat::Url)]
    pub format: CredentialFormat,
    /// Change the password first (the old one stops working).
    #[arg(long)]
    pub rotate: bool,
    /// Name of the Kubernetes Secret (default: ENV-MODULE[-TENANT][-readonly]-db, or
    /// ENV-branch-readonly-db).
    #[arg(long)]
    pub k8s_name: Option<String>,
    /// Kubernetes namespace for the Secret.
    #[arg(long)]
    pub k8s_namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// What must hold; repeat for several (all must hold). `server`: accepts logins (a
    /// connection and SELECT 1 succeed). `database:NAME`: exists, allows connections and can
    /// be connected to. `role:NAME`: exists and can log in. `sql:QUERY`: the first column of
    /// the first row is true (boolean true, a non-zero number, or t/true/yes/on/1), run in
    /// the target database. `migrated:MODULE`: every migration of the module is applied (needs
    /// -f). `branch:ID`: the branch's
    /// deployment status is SUCCESS (needs -f).
    #[arg(long = "for", value_name = "CONDITION", required = true, value_parser = crate::wait::parse_condition)]
    pub conditions: Vec<crate::wait::Condition>,
    /// The server (and target database) as a connection URL. -f takes precedence over
    /// DATABASE_URL from the environment.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Use a manifest's server instead, with its admin URL (the embedded server when the
    /// manifest has no `servers:`): the module's server with --module, else the first.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Environment, for the module's database name; defaults to the manifest's `environment:`.
    #[arg(long, env = "PGPLANE_ENV")]
    pub env: Option<String>,
    /// With -f: check in this module's database (`database` and `schema-per-tenant`
    /// storage), e.g. dev_registry for module registry in env dev.
    #[arg(long, requires = "file")]
    pub module: Option<String>,
    /// Give up after this long (e.g. 30s, 5m).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Check this often (e.g. 250ms, 2s). A connection attempt gets as long, at least 1s.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print JSON: {"ok", "elapsed_ms", "conditions": [{"condition", "ok", "observed",
    /// "since_ms"}], "diagnostics": [{"sql", "columns", "rows", "error"}]}.
    #[arg(long)]
    pub json: bool,
    /// On timeout, run this query in the target database (the admin database while that
    /// one is missing) and show its rows (repeatable).
    #[arg(long, value_name = "SQL")]
    pub diagnose_sql: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Initialise (first time) and start the embedded server; no-op when it runs.
    Start {
        /// TCP port on 127.0.0.1 (default: the saved one, or a free one the first time).
        #[arg(long)]
        port: Option<u16>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the embedded server.
    Stop,
    /// Show whether the embedded server runs (exit 3 when it does not).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the admin connection URL of the embedded server.
    Url,
}

/// `250ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    pgplane_core::manifest::parse_duration(s)
}

// Clap's argument types become the library's request types here, so the operations never
// see clap.
impl From<&ManifestArgs> for crate::ops::ManifestArgs {
    fn from(a: &ManifestArgs) -> Self {
        crate::ops::ManifestArgs { file: a.file.clone(), env: a.env.clone() }
    }
}

impl From<&SchemaTarget> for crate::schema::SchemaTarget {
    fn from(a: &SchemaTarget) -> Self {
        crate::schema::SchemaTarget {
            db: a.db.clone(),
            branch: a.branch.clone(),
            url: a.url.clone(),
            manifest: (&a.manifest).into(),
        }
    }
}

impl From<WaitArgs> for crate::wait::WaitArgs {
    fn from(a: WaitArgs) -> Self {
        crate::wait::WaitArgs {
            conditions: a.conditions,
            url: a.url,
            file: a.file,
            env: a.env,
            module: a.module,
            timeout: a.timeout,
            interval: a.interval,
            json: a.json,
            diagnose_sql: a.diagnose_sql,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        // Too long to count in seconds: an error, not an overflow.
        assert!(parse_duration("18446744073709551615d").is_err_and(|e| e.contains("too long")));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
