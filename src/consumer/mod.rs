//! Consumers: fixed pools of threads, one pool per channel.
//!
//! The jobs pool runs tasks behind the replica's token bucket; the canceller
//! pool writes cancellations. Both ends of each channel run independently:
//! publishers never wait on consumers and consumers never poll the database
//! for work.

pub mod canceller;
pub mod jobs;

use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError, select};

use crate::db::{DbError, PooledConn};
use crate::outage::Backoff;
use crate::service::Shared;

/// Whether `stop` has closed.
pub(crate) fn closed(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected))
}

/// Runs one write until it lands, retrying with backoff through database
/// failures, and gives up only when `stop` closes (`None`). Used for writes
/// that must not be lost, like a `DONE!`.
pub(crate) fn write_until<T>(
    shared: &Shared,
    what: &str,
    stop: &Receiver<()>,
    mut write: impl FnMut(&mut PooledConn) -> Result<T, DbError>,
) -> Option<T> {
    // Short delays: a finished job's write should land soon after the
    // database is back; one try a second at most is no load.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let result = shared.db.conn().and_then(|mut conn| write(&mut conn));
        match result {
            Ok(v) => return Some(v),
            Err(e) => {
                shared.db.health().failed(what, &e);
                crate::metrics::Metrics::add(&shared.metrics.db_retries, 1);
                let delay: Duration = backoff.next_delay();
                select! {
                    recv(stop) -> _ => return None,
                    default(delay) => {}
                }
            }
        }
    }
}
