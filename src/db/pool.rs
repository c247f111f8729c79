//! The connection pool, and the [`Connection`] every statement runs on.
//!
//! [`Db`] is an r2d2 pool of blocking `mysql` connections to `DATABASE_URL`
//! (default `mysql://root@127.0.0.1:3306/background_processing`), of at most
//! `DB_POOL_SIZE` connections (default: enough for every thread), cheap to
//! clone (every thread holds one). Statements never touch a `mysql::Conn`
//! directly: they go through [`Connection`]'s methods, which turn every
//! failure into a [`DbError`] in one place and read rows without panicking
//! on a row of the wrong shape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Row};

use super::error::{DbError, DbResult};
use super::health::DbHealth;
use super::retry::{GaveUp, Retry};
use crate::metrics::Metrics;

/// How long a checkout waits for a connection before failing.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to the server, as statements use it.
pub struct Connection {
    conn: Conn,
}

impl Connection {
    /// Wraps an open connection.
    pub fn new(conn: Conn) -> Connection {
        Connection { conn }
    }

    /// Opens a connection with `opts`.
    pub fn open(opts: impl Into<Opts>) -> DbResult<Connection> {
        Ok(Connection::new(Conn::new(opts.into())?))
    }

    fn checked<T>(&mut self, result: mysql::Result<T>) -> DbResult<T> {
        result.map_err(DbError::from)
    }

    /// Runs `sql` (text protocol), discarding any rows.
    pub fn query_drop(&mut self, sql: impl AsRef<str>) -> DbResult<()> {
        let r = self.conn.query_drop(sql.as_ref());
        self.checked(r)
    }

    /// Runs `sql` as a prepared statement with `params`, discarding rows.
    pub fn exec_drop(&mut self, sql: impl AsRef<str>, params: impl Into<Params>) -> DbResult<()> {
        let r = self.conn.exec_drop(sql.as_ref(), params);
        self.checked(r)
    }

    /// Runs `sql` (text protocol) and maps every row with `map`.
    pub fn query_rows<T>(
        &mut self,
        sql: impl AsRef<str>,
        map: impl FnMut(Row) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let rows: mysql::Result<Vec<Row>> = self.conn.query(sql.as_ref());
        let rows = self.checked(rows)?;
        rows.into_iter().map(map).collect()
    }

    /// Runs `sql` as a prepared statement with `params` and maps every row.
    pub fn exec_rows<T>(
        &mut self,
        sql: impl AsRef<str>,
        params: impl Into<Params>,
        map: impl FnMut(Row) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let rows: mysql::Result<Vec<Row>> = self.conn.exec(sql.as_ref(), params);
        let rows = self.checked(rows)?;
        rows.into_iter().map(map).collect()
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back
    /// otherwise. If the commit fails, the transaction may or may not have
    /// landed: the caller settles that.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> DbResult<T>,
    ) -> DbResult<T> {
        self.query_drop("START TRANSACTION")?;
        match f(self) {
            Ok(v) => {
                self.query_drop("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                // A failed rollback means the connection is gone; the error
                // that matters is the first one.
                let _ = self.query_drop("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Rows changed by the last statement.
    pub fn affected_rows(&self) -> u64 {
        self.conn.affected_rows()
    }

    /// The id the last insert generated.
    pub fn last_insert_id(&self) -> u64 {
        self.conn.last_insert_id()
    }

    /// Whether the server answers.
    pub fn ping(&mut self) -> DbResult<()> {
        let r = self.conn.ping();
        self.checked(r)
    }
}

/// The `mysql` crate's own query API, for tasks that work on the database
/// (`job.db.conn()?.exec_first(...)`). The service's statements use the
/// methods above, which read rows without panicking.
impl Queryable for Connection {
    fn query_iter<Q: AsRef<str>>(
        &mut self,
        query: Q,
    ) -> mysql::Result<mysql::QueryResult<'_, '_, '_, mysql::Text>> {
        self.conn.query_iter(query)
    }

    fn prep<Q: AsRef<str>>(&mut self, query: Q) -> mysql::Result<mysql::Statement> {
        self.conn.prep(query)
    }

    fn close(&mut self, stmt: mysql::Statement) -> mysql::Result<()> {
        self.conn.close(stmt)
    }

    fn exec_iter<S, P>(
        &mut self,
        stmt: S,
        params: P,
    ) -> mysql::Result<mysql::QueryResult<'_, '_, '_, mysql::Binary>>
    where
        S: mysql::prelude::AsStatement,
        P: Into<Params>,
    {
        self.conn.exec_iter(stmt, params)
    }

    fn exec_batch<S, P, I>(&mut self, stmt: S, params: I) -> mysql::Result<()>
    where
        Self: Sized,
        S: mysql::prelude::AsStatement,
        P: Into<Params>,
        I: IntoIterator<Item = P>,
    {
        self.conn.exec_batch(stmt, params)
    }
}

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
    type Connection = Connection;
    type Error = DbError;

    fn connect(&self) -> Result<Connection, DbError> {
        Connection::open(self.opts.clone())
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), DbError> {
        conn.ping()
    }

    fn has_broken(&self, _conn: &mut Connection) -> bool {
        false
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.conn.connection_id())
    }
}

/// The pool every thread takes its connections from.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<Manager>,
    health: Arc<DbHealth>,
    metrics: Arc<Metrics>,
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
    /// Builds a pool of at most `size` connections, counting into a
    /// [`Metrics`] of its own. Connections are made lazily: this never fails
    /// because the database is down.
    pub fn new(url: &str, size: u32) -> DbResult<Db> {
        Db::with_metrics(url, size, Arc::default())
    }

    /// [`Db::new`], counting database failures into `metrics`.
    pub fn with_metrics(url: &str, size: u32, metrics: Arc<Metrics>) -> DbResult<Db> {
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
            health: Arc::new(DbHealth::new(Arc::clone(&metrics))),
            metrics,
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

    /// The counters this pool's failures go to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until the database answers, for at most `timeout`. Returns the
    /// last error when it never did, or at once the error of a server that
    /// refused the connection for a reason that will not go away.
    pub fn wait_ready(&self, timeout: Duration) -> DbResult<()> {
        let deadline = Instant::now() + timeout;
        // Start-up has its own message for a server that never answered:
        // the failures on the way are not an outage of a running service.
        let quiet = DbHealth::quiet();
        let attempt = || {
            let left = deadline.saturating_duration_since(Instant::now());
            self.pool
                .get_timeout(left.clamp(Duration::from_millis(100), Duration::from_secs(5)))
                .map_err(DbError::from)
                .and_then(|mut conn| conn.query_drop("SELECT 1"))
                .inspect_err(|e| log::debug!("database not ready yet: {e}"))
        };
        Retry::new("waiting for the database", &quiet)
            .until(deadline)
            .run(attempt)
            .map_err(GaveUp::into_error)
    }
}

/// A connection a thread keeps between statements (a checkout pings the
/// server: one round trip per statement saved), let go after a failure so
/// the next try gets a fresh, checked one.
pub struct HeldConn {
    db: Db,
    conn: Option<PooledConn>,
}

impl HeldConn {
    /// Holds nothing yet: the first statement checks one out.
    pub fn new(db: Db) -> HeldConn {
        HeldConn { db, conn: None }
    }

    /// Runs `f` on the held connection (checking one out if none is held);
    /// a failure lets the connection go.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut Connection) -> DbResult<T>) -> DbResult<T> {
        if self.conn.is_none() {
            self.conn = Some(self.db.conn()?);
        }
        let conn = self.conn.as_mut().expect("just set");
        let result = f(conn);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// The pool it takes connections from.
    pub fn db(&self) -> &Db {
        &self.db
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
