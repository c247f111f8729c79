//! The [`Connection`] every statement runs on.
//!
//! Statements never touch a `mysql::Conn` directly: they go through these
//! methods, which turn every failure into a [`DbError`] in one place, read
//! rows without panicking on a row of the wrong shape, and mark the
//! connection broken when a failure leaves it in an unknown state: a
//! statement that timed out or failed mid-reply (its answer may still
//! arrive, and would be read as the answer to the next statement), a reply
//! of the wrong shape, a transaction left open. The pool never hands a
//! broken connection out again, and its server session is killed
//! ([`super::pool`]), so a statement abandoned by the client cannot land
//! later.

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, Params, Row};

use super::error::{DbError, DbResult, ErrorKind};

/// A connection to the server, as statements use it.
pub struct Connection {
    conn: Conn,
    /// The server's id for this session (`CONNECTION_ID()`).
    id: u32,
    /// A failure left the connection in an unknown state.
    broken: bool,
    /// A transaction was begun and not yet committed or rolled back.
    in_transaction: bool,
}

impl Connection {
    /// Wraps an open connection.
    pub fn new(conn: Conn) -> Connection {
        Connection {
            id: conn.connection_id(),
            conn,
            broken: false,
            in_transaction: false,
        }
    }

    /// Opens a connection with `opts`.
    pub fn open(opts: impl Into<Opts>) -> DbResult<Connection> {
        Ok(Connection::new(Conn::new(opts.into())?))
    }

    /// The server's id for this session.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether this connection must not be used again (see the module docs).
    pub fn is_broken(&self) -> bool {
        self.broken || self.in_transaction
    }

    /// The error, noting whether it broke the connection.
    fn failed(&mut self, e: DbError) -> DbError {
        if e.kind() == ErrorKind::Outage {
            self.broken = true;
        }
        e
    }

    fn checked<T>(&mut self, result: mysql::Result<T>) -> DbResult<T> {
        result.map_err(|e| self.failed(DbError::from(e)))
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
        self.mapped(rows, map)
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
        self.mapped(rows, map)
    }

    fn mapped<T>(
        &mut self,
        rows: Vec<Row>,
        map: impl FnMut(Row) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        rows.into_iter()
            .map(map)
            .collect::<DbResult<Vec<T>>>()
            .map_err(|e| self.failed(e))
    }

    /// Begins a transaction.
    pub fn begin(&mut self) -> DbResult<()> {
        self.query_drop("START TRANSACTION")?;
        self.in_transaction = true;
        Ok(())
    }

    /// Commits the transaction. If this fails, the transaction may or may
    /// not have landed: the caller settles that (on another connection; this
    /// one is broken). A conflict is the exception: the server rolled the
    /// transaction back ([`DbError::is_conflict`]), so nothing landed and
    /// the connection is fine.
    pub fn commit(&mut self) -> DbResult<()> {
        let result = self.query_drop("COMMIT");
        if result.as_ref().is_ok() || result.as_ref().is_err_and(DbError::is_conflict) {
            self.in_transaction = false;
        }
        result
    }

    /// Rolls the transaction back; a connection that cannot is broken.
    pub fn rollback(&mut self) {
        if self.query_drop("ROLLBACK").is_ok() {
            self.in_transaction = false;
        }
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back
    /// otherwise.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> DbResult<T>,
    ) -> DbResult<T> {
        self.begin()?;
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.id)
    }
}

/// The `mysql` crate's own query API, for tasks that work on the database
/// (`job.db.conn()?.exec_first(...)`). The service's statements use the
/// methods above, which read rows without panicking. A failure that leaves
/// the connection in an unknown state breaks it here too.
impl Queryable for Connection {
    fn query_iter<Q: AsRef<str>>(
        &mut self,
        query: Q,
    ) -> mysql::Result<mysql::QueryResult<'_, '_, '_, mysql::Text>> {
        match self.conn.query_iter(query) {
            Ok(result) => Ok(result),
            Err(e) => {
                self.broken |= !matches!(e, mysql::Error::MySqlError(_));
                Err(e)
            }
        }
    }

    fn prep<Q: AsRef<str>>(&mut self, query: Q) -> mysql::Result<mysql::Statement> {
        let r = self.conn.prep(query);
        self.broken |= matches!(&r, Err(e) if !matches!(e, mysql::Error::MySqlError(_)));
        r
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
        match self.conn.exec_iter(stmt, params) {
            Ok(result) => Ok(result),
            Err(e) => {
                self.broken |= !matches!(e, mysql::Error::MySqlError(_));
                Err(e)
            }
        }
    }

    fn exec_batch<S, P, I>(&mut self, stmt: S, params: I) -> mysql::Result<()>
    where
        Self: Sized,
        S: mysql::prelude::AsStatement,
        P: Into<Params>,
        I: IntoIterator<Item = P>,
    {
        let r = self.conn.exec_batch(stmt, params);
        self.broken |= matches!(&r, Err(e) if !matches!(e, mysql::Error::MySqlError(_)));
        r
    }
}
