//! The machinery every loop of the service runs on, with no knowledge of
//! jobs: named and watched threads ([`threads`]), the ticker loop with its
//! backoff ([`tick`]), bounded channels' room ([`channel`]), this replica's
//! heartbeat record ([`liveness`]), stop signals ([`shutdown`]) and a small
//! HTTP server ([`http_server`]).

pub mod channel;
pub mod http_server;
pub mod liveness;
pub mod shutdown;
pub mod threads;
pub mod tick;
