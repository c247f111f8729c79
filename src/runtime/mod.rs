//! The machinery every loop of the service runs on, with no knowledge of
//! jobs: named and watched threads ([`threads`]), the ticker loop with its
//! backoff ([`tick`]), bounded channels' room ([`channel`]), this replica's
//! heartbeat record ([`liveness`]) and stop signals ([`shutdown`]).

pub mod channel;
pub mod liveness;
pub mod shutdown;
pub mod threads;
pub mod tick;
