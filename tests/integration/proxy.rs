//! A TCP proxy the test controls, to put a database outage between the
//! service and MariaDB without touching the shared server.
//!
//! [`Proxy::start`] listens on `127.0.0.1:<ephemeral>` and forwards every
//! connection to an upstream address, one thread per direction of each
//! connection pair. [`Proxy::start_failover`] is given several upstreams in
//! order, and forwards each new connection to the first that accepts it,
//! as a proxy in front of a Galera cluster's nodes does (HAProxy with
//! backup servers, MaxScale, a Kubernetes Service whose endpoints follow
//! the live nodes): when a node dies, its connections break and new ones go
//! to the next node. [`Proxy::cut`] closes every open connection and, until
//! [`Proxy::restore`], closes every new one as soon as it is accepted (the
//! client sees the server hang up during the handshake, as when MySQL is
//! restarting). [`Proxy::stall`] holds every byte in both directions
//! without closing anything (a network partition, a frozen router) until
//! [`Proxy::resume`] delivers what it held. Nothing here panics on a broken
//! pipe or a reset: a failed read or write ends that pair. Dropping the
//! proxy stops the listener, closes every pair and joins every thread.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the accept loop looks at the stop flag when nobody connects.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// How long connecting upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    stopping: AtomicBool,
    cut: AtomicBool,
    stalled: AtomicBool,
    /// Open pairs by id: (client side, upstream side), clones used only to
    /// shut them down from outside.
    pairs: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Forwarding threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
    /// Connections forwarded to each upstream, in the upstreams' order.
    per_upstream: Mutex<Vec<u64>>,
}

impl State {
    fn pairs(&self) -> MutexGuard<'_, HashMap<u64, (TcpStream, TcpStream)>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts down every open pair: blocked reads return at once, so their
    /// threads end and remove the pair.
    fn close_all(&self) -> usize {
        let pairs = self.pairs();
        for (client, upstream) in pairs.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        pairs.len()
    }
}

/// A running proxy; see the module docs.
pub struct Proxy {
    addr: SocketAddr,
    upstreams: Vec<SocketAddr>,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port, forwarding to `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        Proxy::start_failover(&[upstream])
    }

    /// Listens on an ephemeral loopback port, forwarding each connection to
    /// the first of `upstreams` (`host:port`, in order) that accepts it.
    pub fn start_failover(upstreams: &[&str]) -> Proxy {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let upstreams: Vec<SocketAddr> = upstreams
            .iter()
            .map(|upstream| {
                std::net::ToSocketAddrs::to_socket_addrs(upstream)
                    .unwrap_or_else(|e| panic!("proxy upstream {upstream}: {e}"))
                    .next()
                    .unwrap_or_else(|| panic!("proxy upstream {upstream}: no address"))
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("proxy: non-blocking listener");
        let addr = listener.local_addr().expect("proxy: local address");
        let state = Arc::new(State {
            per_upstream: Mutex::new(vec![0; upstreams.len()]),
            ..State::default()
        });
        let st = Arc::clone(&state);
        let to = upstreams.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, &to, st))
            .expect("proxy: spawn acceptor");
        Proxy {
            addr,
            upstreams,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Connections forwarded to each upstream so far, in the order given.
    pub fn accepted_by_upstream(&self) -> Vec<u64> {
        self.state
            .per_upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection and refuses new ones until
    /// [`Proxy::restore`]. Returns how many connections it closed.
    pub fn cut(&self) -> usize {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
        self.state.close_all()
    }

    /// Holds every byte, both ways, on every connection (open and new) until
    /// [`Proxy::resume`]: the other side sees no answer, and no close.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Delivers what the stall held and forwards again.
    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was cut (or the
    /// upstream could not be reached).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.state.pairs().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // The acceptor is gone, so no pair is added any more.
        self.state.close_all();
        let threads = std::mem::take(&mut *self.state.threads());
        for h in threads {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstreams: &[SocketAddr], state: Arc<State>) {
    while !state.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if state.cut.load(Ordering::SeqCst) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if let Err(e) = open_pair(client, upstreams, &state) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    eprintln!("proxy: could not forward a connection to {upstreams:?}: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNABORTED, EMFILE...: not fatal for a test proxy.
                eprintln!("proxy: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Connects `client` to the first of `upstreams` that accepts and starts
/// the two forwarding threads. On error the client is closed (dropped).
fn open_pair(
    client: TcpStream,
    upstreams: &[SocketAddr],
    state: &Arc<State>,
) -> std::io::Result<()> {
    // The accepted socket may inherit non-blocking mode on some platforms.
    client.set_nonblocking(false)?;
    let _ = client.set_nodelay(true);
    let mut last_error = None;
    let mut connected = None;
    for (i, upstream) in upstreams.iter().enumerate() {
        match TcpStream::connect_timeout(upstream, UPSTREAM_CONNECT_TIMEOUT) {
            Ok(server) => {
                connected = Some((i, server));
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some((upstream, server)) = connected else {
        return Err(last_error.expect("at least one upstream was tried"));
    };
    let _ = server.set_nodelay(true);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut pairs = state.pairs();
        // A cut that came while connecting upstream wins: refuse.
        if state.cut.load(Ordering::SeqCst) || state.stopping.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        pairs.insert(id, (client.try_clone()?, server.try_clone()?));
    }
    state.accepted.fetch_add(1, Ordering::SeqCst);
    state.per_upstream.lock().unwrap_or_else(|p| p.into_inner())[upstream] += 1;
    let c2s = (client.try_clone()?, server.try_clone()?);
    let s2c = (server, client);
    let mut threads = state.threads();
    // Forget threads that already ended, so a long test does not pile them up.
    let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
        .into_iter()
        .partition(|h| h.is_finished());
    for h in done {
        let _ = h.join();
    }
    *threads = live;
    for (dir, (from, to)) in [("c2s", c2s), ("s2c", s2c)] {
        let st = Arc::clone(state);
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-{id}-{dir}"))
            .spawn(move || pump(id, from, to, &st));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                // Closing the pair ends the other direction, if it started.
                if let Some((a, b)) = state.pairs().remove(&id) {
                    let _ = a.shutdown(Shutdown::Both);
                    let _ = b.shutdown(Shutdown::Both);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Copies `from` to `to` until either side closes or fails, then closes
/// both (which ends the opposite direction too) and forgets the pair.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, state: &State) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // Stalled: hold these bytes (and, since nothing more is read, the
        // rest in the kernel's buffers) until resumed or stopped.
        while state.stalled.load(Ordering::SeqCst) && !state.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    state.pairs().remove(&id);
}
