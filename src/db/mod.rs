//! The database: an r2d2 pool of blocking `mysql` connections, and every SQL
//! statement the service sends.
//!
//! Statements live in the submodules, one function per statement, named noun
//! first (`job_claim_many`, `job_cancel`, `worker_heartbeat`). Every
//! transition of a job is conditional on the state it expects (status and
//! lease) and returns how many rows it changed, so a replica that no longer
//! owns a job cannot change its row.

pub mod jobs;
pub mod migrate;
pub mod stats;
pub mod workers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};
use thiserror::Error;

use crate::outage::DbHealth;

/// A database failure.
#[derive(Debug, Error)]
pub enum DbError {
    // The messages carry their cause inline, and no variant reports it
    // again as `source`: printed with its chain, an error would otherwise
    // repeat the same text.
    /// No connection could be had from the pool in time.
    #[error("no database connection: {0}")]
    Pool(r2d2::Error),
    /// The server or the connection failed.
    #[error("{0}")]
    Mysql(mysql::Error),
    /// The schema is missing or not what the service needs.
    #[error("{0}")]
    Schema(String),
    /// Another live replica uses this replica's name.
    #[error("{0}")]
    NameInUse(String),
}

impl From<r2d2::Error> for DbError {
    fn from(e: r2d2::Error) -> DbError {
        DbError::Pool(e)
    }
}

impl From<mysql::Error> for DbError {
    fn from(e: mysql::Error) -> DbError {
        DbError::Mysql(e)
    }
}

impl DbError {
    /// The server answered with an error (a constraint, a lock wait timeout,
    /// a missing table): it is reachable. Anything else means it could not be
    /// reached or the connection broke.
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            DbError::Mysql(mysql::Error::MySqlError(_))
                | DbError::Schema(_)
                | DbError::NameInUse(_)
        )
    }
}

/// How long a checkout waits for a connection before failing.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// Result of a database call.
pub type DbResult<T> = Result<T, DbError>;

/// The r2d2 connection manager.
///
/// Written here rather than taken from `r2d2_mysql` because that one pings
/// the server every time a connection goes back to the pool: one extra round
/// trip per statement. A broken connection is instead detected by the
/// failing statement, and r2d2 validates idle connections on checkout.
#[derive(Clone, Debug)]
pub struct Manager {
    opts: Opts,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = mysql::Error;

    fn connect(&self) -> Result<Conn, mysql::Error> {
        Conn::new(self.opts.clone())
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql::Error> {
        conn.ping()
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}

/// The pool every thread takes its connections from.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<Manager>,
    health: Arc<DbHealth>,
}

/// A pooled connection.
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Connection options from a URL, with timeouts that turn a vanished server
/// into an error instead of a hang.
pub fn opts_from_url(url: &str) -> DbResult<OptsBuilder> {
    let opts =
        Opts::from_url(url).map_err(|e| DbError::Schema(format!("bad DATABASE_URL: {e}")))?;
    Ok(OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(2)))
        .read_timeout(Some(Duration::from_secs(30)))
        .write_timeout(Some(Duration::from_secs(30)))
        .tcp_keepalive_time_ms(Some(10_000))
        // A conditional write that meets a row locked elsewhere gives up soon
        // and is retried, rather than holding a thread for 50 s.
        // READ COMMITTED: a claim's locking read then locks the rows it
        // takes and no gaps, so claims, starts and completions running at
        // once do not wait for each other. Every transition is a single
        // conditional statement, which needs nothing stronger.
        .init(vec![
            "SET SESSION innodb_lock_wait_timeout = 5",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ]))
}

impl Db {
    /// Builds a pool of at most `size` connections. Connections are made
    /// lazily: this never fails because the database is down.
    pub fn new(url: &str, size: u32) -> DbResult<Db> {
        let manager = Manager {
            opts: opts_from_url(url)?.into(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            // Fail a checkout soon when the server is gone, so the outage is
            // noticed (and logged) within about a second, not after 30 s.
            .connection_timeout(CHECKOUT_TIMEOUT)
            .idle_timeout(Some(Duration::from_secs(300)))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(Db {
            pool,
            health: Arc::new(DbHealth::default()),
        })
    }

    /// A connection from the pool. r2d2 pings a connection before handing
    /// it out, so success means the server answers: it ends an outage in
    /// [`DbHealth`]. Callers report failures, naming what they were doing.
    pub fn conn(&self) -> DbResult<PooledConn> {
        let conn = self.pool.get()?;
        self.health.ok();
        Ok(conn)
    }

    /// Outage tracking shared by everything that uses this pool.
    pub fn health(&self) -> &DbHealth {
        &self.health
    }

    /// Waits until the database answers, for at most `timeout`. Returns the
    /// last error when it never did.
    pub fn wait_ready(&self, timeout: Duration) -> DbResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = self
                .pool
                .get_timeout(left.clamp(Duration::from_millis(100), Duration::from_secs(5)))
                .map_err(DbError::from)
                .and_then(|mut c| Ok(c.query_drop("SELECT 1")?));
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    log::debug!("database not ready yet: {e}");
                    std::thread::sleep(Duration::from_millis(250).min(deadline - Instant::now()));
                }
            }
        }
    }
}

/// `id IN (1,2,3)` text for a list of ids: ids are integers, so inlining them
/// is safe, and it keeps a batch to one statement of any size.
pub(crate) fn id_list(ids: impl IntoIterator<Item = u64>) -> String {
    let mut s = String::new();
    for id in ids {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}
