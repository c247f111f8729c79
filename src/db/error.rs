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

    /// A deadlock, or on Galera a certification conflict with a transaction
    /// another node committed first (1213). Either way the server rolled the
    /// whole transaction back, so nothing of it landed, even when this was
    /// the answer to its `COMMIT`: it is retried, not settled as in doubt.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(1213)
    }

    /// The server answered with an error (it is reachable).
    pub fn is_server_error(&self) -> bool {
        self.kind() != ErrorKind::Outage
    }
}

/// What an error code the server answered with means. Only an error about
/// the row's data is [`ErrorKind::BadInput`]; one about the server's or the
/// cluster's state is an outage or a retry, so it never fails or cancels a
/// job; an unknown code is retried.
pub fn code_kind(code: u16) -> ErrorKind {
    match code {
        // The value does not fit its column or is not valid for it: out of
        // range (1264, 1690), truncated (1265), incorrect (1292, 1366, 1367,
        // 1411), too long (1406), NULL where not allowed (1048), a datetime
        // overflow (1441), invalid JSON (3140, 4025), a duplicate key
        // (1062), a foreign key (1451, 1452), a check constraint (3819).
        1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1411 | 1441 | 1451 | 1452
        | 1690 | 3140 | 3819 | 4025 => ErrorKind::BadInput,
        // Access denied (1044, 1045, 1142, 1143, 1227), an unknown database
        // (1049), table (1146) or column (1054): a retry will not help.
        1044 | 1045 | 1049 | 1054 | 1142 | 1143 | 1146 | 1227 => ErrorKind::Fatal,
        // The server cannot take the statement now: read-only (1290, 1836),
        // a Galera node not synced or a commit the cluster refused (1047,
        // 1180), shutting down (1053), the session killed or interrupted
        // (1317, 1927), out of connections (1040, 1203), a network error
        // (1152, 1158-1161).
        1040 | 1047 | 1053 | 1152 | 1158..=1161 | 1180 | 1203 | 1290 | 1317 | 1836 | 1927 => {
            ErrorKind::Outage
        }
        // Lock wait timeout, deadlock (Galera's certification conflicts too,
        // at any statement or at COMMIT; see DbError::is_conflict),
        // too many prepared statements or transactions, and anything else.
        _ => ErrorKind::Transient,
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
    fn only_errors_about_the_data_are_bad_input() {
        for code in [1264, 1406, 1366, 1690, 1441, 3140] {
            assert_eq!(server(code).kind(), ErrorKind::BadInput, "{code}");
        }
        for code in [1290, 1836, 1047, 1180, 1040, 1927] {
            assert_eq!(server(code).kind(), ErrorKind::Outage, "{code}");
        }
        for code in [1045, 1049, 1146] {
            assert_eq!(server(code).kind(), ErrorKind::Fatal, "{code}");
        }
        assert_eq!(
            server(9999).kind(),
            ErrorKind::Transient,
            "unknown: retried"
        );
    }

    #[test]
    fn schema_problems_are_fatal() {
        assert_eq!(DbError::Schema("no".into()).kind(), ErrorKind::Fatal);
        assert!(!ErrorKind::Fatal.is_retryable());
    }
}
