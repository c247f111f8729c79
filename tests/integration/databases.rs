//! The databases it runs on (README: Databases it runs on): TLS against a
//! private `mariadbd` that takes only TLS connections, with a throwaway CA
//! made here by the `openssl` command line; errors that will not fix
//! themselves ending start-up at once with a hint; an unreachable server
//! said at once; the start-up check that `SKIP LOCKED` skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use crate::mariadb::PrivateServer;
use crate::testdb::*;

/// Start-up that stops "at once" must stop well inside this, against a
/// `DB_CONNECT_TIMEOUT` of 30 s: a bound on the behaviour, not a benchmark.
const AT_ONCE: Duration = Duration::from_secs(5);

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need the openssl command line (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a server certificate it signed, for `localhost` and
/// 127.0.0.1; and a second CA that signed nothing.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        fs::create_dir_all(dir).unwrap();
        let ca = |name: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-subj",
                    &format!("/CN=background-processing test {name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            )
        };
        ca("ca");
        ca("other-ca");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                "server.pem",
                "-extfile",
                "server.ext",
            ],
        );
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A root session over the server's Unix socket, which
/// `require_secure_transport` lets in without TLS.
fn over_socket(server: &PrivateServer) -> Conn {
    let socket = server.dir().join("mysqld.sock");
    Conn::new(
        OptsBuilder::new()
            .socket(Some(socket.display().to_string()))
            .user(Some("root")),
    )
    .expect("root over the private server's socket")
}

fn global_status(conn: &mut Conn, name: &str) -> u64 {
    let row: Option<(String, String)> = conn
        .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .unwrap();
    row.and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

/// The env of a command against `url` that must give up within seconds
/// if it gives up at all.
fn env_30s(url: &str) -> Vec<(String, String)> {
    service_env(url, &[("DB_CONNECT_TIMEOUT", "30s")])
}

/// `args` against `url` stops within [`AT_ONCE`], exit 1, saying `says`.
fn stops_at_once(args: &[&str], url: &str, says: &[&str]) -> Outcome {
    let out = run_cmd(args, &env_30s(url), Duration::from_secs(40));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.elapsed < AT_ONCE,
        "took {:?} with DB_CONNECT_TIMEOUT=30s:\n{}",
        out.elapsed,
        out.describe()
    );
    for s in says {
        assert!(
            out.stderr.contains(s),
            "stderr should say {s:?}:\n{}",
            out.describe()
        );
    }
    assert!(
        !out.stderr.contains("DriverError") && !out.stderr.contains("MySqlError {"),
        "no debug structs in the logs:\n{}",
        out.describe()
    );
    out
}

#[test]
fn tls_verify_identity_against_a_server_that_requires_it() {
    let dir = std::env::temp_dir().join(format!(
        "bp-tls-certs-{}-{}",
        std::process::id(),
        free_port()
    ));
    let certs = Certs::make(&dir);
    let server = PrivateServer::start(
        "tls",
        &[
            format!("--ssl-ca={}", certs.path("ca.pem")),
            format!("--ssl-cert={}", certs.path("server.pem")),
            format!("--ssl-key={}", certs.path("server.key")),
            // 127.0.0.1 stays itself: as `localhost` the datadir's
            // anonymous user would shadow app@%.
            "--skip-name-resolve".to_string(),
        ],
    );
    server.exec("CREATE DATABASE bp_tls");
    server.create_user("app", "app-pw", "bp_tls");
    server.exec("SET GLOBAL require_secure_transport = ON");
    let mut admin = over_socket(&server);
    let base = format!("mysql://app:app-pw@127.0.0.1:{}/bp_tls", server.port());
    // No prefer_socket=false: on loopback TLS must not move to the socket.
    let tls = format!(
        "{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        certs.path("ca.pem")
    );

    // Without TLS parameters: refused by the server, and said so.
    stops_at_once(
        &["run"],
        &base,
        // (MariaDB refuses it as access denied.)
        &["1045", "only TLS connections", "ssl-mode"],
    );

    // A CA that did not sign the server's certificate: the reason is named.
    let wrong = format!(
        "{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        certs.path("other-ca.pem")
    );
    stops_at_once(&["run"], &wrong, &["UnknownIssuer", "check ssl-ca"]);

    // A wrong password, over TLS: 1045 with its hint, for every command.
    let bad_pw = tls.replace("app-pw", "wrong");
    for cmd in ["run", "stats", "migrate"] {
        stops_at_once(
            &[cmd],
            &bad_pw,
            &["1045", "check the user and password in DATABASE_URL"],
        );
    }
    // The database exists, its tables do not yet.
    stops_at_once(&["run"], &tls, &["migrate"]);

    // The library's connections, from the same URL: TLS on every session.
    let accepted_before = global_status(&mut admin, "Ssl_finished_accepts");
    let migrated = run_cmd(&["migrate"], &env_30s(&tls), Duration::from_secs(60));
    assert_eq!(migrated.code, Some(0), "{}", migrated.describe());
    let db = background_processing::db::Db::new(&tls, 1).expect("the TLS URL");
    let cipher: Option<(String, String)> = db
        .conn()
        .expect("a TLS session")
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .unwrap();
    let cipher = cipher.map(|(_, v)| v).unwrap_or_default();
    assert!(
        !cipher.is_empty(),
        "Ssl_cipher is empty: the session is not encrypted"
    );

    // The service: runs a job, on TCP sessions only (a socket session would
    // show as localhost), which the server lets in only with TLS.
    let mut svc = Service::spawn(&["run"], &env_30s(&tls));
    admin
        .query_drop("INSERT INTO bp_tls.jobs (object_id, sleep) VALUES (10, 0)")
        .unwrap();
    wait_until_or(
        Duration::from_secs(30),
        "the job DONE! over TLS",
        || {
            admin
                .query_first::<Option<String>, _>("SELECT status FROM bp_tls.jobs")
                .unwrap()
                .flatten()
                .as_deref()
                == Some("DONE!")
        },
        || svc.logs(),
    );
    let hosts: Vec<String> = admin
        .query("SELECT HOST FROM information_schema.PROCESSLIST WHERE USER = 'app'")
        .unwrap();
    assert!(!hosts.is_empty());
    assert!(
        hosts.iter().all(|h| h.starts_with("127.0.0.1:")),
        "every session of the service over TCP: {hosts:?}"
    );
    let accepted = global_status(&mut admin, "Ssl_finished_accepts") - accepted_before;
    assert!(
        accepted as usize > hosts.len(),
        "{accepted} TLS handshakes for {} sessions (and migrate's, and the library's)",
        hosts.len()
    );
    svc.sigterm();
    let status = svc.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", svc.logs());
    drop(admin);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_database_or_a_missing_table_stops_start_up_at_once() {
    let missing = TestDb::reserve("no_such_database");
    for cmd in ["run", "stats"] {
        stops_at_once(
            &[cmd],
            missing.url(),
            &["1049", "create the database or run migrate"],
        );
    }
    let empty = TestDb::empty("no_tables");
    for cmd in ["run", "stats"] {
        stops_at_once(&[cmd], empty.url(), &["jobs", "migrate"]);
    }
}

#[test]
fn an_unreachable_server_is_said_at_once_then_waited_for() {
    let url = format!(
        "mysql://root@127.0.0.1:{}/x?prefer_socket=false",
        free_port()
    );
    for cmd in ["run", "stats", "migrate"] {
        let svc = Service::spawn(&[cmd], &env_30s(&url));
        wait_until_or(
            AT_ONCE,
            "the first failure logged",
            || svc.stderr().contains("waiting up to 30s for it"),
            || svc.logs(),
        );
        let mut svc = svc;
        assert!(svc.is_running(), "it waits: {}", svc.logs());
    }
}

#[test]
fn skip_locked_skips_on_this_server() {
    let db = TestDb::new("skip_locked");
    db.exec("INSERT INTO workers (name, host, pid, version) VALUES ('probe-test', 'h', 1, 'test')");
    let pool = background_processing::db::Db::new(db.url(), 3).unwrap();
    let (mut holder, mut reader) = (pool.conn().unwrap(), pool.conn().unwrap());
    background_processing::db::probe::skip_locked_check(&mut holder, &mut reader, "probe-test")
        .expect("SKIP LOCKED skips a locked row here");
    // Nothing was written, and no lock is left behind.
    assert_eq!(db.count("1"), 0);
    let mut other = pool.conn().unwrap();
    background_processing::db::probe::skip_locked_check(&mut other, &mut holder, "probe-test")
        .expect("again, with the sessions swapped");
}

fn free_port() -> u16 {
    crate::mariadb::free_port()
}
