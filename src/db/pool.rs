//! The connection pool.
//!
//! [`Db`] is an r2d2 pool of blocking `mysql` connections to `DATABASE_URL`
//! (default `mysql://root@127.0.0.1:3306/background_processing`), of at most
//! `DB_POOL_SIZE` connections (default: enough for every thread), cheap to
//! clone (every thread holds one). A statement without an answer for
//! `DB_STATEMENT_TIMEOUT` (default 30s) fails; lock waits are set shorter,
//! so they fail as lock waits first. A connection left in an unknown state
//! ([`Connection::is_broken`]) never goes back into use, and its server
//! session is killed before the next checkout returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql::{Opts, OptsBuilder};

use super::conn::Connection;
use super::error::{DbError, DbResult, ErrorKind};
use super::health::DbHealth;
use super::retry::{GaveUp, Retry};
use crate::config::{Config, DatabaseUrl, SslMode};
use crate::metrics::Metrics;

/// How long a checkout waits for a connection before failing.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default for `DB_STATEMENT_TIMEOUT`.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pool's connections may wait, and where they go.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Where the tables live (`DATABASE_URL`).
    pub url: String,
    /// At most this many connections (`DB_POOL_SIZE`).
    pub pool_size: u32,
    /// A statement without an answer for this long is abandoned
    /// (`DB_STATEMENT_TIMEOUT`).
    pub statement_timeout: Duration,
}

impl DbConfig {
    /// A pool of `pool_size` connections to `url`, with the default
    /// statement timeout.
    pub fn new(url: &str, pool_size: u32) -> DbConfig {
        DbConfig {
            url: url.to_string(),
            pool_size,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

impl From<&Config> for DbConfig {
    fn from(c: &Config) -> Self {
        DbConfig {
            url: c.database_url.clone(),
            pool_size: c.db_pool_size,
            statement_timeout: c.db_statement_timeout,
        }
    }
}

/// How long a session waits for a lock before its statement fails (and is
/// retried): below the statement timeout, so a lock wait is reported as one
/// (error 1205), not as a vanished server. Row locks (`innodb_lock_wait_
/// timeout`) at most 5 s, table metadata locks (`lock_wait_timeout`, an
/// `ALTER TABLE` queued behind a long transaction) at most 10 s.
fn lock_waits(statement_timeout: Duration) -> (u64, u64) {
    let secs = statement_timeout.as_secs();
    ((secs / 3).clamp(1, 5), (secs / 2).clamp(1, 10))
}

/// Connection options from a URL, with timeouts that turn a vanished server
/// into an error instead of a hang.
pub fn opts_from_url(url: &str) -> DbResult<ConnectOpts> {
    opts_for(&DbConfig::new(url, 1))
}

/// Connection options for `cfg`: what `DATABASE_URL` says (read by
/// [`DatabaseUrl`], TLS included), with the service's timeouts and session
/// settings.
pub fn opts_for(cfg: &DbConfig) -> DbResult<ConnectOpts> {
    let url = DatabaseUrl::parse(&cfg.url)
        .map_err(|expected| DbError::Schema(format!("bad DATABASE_URL: expected {expected}")))?;
    let (row_locks, table_locks) = lock_waits(cfg.statement_timeout);
    let settings = |opts: OptsBuilder| -> Opts {
        opts.tcp_connect_timeout(Some(Duration::from_secs(2)))
            .read_timeout(Some(cfg.statement_timeout))
            .write_timeout(Some(cfg.statement_timeout))
            .tcp_keepalive_time_ms(Some(10_000))
            // READ COMMITTED: a claim's locking read then locks the rows it
            // takes and no gaps, so claims, starts and completions running at
            // once do not wait for each other. Every transition is a single
            // conditional statement, which needs nothing stronger.
            .init(vec![
                format!("SET SESSION innodb_lock_wait_timeout = {row_locks}"),
                format!("SET SESSION lock_wait_timeout = {table_locks}"),
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
            ])
            .into()
    };
    Ok(ConnectOpts {
        opts: settings(url.opts()),
        fallback: (url.ssl_mode() == SslMode::Preferred).then(|| settings(url.plain_opts())),
    })
}

/// How to open a connection: the options, and for `ssl-mode=PREFERRED`
/// the plain ones to fall back to when the server offers no TLS.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    opts: Opts,
    fallback: Option<Opts>,
}

impl ConnectOpts {
    /// Opens a connection.
    pub fn open(&self) -> DbResult<Connection> {
        match (Connection::open(self.opts.clone()), &self.fallback) {
            (Err(e), Some(plain)) if e.is_tls_not_offered() => {
                log::debug!("the server offers no TLS: connecting without (ssl-mode=PREFERRED)");
                Connection::open(plain.clone())
            }
            (result, _) => result,
        }
    }

    /// The same options with `f` applied (to the fallback too).
    pub fn map(&self, f: impl Fn(OptsBuilder) -> OptsBuilder) -> ConnectOpts {
        let apply = |o: &Opts| -> Opts { f(OptsBuilder::from_opts(o.clone())).into() };
        ConnectOpts {
            opts: apply(&self.opts),
            fallback: self.fallback.as_ref().map(apply),
        }
    }

    /// The options (with TLS, if asked for).
    pub fn opts(&self) -> &Opts {
        &self.opts
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
    opts: ConnectOpts,
    /// Server sessions of connections dropped as broken, to be killed.
    abandoned: Arc<Abandoned>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = DbError;

    fn connect(&self) -> Result<Connection, DbError> {
        self.opts.open()
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), DbError> {
        conn.ping()
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        if conn.is_broken() {
            self.abandoned.push(conn.id());
            return true;
        }
        false
    }
}

/// The server sessions of connections the pool dropped as broken. Until it
/// is killed, such a session may still run the statement the client gave
/// up on (it may be waiting for a lock, or its bytes may be held up on the
/// way), and would then change rows after the client read them back; and
/// it keeps a server thread. So the next checkout kills them all first, and
/// waits until they are gone.
#[derive(Debug, Default)]
struct Abandoned {
    ids: Mutex<Vec<u32>>,
    /// How many are waiting, read without the lock on the hot path.
    pending: AtomicUsize,
}

impl Abandoned {
    fn push(&self, id: u32) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.push(id);
        self.pending.store(ids.len(), Ordering::SeqCst);
    }

    /// Kills every abandoned session through `conn` and waits until they
    /// are gone. While one thread does, the others wait for it: no thread
    /// reads rows back while a session that may still change them lives.
    fn reap(&self, conn: &mut Connection) -> DbResult<()> {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.is_empty() {
            return Ok(());
        }
        for &id in ids.iter() {
            match conn.query_drop(format!("KILL CONNECTION {id}")) {
                Ok(()) => log::debug!("killed the server session {id} of a broken connection"),
                // 1094: unknown thread id: it is gone already.
                Err(e) if e.code() == Some(1094) => {}
                Err(e) if e.is_server_error() => {
                    log::warn!("could not kill the server session {id} of a broken connection: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        wait_gone(conn, &ids)?;
        ids.clear();
        self.pending.store(0, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits (up to [`KILL_WAIT`]) until none of `ids` is in the process list.
fn wait_gone(conn: &mut Connection, ids: &[u32]) -> DbResult<()> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let left: Vec<u64> = conn.query_rows(
            format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({})",
                id_list(ids.iter().map(|&id| u64::from(id)))
            ),
            super::row::first,
        )?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            log::warn!("killed server sessions still ending after {KILL_WAIT:?}: {left:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a checkout waits for killed sessions to end.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The pool every thread takes its connections from.
#[derive(Clone)]
pub struct Db {
    /// `DATABASE_URL`, password redacted, for messages.
    url: Arc<str>,
    pool: r2d2::Pool<Manager>,
    manager: Manager,
    health: Arc<DbHealth>,
    metrics: Arc<Metrics>,
}

/// A pooled connection.
pub type PooledConn = r2d2::PooledConnection<Manager>;

impl Db {
    /// Builds a pool of at most `size` connections, counting into a
    /// [`Metrics`] of its own. Connections are made lazily: this never fails
    /// because the database is down.
    pub fn new(url: &str, size: u32) -> DbResult<Db> {
        Db::connect(&DbConfig::new(url, size), Arc::default())
    }

    /// A pool for `cfg`, counting database failures into `metrics`.
    pub fn connect(cfg: &DbConfig, metrics: Arc<Metrics>) -> DbResult<Db> {
        let manager = Manager {
            opts: opts_for(cfg)?,
            abandoned: Arc::default(),
        };
        Ok(Db {
            url: crate::config::redact_url(&cfg.url).into(),
            pool: pool(manager.clone(), cfg.pool_size),
            manager,
            health: Arc::new(DbHealth::new(Arc::clone(&metrics))),
            metrics,
        })
    }

    /// A pool of one connection of its own, sharing this one's options,
    /// health and counters: for a thread that must never wait behind the
    /// others (the heartbeat: tasks that use the pool cannot starve it).
    pub fn dedicated(&self) -> Db {
        self.dedicated_with(self.manager.clone())
    }

    /// [`Db::dedicated`], for a batch writer whose session never waits for
    /// a row lock (MariaDB; MySQL waits its minimum, 1 s): a plain batch
    /// write that meets a locked row fails at once, and is done again
    /// skipping locked rows ([`crate::db::jobs::Locks`]).
    pub fn dedicated_without_lock_waits(&self) -> Db {
        let mut init = self.manager.opts.opts().get_init();
        init.push("SET SESSION innodb_lock_wait_timeout = 0".to_string());
        let manager = Manager {
            opts: self.manager.opts.map(|o| o.init(init.clone())),
            abandoned: Arc::clone(&self.manager.abandoned),
        };
        self.dedicated_with(manager)
    }

    fn dedicated_with(&self, manager: Manager) -> Db {
        Db {
            url: Arc::clone(&self.url),
            pool: pool(manager.clone(), 1),
            manager,
            health: Arc::clone(&self.health),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// A connection from the pool. r2d2 pings a connection before handing
    /// it out, so success means the server answers: it ends an outage in
    /// [`DbHealth`]. Callers report failures, naming what they were doing.
    pub fn conn(&self) -> DbResult<PooledConn> {
        let mut conn = self.pool.get()?;
        self.manager.abandoned.reap(&mut conn)?;
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
    /// refused the connection for a reason that will not go away (a wrong
    /// password, an unknown database, TLS that does not verify). The first
    /// failure to reach it is logged at once, saying how long it waits.
    pub fn wait_ready(&self, timeout: Duration) -> DbResult<()> {
        let deadline = Instant::now() + timeout;
        // Start-up has its own message for a server that never answered:
        // the failures on the way are not an outage of a running service.
        let quiet = DbHealth::quiet();
        let mut told = false;
        let attempt = || {
            // A connection of its own rather than a checkout: the pool
            // reports a failed connect only as text, in which an access
            // denied cannot be told from a server that is away.
            let result = self.manager.opts.open().and_then(|mut conn| {
                self.manager.abandoned.reap(&mut conn)?;
                conn.query_drop("SELECT 1")
            });
            match &result {
                Err(e) if e.kind() == ErrorKind::Outage && !told => {
                    told = true;
                    log::warn!(
                        "database at {} not reachable yet ({e}); waiting up to {} for it \
                         (DB_CONNECT_TIMEOUT)",
                        self.url,
                        crate::config::show_duration(timeout)
                    );
                }
                Err(e) => log::debug!("database not ready yet: {e}"),
                Ok(()) => {}
            }
            result
        };
        Retry::new("waiting for the database", &quiet)
            .give_up_on_fatal()
            .until(deadline)
            .run(attempt)
            .map_err(GaveUp::into_error)
    }
}

fn pool(manager: Manager, size: u32) -> r2d2::Pool<Manager> {
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // Fail a checkout soon when the server is gone, so the outage is
        // noticed (and logged) within about a second, not after 30 s.
        .connection_timeout(CHECKOUT_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(manager)
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
