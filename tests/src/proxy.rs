//! A tiny fault-injecting HTTP/1.1 proxy on loopback (std threads, no async), to put between an
//! HTTP client under test and a real server such as [`crate::orthanc::Orthanc`].
//!
//! The client talks to [`FaultProxy::url`] as if it were the server (the `Host` header is passed
//! on unchanged). Every connection carries exactly one request: `Connection: close` is forced in
//! the request head sent upstream and in the response head sent back, so a keep-alive client opens
//! a new connection per request and each request meets the fault set at that moment. When
//! upstream refuses the connection (a killed server), the client gets `502 Bad Gateway`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does to the next requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Answer the next `times` requests with this status, an empty body and `Connection: close`,
    /// without contacting upstream; then pass through.
    Status { code: u16, times: u32 },
    /// Wait this long before forwarding each request (until the fault is changed).
    Delay(Duration),
    /// Forward the next `times` requests, but close both sides once `bytes` bytes of the response
    /// (status line and headers included, as sent to the client) have been passed on.
    CutResponseAfter { bytes: u64, times: u32 },
    /// For the next `times` requests, close both sides once `bytes` bytes of the request (head,
    /// as rewritten, plus body) have been forwarded upstream.
    CutRequestAfter { bytes: u64, times: u32 },
    /// Answer every request whose target (the path and query of its request line) contains
    /// `target_contains` with this status, as [`Fault::Status`] does; pass the others through.
    /// Lasts until the fault is changed.
    StatusFor { target_contains: String, code: u16 },
    /// In the response to every request whose target contains `target_contains`, replace each
    /// run of bytes `find` after the head with `replace` (of the same length, so a
    /// `Content-Length` or chunk sizes stay true): a PACS that sends damaged objects. The
    /// response is read whole before it is passed on. Lasts until the fault is changed.
    RewriteFor { target_contains: String, find: Vec<u8>, replace: Vec<u8> },
}

/// What one connection does, decided when its request head has arrived.
#[derive(Clone, Debug)]
enum Action {
    Forward { delay: Option<Duration>, cut_request: Option<u64>, cut_response: Option<u64> },
    Status(u16),
    Rewrite { find: Vec<u8>, replace: Vec<u8> },
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    requests: AtomicU64,
    stop: AtomicBool,
    /// Open sockets by connection number, shut down when the proxy is dropped.
    open: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Shared {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Vec<TcpStream>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn track(&self, id: u64, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.open().entry(id).or_default().push(clone);
        }
    }

    /// Takes the action for one request (`target`: its request line's path and query), counting
    /// down a fault's `times`.
    fn next_action(&self, target: &str) -> Action {
        let mut fault = self.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pass = Action::Forward { delay: None, cut_request: None, cut_response: None };
        let (action, times) = match &mut *fault {
            Fault::None => return pass,
            Fault::StatusFor { target_contains, code } => {
                return if target.contains(target_contains.as_str()) { Action::Status(*code) } else { pass };
            }
            Fault::RewriteFor { target_contains, find, replace } => {
                return if target.contains(target_contains.as_str()) {
                    Action::Rewrite { find: find.clone(), replace: replace.clone() }
                } else {
                    pass
                };
            }
            Fault::Delay(d) => return Action::Forward { delay: Some(*d), cut_request: None, cut_response: None },
            Fault::Status { code, times } => (Action::Status(*code), times),
            Fault::CutResponseAfter { bytes, times } => {
                (Action::Forward { delay: None, cut_request: None, cut_response: Some(*bytes) }, times)
            }
            Fault::CutRequestAfter { bytes, times } => {
                (Action::Forward { delay: None, cut_request: Some(*bytes), cut_response: None }, times)
            }
        };
        if *times == 0 {
            *fault = Fault::None;
            return pass;
        }
        *times -= 1;
        if *times == 0 {
            *fault = Fault::None;
        }
        action
    }
}

/// The proxy: an accept loop on 127.0.0.1 and a thread per connection. Dropping it stops the
/// accept loop and shuts down the connections still open.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (plain HTTP).
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::None),
            requests: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new().name("fault-proxy-accept".into()).spawn(move || {
            let mut next_id = 0u64;
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                next_id += 1;
                let id = next_id;
                accept_shared.track(id, &stream);
                let conn_shared = Arc::clone(&accept_shared);
                let spawned = std::thread::Builder::new().name(format!("fault-proxy-{id}")).spawn(move || {
                    let _ = handle(&conn_shared, id, stream);
                    conn_shared.open().remove(&id);
                });
                if spawned.is_err() {
                    accept_shared.open().remove(&id);
                }
            }
        })?;
        Ok(Self { addr, shared, accept: Some(accept) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Replaces the current fault (and what is left of its `times`).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// The fault now in force (`Fault::None` once a counted fault is used up).
    pub fn fault(&self) -> Fault {
        self.shared.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Requests received so far (complete request heads), faulted ones included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for streams in self.shared.open().values() {
            for s in streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn handle(shared: &Shared, id: u64, mut client: TcpStream) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(&mut client)? else {
        return Ok(());
    };
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let target = String::from_utf8_lossy(&head);
    let target = target.split_whitespace().nth(1).unwrap_or_default();
    let (delay, cut_request, cut_response, rewrite) = match shared.next_action(target) {
        Action::Status(code) => return answer_status(client, code),
        Action::Forward { delay, cut_request, cut_response } => (delay, cut_request, cut_response, None),
        Action::Rewrite { find, replace } => (None, None, None, Some((find, replace))),
    };
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream) else {
        // Upstream down (say, a killed server): answer as a reverse proxy would.
        return answer_status(client, 502);
    };
    shared.track(id, &upstream);
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);

    // Client -> upstream: the rewritten head, what came after it, then the rest of the body.
    let mut first = rewrite_head(&head);
    first.extend_from_slice(&rest);
    let mut to_upstream = upstream.try_clone()?;
    let mut from_client = client.try_clone()?;
    let (cut_client, cut_upstream) = (client.try_clone()?, upstream.try_clone()?);
    let uploader = std::thread::spawn(move || {
        let mut budget = cut_request.unwrap_or(u64::MAX);
        let mut send = |bytes: &[u8], budget: &mut u64| -> std::io::Result<bool> {
            let n = usize::try_from(*budget).unwrap_or(usize::MAX).min(bytes.len());
            to_upstream.write_all(&bytes[..n])?;
            *budget -= n as u64;
            Ok(cut_request.is_some() && *budget == 0)
        };
        let mut cut = send(&first, &mut budget);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(false) = cut {
            match from_client.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to_upstream.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => cut = send(&buf[..n], &mut budget),
            }
        }
        if let Ok(true) = cut {
            let _ = cut_client.shutdown(Shutdown::Both);
            let _ = cut_upstream.shutdown(Shutdown::Both);
        }
    });

    // Upstream -> client: informational heads as they are, the final head with
    // `Connection: close`, then bytes until upstream closes.
    let result = relay_response(upstream.try_clone()?, &mut client, cut_response, rewrite);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = uploader.join();
    result
}

fn relay_response(
    mut upstream: TcpStream,
    client: &mut TcpStream,
    cut: Option<u64>,
    rewrite: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<()> {
    let mut budget = cut.unwrap_or(u64::MAX);
    // Sends up to the budget; true when the cut point is reached.
    let mut send = |client: &mut TcpStream, bytes: &[u8]| -> std::io::Result<bool> {
        let n = usize::try_from(budget).unwrap_or(usize::MAX).min(bytes.len());
        client.write_all(&bytes[..n])?;
        budget -= n as u64;
        Ok(cut.is_some() && budget == 0)
    };
    let mut pending = Vec::new();
    loop {
        let Some((head, rest)) = read_head_from(&mut upstream, std::mem::take(&mut pending))? else {
            return Ok(());
        };
        let informational = head.starts_with(b"HTTP/1.1 1") || head.starts_with(b"HTTP/1.0 1");
        let is_101 = head.starts_with(b"HTTP/1.1 101");
        if informational && !is_101 {
            if send(client, &head)? {
                return Ok(());
            }
            pending = rest;
            continue;
        }
        if let Some((find, replace)) = &rewrite {
            // The whole body (upstream closes after it: `Connection: close`), rewritten.
            let mut body = rest;
            upstream.read_to_end(&mut body)?;
            send(client, &rewrite_head(&head))?;
            send(client, &replace_all(&body, find, replace))?;
            return Ok(());
        }
        if send(client, &rewrite_head(&head))? || send(client, &rest)? {
            return Ok(());
        }
        break;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = upstream.read(&mut buf)?;
        if n == 0 || send(client, &buf[..n])? {
            return Ok(());
        }
    }
}

/// `bytes` with each run of `find` replaced by `replace`.
fn replace_all(bytes: &[u8], find: &[u8], replace: &[u8]) -> Vec<u8> {
    if find.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].starts_with(find) {
            out.extend_from_slice(replace);
            at += find.len();
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    out
}

/// Answers with a bare status, then drains what the client still sends (so closing does not
/// reset the connection before the client has read the answer).
fn answer_status(mut client: TcpStream, code: u16) -> std::io::Result<()> {
    let answer = format!("HTTP/1.1 {code} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", reason(code));
    client.write_all(answer.as_bytes())?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    client.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drained = 0usize;
    while drained < 256 * 1024 * 1024 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    read_head_from(stream, Vec::new())
}

/// Reads until the end of a message head (`\r\n\r\n`): returns the head (terminator included) and
/// the bytes read past it, or `None` when the stream ends first.
fn read_head_from(stream: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head without `Connection`, `Keep-Alive` or `Proxy-Connection` headers, plus
/// `Connection: close`.
fn rewrite_head(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 19);
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty());
    if let Some(start) = lines.next() {
        out.extend_from_slice(start);
        out.extend_from_slice(b"\r\n");
    }
    for line in lines {
        let name = line.split(|&b| b == b':').next().unwrap_or_default().trim_ascii();
        if [&b"connection"[..], b"keep-alive", b"proxy-connection"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}
