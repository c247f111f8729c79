//! How a command reaches the database: waiting for it up to
//! `DB_CONNECT_TIMEOUT`, or giving up at once on a refusal, with its hint.

use crate::config::Config;
use crate::db::{Db, DbError, ErrorKind};

/// A pool of one connection for a command, once the server answers (up to
/// `DB_CONNECT_TIMEOUT`; at once when it refuses for good, with what to do).
pub(super) fn connect(config: &Config) -> anyhow::Result<Db> {
    let db = Db::new(&config.database_url, 1)?;
    db.wait_ready(config.db_connect_timeout)
        .map_err(|e| refused_or_unreachable(config, &e))?;
    Ok(db)
}

/// The error of a command that could not reach the database, as start-up
/// words it: a refusal with its hint, or how long it waited.
pub(super) fn refused_or_unreachable(config: &Config, e: &DbError) -> anyhow::Error {
    let url = config.redacted_url();
    if e.kind() == ErrorKind::Fatal {
        anyhow::anyhow!("database at {url}: {}", e.with_hint())
    } else {
        anyhow::anyhow!(
            "database at {url} not reachable within DB_CONNECT_TIMEOUT ({}): {e}",
            crate::config::show_duration(config.db_connect_timeout)
        )
    }
}
