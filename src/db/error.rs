//! Database failures, and the one place they are classified.
//!
//! Every caller decides what to do with a failed statement by its
//! [`ErrorKind`], never by reading MySQL error codes itself:
//!
//! | kind | what it means | what callers do |
//! |---|---|---|
//! | [`ErrorKind::Outage`] | the server could not be reached, or the connection broke | wait and retry; the connection is dropped, never reused |
//! | [`ErrorKind::Transient`] | the server answered with an error a retry can cure (a lock wait, a deadlock) | retry |
//! | [`ErrorKind::BadInput`] | the server refused the statement because of the row's data | fail that row (`FAILED!` with the reason), alone |
//! | [`ErrorKind::Fatal`] | will not fix itself (no schema, a name in use) | stop, saying what to do |

use thiserror::Error;

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
    /// A row did not have the columns or types the statement expects: the
    /// reply belongs to something else, or the table is not what it should be.
    #[error("unexpected row: {0}")]
    Row(String),
    /// The schema is missing or not what the service needs.
    #[error("{0}")]
    Schema(String),
    /// Another live replica uses this replica's name.
    #[error("{0}")]
    NameInUse(String),
}

/// Result of a database call.
pub type DbResult<T> = Result<T, DbError>;

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

/// What a failure says about the server and about the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server is away or the connection broke: wait it out.
    Outage,
    /// The server answered with an error a retry can cure.
    Transient,
    /// The server refused the statement because of the row's data.
    BadInput,
    /// An error that will not fix itself.
    Fatal,
}

impl ErrorKind {
    /// Whether trying again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Outage | ErrorKind::Transient)
    }
}

impl DbError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::Mysql(mysql::Error::MySqlError(e)) => code_kind(e.code),
            DbError::Schema(_) | DbError::NameInUse(_) => ErrorKind::Fatal,
            DbError::Pool(_) | DbError::Mysql(_) | DbError::Row(_) => ErrorKind::Outage,
        }
    }

    /// The MySQL error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            DbError::Mysql(mysql::Error::MySqlError(e)) => Some(e.code),
            _ => None,
        }
    }

    /// The database named in the URL does not exist (1049).
    pub fn is_unknown_database(&self) -> bool {
        self.code() == Some(1049)
    }

    /// A schema change found its work done: the column or index is already
    /// there (1060, 1061), or already gone (1091). Another replica's
    /// `migrate` got there first.
    pub fn is_schema_already_changed(&self) -> bool {
        matches!(self.code(), Some(1060 | 1061 | 1091))
    }

    /// The server answered with an error (it is reachable).
    pub fn is_server_error(&self) -> bool {
        self.kind() != ErrorKind::Outage
    }
}

/// What an error code the server answered with means.
pub fn code_kind(code: u16) -> ErrorKind {
    match code {
        // Lock wait timeout, deadlock, and the server's limit on prepared
        // statements (1461: other clients hold them all; the start batch is
        // prepared), which says nothing about the rows.
        1205 | 1213 | 1461 => ErrorKind::Transient,
        _ => ErrorKind::BadInput,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> DbError {
        DbError::Mysql(mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".into(),
            message: "test".into(),
            code,
        }))
    }

    #[test]
    fn lock_waits_and_deadlocks_are_transient() {
        assert_eq!(server(1205).kind(), ErrorKind::Transient);
        assert_eq!(server(1213).kind(), ErrorKind::Transient);
        assert!(server(1461).kind().is_retryable());
    }

    #[test]
    fn a_broken_connection_is_an_outage() {
        let e = DbError::Mysql(mysql::Error::IoError(std::io::Error::other("gone")));
        assert_eq!(e.kind(), ErrorKind::Outage);
        assert!(!e.is_server_error());
        assert_eq!(e.code(), None);
    }

    #[test]
    fn schema_problems_are_fatal() {
        assert_eq!(DbError::Schema("no".into()).kind(), ErrorKind::Fatal);
        assert!(!ErrorKind::Fatal.is_retryable());
    }
}
