//! Every advisory lock pgplane takes, with one key scheme.
//!
//! A lock is PostgreSQL's two-key form `(class int4, key int4)`: the class is four ASCII
//! letters read as a big-endian integer (`pgbr` = 0x70676272), the key is `0`, a job id's
//! low 31 bits, or `hashtext(text)` of a name computed by the server (so every process
//! computes the same key; collisions only make two objects wait for each other). In
//! `pg_locks` such a lock shows as `locktype = 'advisory'`, `classid = class`, `objid =
//! key`, `objsubid = 2`.
//!
//! | class | key | where | held by |
//! |---|---|---|---|
//! | `pgap` | 0 | control db | the one mutator (apply, adopt, rotate) |
//! | `pgcm` | 0 | control db | a migration of the control schema (transaction lock) |
//! | `pgop` | job id | control db | the worker running the job's current attempt |
//! | `pgld` | env | control db | the elected leader of an environment |
//! | `pgbr` | env/branch | control db | any operation on one branch |
//! | `pgtp` | env/template | control db | copies (shared) vs a rebuild's swap (exclusive) |
//! | `pgtb` | env/template | control db | one build of a template at a time |
//! | `pgtc` | env/template | control db | counting a template's branches (transaction lock) |
//! | `pgmg` | schema.ledger | target db | one migration run per ledger |
//! | `pgsq` | `env/ENV`, a job key | control db | queueing: an environment's backlog count, a key's exclusivity (transaction locks) |
//! | `pgtn` | env/tenant | control db | any operation on one registered tenant (add, upgrade, disable, remove) |
//! | `pgep` | group/topic/partition | control db | the one consumer of an event partition |
//! | `pgem` | group/topic | control db | every live consumer of a group and stream, shared (they count themselves) |
//! | `pgrl` | group/topic | control db | the one relay publishing a stream's outbox to Kafka |
//!
//! Session locks live as long as the connection that took them: a process that dies
//! releases them at once, which is how readers tell a running job from a dead one.

use tokio_postgres::GenericClient;

/// A lock class: four ASCII letters as a big-endian `int4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class(pub i32);

const fn class(name: &[u8; 4]) -> Class {
    Class(i32::from_be_bytes(*name))
}

pub const APPLY: Class = class(b"pgap");
pub const CONTROL_MIGRATE: Class = class(b"pgcm");
pub const JOB: Class = class(b"pgop");
pub const LEADER: Class = class(b"pgld");
pub const BRANCH: Class = class(b"pgbr");
pub const TEMPLATE: Class = class(b"pgtp");
pub const TEMPLATE_BUILD: Class = class(b"pgtb");
pub const TEMPLATE_CAP: Class = class(b"pgtc");
pub const MIGRATION: Class = class(b"pgmg");
pub const SUBMIT: Class = class(b"pgsq");
pub const TENANT: Class = class(b"pgtn");
pub const EVENT_PARTITION: Class = class(b"pgep");
pub const EVENT_MEMBER: Class = class(b"pgem");
pub const EVENT_RELAY: Class = class(b"pgrl");

/// The second half of a lock: a number, or a name the server hashes with `hashtext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Int(i32),
    Name(String),
}

/// One advisory lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub class: Class,
    pub key: Key,
}

impl Lock {
    pub fn new(class: Class, key: Key) -> Lock {
        Lock { class, key }
    }

    pub fn named(class: Class, name: impl Into<String>) -> Lock {
        Lock { class, key: Key::Name(name.into()) }
    }

    /// A job's lock: its id's low 31 bits.
    pub fn job(id: i64) -> Lock {
        Lock { class: JOB, key: Key::Int(job_key(id)) }
    }

    pub fn leader(env: &str) -> Lock {
        Lock::named(LEADER, env)
    }

    /// `(class, key)` as SQL expressions over `$1`/`$2`, and the `$2` value.
    fn args(&self) -> (&'static str, Param) {
        match &self.key {
            Key::Int(k) => ("$2::int4", Param::Int(*k)),
            Key::Name(n) => ("pg_catalog.hashtext($2::text)", Param::Text(n.clone())),
        }
    }

    /// Calls `func(class, key)`; true unless it returned false (the `void` ones return true).
    /// Typed parameters: one round trip, no separate prepare (locks are taken per job).
    async fn call(&self, c: &impl GenericClient, func: &str) -> Result<bool, tokio_postgres::Error> {
        use tokio_postgres::types::Type;
        let (key, p) = self.args();
        let sql = format!("SELECT pg_catalog.{func}($1::int4, {key})::text IS DISTINCT FROM 'false'");
        let row = match &p {
            Param::Int(k) => c.query_typed(&sql, &[(&self.class.0, Type::INT4), (k, Type::INT4)]).await?,
            Param::Text(t) => c.query_typed(&sql, &[(&self.class.0, Type::INT4), (t, Type::TEXT)]).await?,
        };
        Ok(row.first().is_some_and(|r| r.get(0)))
    }

    /// Takes the session lock if it is free; true when taken.
    pub async fn try_lock(&self, c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        self.call(c, "pg_try_advisory_lock").await
    }

    /// Takes the session lock, waiting as long as it takes (bound it with `lock_timeout`
    /// or a cancel).
    pub async fn lock(&self, c: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        self.call(c, "pg_advisory_lock").await.map(|_| ())
    }

    /// Takes the lock shared, waiting.
    pub async fn lock_shared(&self, c: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        self.call(c, "pg_advisory_lock_shared").await.map(|_| ())
    }

    /// Takes the transaction-scoped lock (released at commit or rollback).
    pub async fn xact_lock(&self, c: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        self.call(c, "pg_advisory_xact_lock").await.map(|_| ())
    }

    /// Releases the session lock; false when this session did not hold it.
    pub async fn unlock(&self, c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        self.call(c, "pg_advisory_unlock").await
    }

    /// The pid of a session holding this lock in the current database, if any.
    pub async fn holder(&self, c: &impl GenericClient) -> Result<Option<i32>, tokio_postgres::Error> {
        let (key, p) = self.args();
        let sql = format!(
            "SELECT l.pid FROM pg_catalog.pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid = ($1::int4)::pg_catalog.oid AND l.objid = ({key})::pg_catalog.oid
                AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                   WHERE d.datname = pg_catalog.current_database())
              LIMIT 1"
        );
        let row = match &p {
            Param::Int(k) => c.query_opt(&sql, &[&self.class.0, k]).await?,
            Param::Text(t) => c.query_opt(&sql, &[&self.class.0, t]).await?,
        };
        Ok(row.and_then(|r| r.get(0)))
    }

    /// How many sessions of this database hold the lock (shared holders count each).
    pub async fn holders(&self, c: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
        let (key, p) = self.args();
        let sql = format!(
            "SELECT count(*) FROM pg_catalog.pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid = ($1::int4)::pg_catalog.oid AND l.objid = ({key})::pg_catalog.oid
                AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                   WHERE d.datname = pg_catalog.current_database())"
        );
        let row = match &p {
            Param::Int(k) => c.query_one(&sql, &[&self.class.0, k]).await?,
            Param::Text(t) => c.query_one(&sql, &[&self.class.0, t]).await?,
        };
        Ok(row.get(0))
    }

    /// Takes the session lock shared if no one holds it exclusively; true when taken.
    pub async fn try_lock_shared(&self, c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        self.call(c, "pg_try_advisory_lock_shared").await
    }

    /// Releases a shared session lock.
    pub async fn unlock_shared(&self, c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        self.call(c, "pg_advisory_unlock_shared").await
    }

    /// Whether this session holds the lock (its connection may have been replaced).
    pub async fn held_here(&self, c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        let (key, p) = self.args();
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.pid = pg_catalog.pg_backend_pid()
                AND l.classid = ($1::int4)::pg_catalog.oid AND l.objid = ({key})::pg_catalog.oid)"
        );
        let row = match &p {
            Param::Int(k) => c.query_one(&sql, &[&self.class.0, k]).await?,
            Param::Text(t) => c.query_one(&sql, &[&self.class.0, t]).await?,
        };
        Ok(row.get(0))
    }
}

enum Param {
    Int(i32),
    Text(String),
}

/// A job id's lock key: its low 31 bits (ids beyond 2^31 share keys with earlier ones,
/// which only matters if both run at once).
pub fn job_key(id: i64) -> i32 {
    i32::try_from(id & 0x7fff_ffff).unwrap_or(0)
}

/// The SQL condition "job `alias`.id's lock is held by some session of this database",
/// for queries over many jobs (the class is our constant, written in as a number).
pub fn job_lock_held_sql(alias: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                    AND l.classid = ({class})::pg_catalog.oid
                    AND l.objid = (({alias}.id & 2147483647)::int4)::pg_catalog.oid
                    AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                       WHERE d.datname = pg_catalog.current_database()))",
        class = JOB.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_their_letters() {
        assert_eq!(BRANCH.0, 0x7067_6272);
        assert_eq!(JOB.0, 0x7067_6f70);
        let all = [
            APPLY,
            CONTROL_MIGRATE,
            JOB,
            LEADER,
            BRANCH,
            TEMPLATE,
            TEMPLATE_BUILD,
            TEMPLATE_CAP,
            MIGRATION,
            SUBMIT,
            TENANT,
            EVENT_PARTITION,
            EVENT_MEMBER,
            EVENT_RELAY,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b, "two lock classes share a number");
            }
        }
    }

    #[test]
    fn job_keys_stay_positive() {
        assert_eq!(job_key(7), 7);
        assert_eq!(job_key(0x1_0000_0005), 5);
        assert!(job_key(i64::MAX) >= 0);
    }
}
