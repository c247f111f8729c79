//! What the database benches share: the server they use and how they
//! connect to it.

use std::time::Duration;

use mysql::{Conn, Opts, OptsBuilder};

/// The server part of `DATABASE_URL` (default `mysql://root@127.0.0.1:3306`):
/// each bench uses a database of its own there.
pub fn server() -> String {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let rest = url.strip_prefix("mysql://").unwrap_or(&url);
    format!(
        "mysql://{}",
        rest.split_once('/').map(|(a, _)| a).unwrap_or(rest)
    )
}

/// A connection to `url`; without a reachable server, `bench` stops with a
/// message saying so.
pub fn connect(url: &str, bench: &str) -> Conn {
    let opts = Opts::from_url(url).unwrap_or_else(|e| panic!("bad DATABASE_URL {url}: {e}"));
    Conn::new(OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(Duration::from_secs(5))))
        .unwrap_or_else(|e| {
            eprintln!(
                "{bench} needs a MariaDB/MySQL server at {url} ({e}): start one with \
                 scripts/mariadb or set DATABASE_URL"
            );
            std::process::exit(1)
        })
}
