//! A throwaway `mariadbd` of the test's own: its own datadir, port and
//! socket under a temporary directory, so a test can make the server
//! read-only, stall it, kill it, give it TLS or make it a Galera node
//! without touching the shared server. Killed and removed on drop.
//!
//! Needs Debian's `mariadb-server` (for `mariadbd` and `mariadb-install-db`);
//! `.ci/run` installs it through `scripts/mariadb`.
//!
//! [`GaleraCluster`] starts several of them as the nodes of one MariaDB
//! Galera cluster on this machine (each its own datadir, client port,
//! socket, Galera, IST and SST ports); that needs Debian's `galera-4` and
//! `rsync` too (and `ss`, from `iproute2`), which `.ci/run` installs.

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
    /// The account the server runs as (`--user`).
    user: String,
    child: Option<Child>,
}

impl PrivateServer {
    /// Initialises a datadir and starts `mariadbd` on a free port, with
    /// `extra` server options; returns once it accepts connections.
    pub fn start(name: &str, extra: &[String]) -> PrivateServer {
        let mut server = PrivateServer::prepare(name, extra, Datadir::Installed, "root");
        server.launch();
        server
    }

    /// A server not started yet: its directory, its port, its datadir
    /// (initialised, or left empty for a Galera node that receives its
    /// data by state transfer), run as `user` when the tests run as root
    /// (the directory is then that account's).
    fn prepare(name: &str, extra: &[String], datadir: Datadir, user: &str) -> PrivateServer {
        let dir = std::env::temp_dir().join(format!(
            "bp-mariadb-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let user = if is_root() { user } else { "" };
        if datadir == Datadir::Installed {
            install(&dir, user);
        }
        if !user.is_empty() && user != "root" {
            chown_all(&dir, user);
        }
        PrivateServer {
            port: free_port(),
            dir,
            args: extra.to_vec(),
            user: user.to_string(),
            child: None,
        }
    }

    /// Starts the server process on the existing datadir; returns once it
    /// accepts connections.
    pub fn launch(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(60));
    }

    /// Starts the server process, without waiting for it.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let d = &self.dir;
        let log = fs::File::create(d.join("mariadbd.out")).expect("server log");
        let user = (!self.user.is_empty()).then(|| format!("--user={}", self.user));
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args(user)
            .args([
                "--bind-address=127.0.0.1",
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

    /// A root connection, if the server takes one.
    pub fn admin_opt(&self) -> Option<Conn> {
        Conn::new(self.opts()).ok()
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

/// What a new server's datadir starts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Datadir {
    /// Initialised by `mariadb-install-db`.
    Installed,
    /// Empty: a Galera joiner gets it from a donor.
    Empty,
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `dir` and everything under it to `user` (and its group).
fn chown_all(dir: &Path, user: &str) {
    let name = std::ffi::CString::new(user).expect("user name");
    // SAFETY: getpwnam(3) with a valid C string; the record is read at
    // once, before any other call could reuse it.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "no account {user:?} to run mariadbd as (Debian's mariadb-server creates `mysql`)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    fn walk(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        if path.is_dir() {
            for entry in fs::read_dir(path).expect("read dir") {
                walk(&entry.expect("dir entry").path(), uid, gid);
            }
        }
    }
    walk(dir, uid, gid);
}

/// A fresh datadir under `dir/data`, root without a password, its files
/// `user`'s (empty: the current user's).
fn install(dir: &Path, user: &str) {
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args((!user.is_empty()).then(|| format!("--user={user}")))
        .output()
        .unwrap_or_else(|e| panic!("cannot run mariadb-install-db (install mariadb-server): {e}"));
    assert!(
        out.status.success(),
        "mariadb-install-db failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// A Galera cluster of private servers
// ---------------------------------------------------------------------------

/// Where Debian's `galera-4` puts the provider.
pub const GALERA_PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// What a Galera cluster on this machine needs and is missing: `None` when
/// nothing is.
pub fn galera_missing() -> Option<String> {
    let on_path = |cmd: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
    };
    let mut missing = Vec::new();
    if !Path::new(GALERA_PROVIDER).is_file() {
        missing.push(format!("{GALERA_PROVIDER} (Debian's galera-4)"));
    }
    if !on_path("rsync") {
        missing.push("rsync (Debian's rsync, for the state transfer)".to_string());
    }
    if !on_path("wsrep_sst_rsync") {
        missing.push("wsrep_sst_rsync (Debian's mariadb-server)".to_string());
    }
    if !["ss", "lsof", "sockstat"].iter().any(|c| on_path(c)) {
        missing.push("ss (Debian's iproute2, which wsrep_sst_rsync uses)".to_string());
    }
    (!missing.is_empty()).then(|| {
        format!(
            "a Galera cluster needs {}: apt-get install -y galera-4 rsync iproute2 \
             (.ci/run installs them)",
            missing.join(", ")
        )
    })
}

/// One node's ports besides its client port.
#[derive(Clone, Copy, Debug)]
struct GaleraPorts {
    /// Group communication (`base_port`).
    group: u16,
    /// Incremental state transfer.
    ist: u16,
    /// Full state transfer (rsync's daemon).
    sst: u16,
}

/// A MariaDB Galera cluster of private servers on this machine, every node
/// on loopback with ports of its own; killed and removed on drop.
pub struct GaleraCluster {
    nodes: Vec<PrivateServer>,
}

impl GaleraCluster {
    /// Starts `size` nodes: the first bootstraps the cluster
    /// (`--wsrep-new-cluster`), the others join it by rsync state transfer,
    /// together. Returns once every node is synced and sees all `size`.
    /// Panics, saying what to install, if something it needs is missing.
    pub fn start(name: &str, size: usize) -> GaleraCluster {
        if let Some(missing) = galera_missing() {
            panic!("{missing}");
        }
        let ports: Vec<GaleraPorts> = (0..size)
            .map(|_| GaleraPorts {
                group: free_port(),
                ist: free_port(),
                sst: free_port(),
            })
            .collect();
        let members: Vec<String> = ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.group))
            .collect();
        let address = format!("gcomm://{}", members.join(","));
        let cluster_name = format!("bp-test-{name}-{}", std::process::id());
        let mut nodes: Vec<PrivateServer> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut args = vec![
                    "--wsrep-on=ON".to_string(),
                    format!("--wsrep-provider={GALERA_PROVIDER}"),
                    format!("--wsrep-cluster-address={address}"),
                    format!("--wsrep-cluster-name={cluster_name}"),
                    format!("--wsrep-node-name=node{}", i + 1),
                    format!("--wsrep-node-address=127.0.0.1:{}", p.group),
                    format!(
                        "--wsrep-provider-options=base_port={g};gmcast.listen_addr=tcp://127.0.0.1:{g};\
                         ist.recv_addr=127.0.0.1:{ist};gcache.size=32M",
                        g = p.group,
                        ist = p.ist
                    ),
                    format!("--wsrep-sst-receive-address=127.0.0.1:{}", p.sst),
                    "--wsrep-sst-method=rsync".to_string(),
                    "--binlog-format=ROW".to_string(),
                    "--innodb-autoinc-lock-mode=2".to_string(),
                ];
                if i == 0 {
                    args.push("--wsrep-new-cluster".to_string());
                }
                // The state transfer's rsync daemon runs as the server's
                // account: as root it would drop to `nobody`, which cannot
                // write the datadir.
                let datadir = if i == 0 {
                    Datadir::Installed
                } else {
                    Datadir::Empty
                };
                PrivateServer::prepare(&format!("{name}-node{}", i + 1), &args, datadir, "mysql")
            })
            .collect();
        nodes[0].launch();
        for node in &mut nodes[1..] {
            node.spawn();
        }
        for node in &mut nodes[1..] {
            node.wait_ready(Duration::from_secs(90));
        }
        let cluster = GaleraCluster { nodes };
        for i in 0..size {
            cluster.wait_synced(i, size, Duration::from_secs(60));
        }
        cluster
    }

    /// Node `i` (from 0).
    pub fn node(&self, i: usize) -> &PrivateServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill it.
    pub fn node_mut(&mut self, i: usize) -> &mut PrivateServer {
        &mut self.nodes[i]
    }

    /// Waits until node `i` is synced with the cluster and sees `members`
    /// nodes in its primary component.
    pub fn wait_synced(&self, i: usize, members: usize, within: Duration) {
        let node = &self.nodes[i];
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            let state = node.admin_opt().and_then(|mut c| {
                let get = |c: &mut Conn, var: &str| -> Option<String> {
                    c.query_first::<(String, String), _>(format!("SHOW STATUS LIKE '{var}'"))
                        .ok()
                        .flatten()
                        .map(|(_, v)| v)
                };
                Some((
                    get(&mut c, "wsrep_local_state_comment")?,
                    get(&mut c, "wsrep_cluster_size")?,
                    get(&mut c, "wsrep_cluster_status")?,
                ))
            });
            if let Some((state, size, status)) = &state {
                if state == "Synced" && *size == members.to_string() && status == "Primary" {
                    return;
                }
                last = format!("{state}, cluster size {size}, {status}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "galera node {} not synced in a cluster of {members} within {within:?} \
                     (last: {last}):\n{}",
                    i + 1,
                    tail(&node.error_log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `SHOW STATUS` value `var` of node `i`, if it can be read.
    pub fn status_text(&self, i: usize, var: &str) -> Option<String> {
        self.nodes[i]
            .admin_opt()
            .and_then(|mut c| {
                c.query_first::<(String, String), _>(format!("SHOW STATUS LIKE '{var}'"))
                    .ok()
                    .flatten()
            })
            .map(|(_, v)| v)
    }

    /// `SHOW STATUS` counter `var` of node `i` (0 when it cannot be read).
    pub fn status(&self, i: usize, var: &str) -> u64 {
        self.status_text(i, var)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}
