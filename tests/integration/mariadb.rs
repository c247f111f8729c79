//! A throwaway `mariadbd` of the test's own: its own datadir, port and
//! socket under a temporary directory, so a test can make the server
//! read-only, stall it, kill it, give it TLS or make it a Galera node
//! without touching the shared server. Killed and removed on drop.
//!
//! Needs Debian's `mariadb-server` (for `mariadbd` and `mariadb-install-db`);
//! `.ci/run` installs it through `scripts/mariadb`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};

use crate::testdb::{Server, tail};

/// Where Debian puts the server.
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A free TCP port on loopback (bound and released: another process could
/// take it in between, which a test would see at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A running private server.
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateServer {
    /// Initialises a datadir and starts `mariadbd` on a free port, with
    /// `extra` server options; returns once it accepts connections.
    pub fn start(name: &str, extra: &[String]) -> PrivateServer {
        let dir = std::env::temp_dir().join(format!(
            "bp-mariadb-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        install(&dir);
        let mut server = PrivateServer {
            port: free_port(),
            dir,
            args: extra.to_vec(),
            child: None,
        };
        server.launch();
        server
    }

    /// Starts the server process on the existing datadir.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let d = &self.dir;
        let log = fs::File::create(d.join("mariadbd.out")).expect("server log");
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=200",
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {MARIADBD} (install Debian's mariadb-server): {e}")
            });
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if Conn::new(self.opts()).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "private mariadbd exited ({status}):\n{}",
                    tail(&self.error_log(), 30)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "private mariadbd not ready within {within:?}:\n{}",
                    tail(&self.error_log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (datadir under `data/`, logs beside it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server, as the test fixtures name servers (root, no password).
    pub fn server(&self) -> Server {
        Server::at(
            &format!("root@127.0.0.1:{}", self.port),
            Some("prefer_socket=false"),
        )
    }

    /// A URL for database `db` as `user`.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "mysql://{user}:{password}@127.0.0.1:{}/{db}?prefer_socket=false",
            self.port
        )
    }

    fn opts(&self) -> OptsBuilder {
        let url = format!("mysql://root@127.0.0.1:{}/?prefer_socket=false", self.port);
        OptsBuilder::from_opts(Opts::from_url(&url).expect("private server URL"))
            .tcp_connect_timeout(Some(Duration::from_secs(2)))
    }

    /// A root connection.
    pub fn admin(&self) -> Conn {
        Conn::new(self.opts()).expect("root connection to the private server")
    }

    /// Runs `sql` as root.
    pub fn exec(&self, sql: &str) {
        self.admin()
            .query_drop(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Creates `user` (password `pw`) with every privilege on `db` and none
    /// beyond: no SUPER or READ ONLY ADMIN, so `read_only` applies to it.
    pub fn create_user(&self, user: &str, pw: &str, db: &str) {
        self.exec(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'"));
        self.exec(&format!("GRANT ALL ON `{db}`.* TO '{user}'@'%'"));
    }

    /// The server's error log.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid().expect("server running");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("(private server kept in {})", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh datadir under `dir/data`, root without a password.
fn install(dir: &Path) {
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run mariadb-install-db (install mariadb-server): {e}"));
    assert!(
        out.status.success(),
        "mariadb-install-db failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
