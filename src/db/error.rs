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
    #[error("{}", show_mysql(.0))]
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
        if self.is_tls_refused() {
            return ErrorKind::Fatal;
        }
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

    /// The server offers no TLS, and the connection asked for it.
    pub fn is_tls_not_offered(&self) -> bool {
        matches!(
            self,
            DbError::Mysql(mysql::Error::DriverError(
                mysql::DriverError::TlsNotSupported
            ))
        )
    }

    /// TLS could not be set up for a reason that will not go away: the
    /// server offers none, its certificate does not verify, or the two
    /// sides have nothing in common.
    pub fn is_tls_refused(&self) -> bool {
        match self {
            DbError::Mysql(mysql::Error::TlsError(_)) => true,
            DbError::Mysql(_) if self.is_tls_not_offered() => true,
            DbError::Mysql(e) => tls_error(e).is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::PeerIncompatible(_)
                        | rustls::Error::NoCertificatesPresented
                        | rustls::Error::UnsupportedNameType
                        | rustls::Error::AlertReceived(_)
                )
            }),
            _ => false,
        }
    }

    /// What to do about an error that will not fix itself, where the
    /// server's words do not say it.
    pub fn hint(&self) -> Option<&'static str> {
        if self.is_tls_not_offered() {
            return Some(
                "the server offers no TLS: configure TLS on it, or lower ssl-mode in \
                 DATABASE_URL (PREFERRED or DISABLED)",
            );
        }
        if self.is_tls_refused() {
            return Some(
                "check ssl-ca in DATABASE_URL: it must hold the CA that signed the server's \
                 certificate, and with ssl-mode=VERIFY_IDENTITY the certificate must name the \
                 host in DATABASE_URL",
            );
        }
        match self.code()? {
            // MariaDB answers a connection without TLS so too when it
            // requires secure transport.
            1045 | 1698 => Some(
                "check the user and password in DATABASE_URL; a server that takes only TLS \
                 connections refuses one without TLS so too: then add ssl-mode and ssl-ca",
            ),
            1044 | 1142 | 1143 => Some(
                "grant the user in DATABASE_URL the privileges on its database (see README: \
                 Databases it runs on)",
            ),
            1049 | 1146 => Some("create the database or run migrate"),
            // MySQL's ER_SECURE_TRANSPORT_REQUIRED (MariaDB answers 1045).
            3159 => Some(
                "the server requires TLS: add ssl-mode=VERIFY_IDENTITY&ssl-ca=/path/to/ca.pem \
                 (or ssl-mode=REQUIRED) to DATABASE_URL",
            ),
            _ => None,
        }
    }

    /// The error and, where there is one, its hint.
    pub fn with_hint(&self) -> String {
        match self.hint() {
            Some(hint) => format!("{self} ({hint})"),
            None => self.to_string(),
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

/// The TLS error inside an I/O error: rustls reports a handshake that
/// failed (a certificate that does not verify) as the I/O error of the read
/// or write that drove it, which the driver may report as a packet's.
fn tls_error(e: &mysql::Error) -> Option<&rustls::Error> {
    let io = match e {
        mysql::Error::IoError(io) => io,
        mysql::Error::CodecError(codec) => {
            std::error::Error::source(codec)?.downcast_ref::<std::io::Error>()?
        }
        _ => return None,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The driver's error in words: its own `Display` wraps each in the name of
/// its variant (`DriverError { .. }`), which says nothing to an operator.
fn show_mysql(e: &mysql::Error) -> String {
    if let Some(tls) = tls_error(e) {
        return format!("TLS handshake failed: {tls}");
    }
    match e {
        mysql::Error::IoError(e) => e.to_string(),
        mysql::Error::CodecError(e) => format!("bad packet from the server: {e}"),
        mysql::Error::MySqlError(e) => e.to_string(),
        mysql::Error::DriverError(e) => e.to_string(),
        mysql::Error::UrlError(e) => format!("bad DATABASE_URL: {e}"),
        mysql::Error::TlsError(e) => format!("TLS: {e}"),
        mysql::Error::FromValueError(_) | mysql::Error::FromRowError(_) => {
            "a value of an unexpected type".to_string()
        }
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
        // Access denied (1044, 1045, 1142, 1143, 1227; 1698: MariaDB's for a
        // user without a password that may only log in by socket), an unknown database
        // (1049), table (1146) or column (1054), a server that takes only
        // TLS connections (MySQL's 3159): a retry will not help.
        1044 | 1045 | 1049 | 1054 | 1142 | 1143 | 1146 | 1227 | 1698 | 3159 => ErrorKind::Fatal,
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

/// A server's error with `code`, for the tests of what it means.
#[cfg(test)]
pub(crate) fn server(code: u16) -> DbError {
    DbError::Mysql(mysql::Error::MySqlError(mysql::MySqlError {
        state: "HY000".into(),
        message: "test".into(),
        code,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn errors_that_will_not_fix_themselves_say_what_to_do() {
        assert!(
            server(1045)
                .with_hint()
                .contains("check the user and password in DATABASE_URL")
        );
        assert!(
            server(1049)
                .with_hint()
                .contains("create the database or run migrate")
        );
        assert!(
            server(1146)
                .with_hint()
                .contains("create the database or run migrate")
        );
        let no_tls = DbError::Mysql(mysql::Error::DriverError(
            mysql::DriverError::TlsNotSupported,
        ));
        assert_eq!(no_tls.kind(), ErrorKind::Fatal);
        assert!(
            no_tls.with_hint().contains("offers no TLS"),
            "{}",
            no_tls.with_hint()
        );
        assert!(!no_tls.to_string().contains("DriverError"), "{no_tls}");
    }

    #[test]
    fn a_certificate_that_does_not_verify_is_fatal_and_named() {
        let bad = DbError::Mysql(mysql::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert_eq!(bad.kind(), ErrorKind::Fatal);
        let text = bad.with_hint();
        assert!(
            text.contains("UnknownIssuer") && text.contains("ssl-ca"),
            "{text}"
        );
    }

    #[test]
    fn schema_problems_are_fatal() {
        assert_eq!(DbError::Schema("no".into()).kind(), ErrorKind::Fatal);
        assert!(!ErrorKind::Fatal.is_retryable());
    }
}
