//! A small synchronous HTTP/1.1 server, for `/healthz`, `/readyz`,
//! `/metrics` and the dashboard: one thread accepting, a fixed pool of
//! threads answering, one request per connection.
//!
//! Written here, on `std::net` with `httparse` (the request parser `hyper`
//! uses), because what a request may cost must be bounded before any of it
//! is trusted: `tiny_http` allocates a request's declared `Content-Length`
//! when it drains the body, so one `Content-Length: 99999999999` aborted the
//! process. Here the head is read into a buffer of at most
//! [`Limits::head`] bytes (431 beyond it), a body only when declared and at
//! most [`Limits::body`] bytes (413 beyond it; chunked bodies are refused,
//! 411), every read and write has a timeout, and when every answering thread
//! is busy a new connection gets 503 at once. Any request gets an answer or
//! a closed connection; nothing a client sends can panic or stall the
//! server for long.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::threads::spawn;

/// What one request may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line and headers, in bytes.
    pub head: usize,
    /// The body, in bytes (0: no request may have one).
    pub body: usize,
    /// Each read and each write of a connection.
    pub timeout: Duration,
    /// Threads answering requests.
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head: 16 * 1024,
            body: 0,
            timeout: Duration::from_secs(5),
            workers: 2,
        }
    }
}

/// A request, as the handler sees it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string (after `?`), as sent.
    pub query: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (empty without one).
    pub body: Vec<u8>,
    /// Who sent it.
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers besides `Content-Length` and `Connection` (a later one of a
    /// name replaces an earlier one).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// Sets a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn write_to(&self, out: &mut impl Write, head_only: bool) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            // Values come from the service, but never let one split a line.
            let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        out.write_all(head.as_bytes())?;
        if !head_only {
            out.write_all(&self.body)?;
        }
        out.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; stopped by [`Server::stop`] or on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` and answers with `handler`; threads are named after
    /// `name` (`http`, `http-1`, ...).
    pub fn start(
        name: &str,
        addr: SocketAddr,
        limits: Limits,
        handler: Handler,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded::<TcpStream>(limits.workers * 4);
        let mut threads = Vec::with_capacity(limits.workers + 1);
        for i in 0..limits.workers {
            let (rx, handler) = (rx.clone(), Arc::clone(&handler));
            threads.push(spawn(format!("{name}-{i}"), move || {
                answer_all(&rx, limits, &handler)
            }));
        }
        let halt = Arc::clone(&stop);
        threads.push(spawn(name.to_string(), move || {
            accept(&listener, &tx, limits, &halt)
        }));
        Ok(Server {
            addr,
            stop,
            threads,
        })
    }

    /// The address it listens on (the real port, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets the answering threads finish, joins them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

/// How often the accepting thread looks at the stop flag when nobody
/// connects.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

fn accept(listener: &TcpListener, tx: &Sender<TcpStream>, limits: Limits, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let _ = stream.set_read_timeout(Some(limits.timeout));
                let _ = stream.set_write_timeout(Some(limits.timeout));
                if let Err(TrySendError::Full(mut stream)) = tx.try_send(stream) {
                    let busy = Response::text(503, "busy: try again\n");
                    let _ = busy.write_to(&mut stream, false);
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE, ECONNABORTED...: not fatal; try again soon.
                log::debug!("http: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn answer_all(rx: &Receiver<TcpStream>, limits: Limits, handler: &Handler) {
    // The channel closes when the accepting thread ends (on stop).
    while let Ok(mut stream) = rx.recv() {
        let peer = stream.peer_addr().ok();
        let response = match read_request(&mut stream, limits) {
            Ok(mut request) => {
                request.peer = peer;
                let head_only = request.method == "HEAD";
                Some((handler(&request), head_only))
            }
            Err(Some(refusal)) => Some((refusal, false)),
            Err(None) => None,
        };
        if let Some((response, head_only)) = response {
            let _ = response.write_to(&mut stream, head_only);
        }
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Reads one request; `Err(Some(..))` is the answer to a request that is
/// refused, `Err(None)` a connection that went away (or timed out) first.
fn read_request(stream: &mut TcpStream, limits: Limits) -> Result<Request, Option<Response>> {
    let mut buf = vec![0u8; limits.head];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(Some(Response::text(
                431,
                "request head too large: the request line and headers must fit in 16 KiB\n",
            )));
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => n,
        };
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut request = head(&parsed)?;
                let length = body_length(&request, limits)?;
                request.body = read_body(stream, &buf[head_len..filled], length)?;
                return Ok(request);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(Response::text(431, "too many headers\n")));
            }
            Err(e) => return Err(Some(Response::text(400, format!("bad request: {e}\n")))),
        }
    }
}

/// The request line and headers of a parsed head.
fn head(parsed: &httparse::Request) -> Result<Request, Option<Response>> {
    let bad = |what: &str| Some(Response::text(400, format!("bad request: {what}\n")));
    let method = parsed.method.ok_or_else(|| bad("no method"))?;
    let target = parsed.path.ok_or_else(|| bad("no path"))?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| bad("a header is not UTF-8"))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        peer: None,
    })
}

/// How long the body is, if it may be read at all.
fn body_length(request: &Request, limits: Limits) -> Result<usize, Option<Response>> {
    if request.header("transfer-encoding").is_some() {
        return Err(Some(Response::text(
            411,
            "chunked bodies are not accepted: send Content-Length\n",
        )));
    }
    let Some(length) = request.header("content-length") else {
        return Ok(0);
    };
    match length.parse::<u64>() {
        Ok(n) if n <= limits.body as u64 => Ok(n as usize),
        Ok(_) => Err(Some(Response::text(
            413,
            format!("body too large: at most {} bytes\n", limits.body),
        ))),
        Err(_) => Err(Some(Response::text(400, "bad request: Content-Length\n"))),
    }
}

/// The body: what came with the head, then the rest from the stream.
fn read_body(
    stream: &mut TcpStream,
    already: &[u8],
    length: usize,
) -> Result<Vec<u8>, Option<Response>> {
    let mut body = already[..already.len().min(length)].to_vec();
    if body.len() < length {
        let mut rest = vec![0u8; length - body.len()];
        stream.read_exact(&mut rest).map_err(|_| None)?;
        body.extend(rest);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> Server {
        let handler: Handler = Arc::new(|r: &Request| {
            Response::text(
                200,
                format!("{} {} {} {}", r.method, r.path, r.query, r.body.len()),
            )
        });
        let limits = Limits {
            body: 100,
            timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        Server::start("http-test", "127.0.0.1:0".parse().unwrap(), limits, handler).unwrap()
    }

    fn send(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(raw);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_and_bounds_what_a_request_may_cost() {
        let server = serve();
        let a = server.addr();
        let ok = send(a, b"GET /healthz?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("GET /healthz x=1 0"), "{ok}");
        let post = send(a, b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(post.ends_with("POST /a  3"), "{post}");
        let huge = send(
            a,
            b"GET /healthz HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        );
        assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
        let chunked = send(a, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(chunked.starts_with("HTTP/1.1 411"), "{chunked}");
        let long = format!("GET /?{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
        assert!(send(a, long.as_bytes()).starts_with("HTTP/1.1 431"));
        assert!(send(a, b"NOT HTTP\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert_eq!(send(a, b"GET / HTTP/1.1\r\nHost"), "", "hung up: closed");
        let head = send(a, b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
        server.stop();
    }
}
