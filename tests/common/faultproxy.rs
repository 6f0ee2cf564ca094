//! A fault proxy between pivault and OpenBao on loopback: it forwards HTTP/1.1 (and HTTPS,
//! terminating pivault's TLS with a certificate of its own and opening TLS to Vault), and
//! for chosen requests breaks the exchange the ways a network and a hostile or dying Vault
//! do.
//!
//! ```ignore
//! let p = FaultProxy::start(ProxyOptions::to(&vault)
//!     .rule(Match::path("/v1/pki/sign/", 2), Fault::DropAfterForward));
//! cmd.env("VAULT_ADDR", &p.addr);          // and VAULT_CACERT = p.ca with tls
//! p.log();                                  // [(n, method, path, fault)] — never bodies
//! ```
//!
//! - Requests are numbered from 1 per proxy, in the order their heads arrive;
//!   [`Match::Nth`] picks by that number, [`Match::Path`] by the n-th request whose path
//!   starts with a prefix (e.g. the second `/v1/pki/sign/`).
//! - Each forwarded request goes to Vault on a new connection (`Connection: close`), so
//!   "Vault acted" is certain once the proxy has read Vault's whole answer. Towards pivault
//!   connections are kept alive, as Vault does.
//! - [`Fault::Pause`] holds a request (before or after Vault saw it) until the test calls
//!   [`FaultProxy::release`]; [`FaultProxy::wait_paused`] tells the test which request is
//!   held, so it can SIGKILL pivault at that exact Vault boundary.
//! - `latency` delays every request before forwarding (benchmarks: 50 ms).
//! - Included with `#[path = "common/faultproxy.rs"] mod faultproxy;` next to `mod common;`
//!   (common/mod.rs belongs to the whole rig and stays untouched).
//! - std threads, one per connection: the proxy serves one pivault at a time in tests, and
//!   blocking code keeps the byte-level faults (cut a body in half, close TLS mid-answer)
//!   plain to read. rustls (already pivault's TLS stack) for both TLS sides; the proxy's
//!   certificate comes from openssl at start.

#![allow(dead_code)]

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// pivault refuses answers larger than this (src/vault/transport.rs `MAX_BODY`).
pub const PIVAULT_MAX_BODY: usize = 4 << 20;

/// What to do to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward, read Vault's whole answer, then close pivault's connection without a byte:
    /// Vault acted, the answer is lost.
    DropAfterForward,
    /// Answer this status (502/503/504) with a Vault-style error body, without forwarding.
    Status(u16),
    /// Hold the connection silent for this long, then close it; `forward`: Vault acted
    /// first.
    Stall { forward: bool, hold: Duration },
    /// Forward; answer 200 with a body that is not JSON.
    MalformedJson,
    /// Forward; answer with the first half of Vault's JSON, framed as complete.
    TruncatedJson,
    /// Forward; announce the whole body, send half, close the connection (TCP FIN; on TLS
    /// after a close_notify — "TLS closed mid-answer").
    CutMidBody,
    /// Forward; answer 200 with a JSON body larger than pivault's cap.
    Oversize,
    /// Forward; Vault's answer with `Content-Type: text/html`.
    WrongContentType,
    /// Hold until [`FaultProxy::release`], then close without answering. `after_forward`:
    /// Vault acted before the hold.
    Pause { after_forward: bool },
    /// Forward; Vault's answer with its `Date` header this many seconds off (a server
    /// whose clock is wrong, for `pivault doctor`'s clock-skew check).
    ShiftDate(i64),
}

impl Fault {
    /// A short name for logs and reports.
    pub fn name(&self) -> String {
        match self {
            Fault::DropAfterForward => "drop-after-forward".into(),
            Fault::Status(s) => format!("status-{s}"),
            Fault::Stall { forward, hold } => format!(
                "stall-{}-{}s",
                if *forward { "after" } else { "before" },
                hold.as_secs()
            ),
            Fault::MalformedJson => "malformed-json".into(),
            Fault::TruncatedJson => "truncated-json".into(),
            Fault::CutMidBody => "cut-mid-body".into(),
            Fault::Oversize => "oversize".into(),
            Fault::WrongContentType => "wrong-content-type".into(),
            Fault::Pause { after_forward } => {
                format!("pause-{}", if *after_forward { "after" } else { "before" })
            }
            Fault::ShiftDate(s) => format!("date{s:+}s"),
        }
    }

    /// Does Vault see the request?
    pub fn forwards(&self) -> bool {
        match self {
            Fault::Status(_) => false,
            Fault::Stall { forward, .. } => *forward,
            Fault::Pause { after_forward } => *after_forward,
            _ => true,
        }
    }
}

/// Which request a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The k-th request of the proxy (from 1).
    Nth(usize),
    /// The k-th request (from 1) whose path starts with the prefix.
    Path(String, usize),
    /// Every request whose path starts with the prefix.
    EveryPath(String),
}

impl Match {
    pub fn path(prefix: &str, nth: usize) -> Match {
        Match::Path(prefix.into(), nth)
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub when: Match,
    pub fault: Fault,
}

/// Where to forward and what to break.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// `http://127.0.0.1:P` or `https://127.0.0.1:P`.
    pub upstream: String,
    /// CA bundle for an https upstream.
    pub upstream_ca: Option<PathBuf>,
    /// Serve HTTPS to pivault (certificate from a CA the proxy makes: [`FaultProxy::ca`]).
    pub tls: bool,
    /// Added before forwarding every request.
    pub latency: Duration,
    pub rules: Vec<Rule>,
}

impl ProxyOptions {
    /// Forward to a rig server, with TLS towards pivault when the server has TLS.
    pub fn to(v: &crate::common::vault::Vault) -> ProxyOptions {
        ProxyOptions {
            upstream: v.addr.clone(),
            upstream_ca: v.tls_ca.clone(),
            tls: v.tls_ca.is_some(),
            ..Default::default()
        }
    }

    pub fn rule(mut self, when: Match, fault: Fault) -> ProxyOptions {
        self.rules.push(Rule { when, fault });
        self
    }
}

/// One request as the proxy logged it (no bodies, no headers).
#[derive(Debug, Clone)]
pub struct Logged {
    pub n: usize,
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
    /// Vault's status, when the proxy forwarded and Vault answered.
    pub upstream_status: Option<u16>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<Logged>,
    /// Request held by a `Pause`, and a release generation.
    paused: Option<usize>,
    released: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    latency: Mutex<Duration>,
}

/// A running proxy. Dropping it stops accepting and ends stalls and pauses.
pub struct FaultProxy {
    /// What pivault is given as `VAULT_ADDR`.
    pub addr: String,
    /// The proxy's CA (with `tls`): pivault's `VAULT_CACERT`.
    pub ca: Option<PathBuf>,
    shared: Arc<Shared>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    pub fn start(o: ProxyOptions) -> FaultProxy {
        let dir = tempfile::Builder::new()
            .prefix("pivault-faultproxy-")
            .tempdir()
            .expect("temporary directory");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        let server_tls = o.tls.then(|| server_config(dir.path()));
        let upstream = Upstream::new(&o.upstream, o.upstream_ca.as_deref());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rules: o.rules.clone(),
                ..Default::default()
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            latency: Mutex::new(o.latency),
        });
        let s = Arc::clone(&shared);
        let up = Arc::new(upstream);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let _ = tcp.set_nodelay(true);
                let s = Arc::clone(&s);
                let up = Arc::clone(&up);
                let tls = server_tls.clone();
                thread::spawn(move || {
                    let stream = match tls {
                        None => Client::Plain(tcp),
                        Some(cfg) => match rustls::ServerConnection::new(cfg) {
                            Ok(c) => Client::Tls(Box::new(rustls::StreamOwned::new(c, tcp))),
                            Err(_) => return,
                        },
                    };
                    serve(stream, &s, &up);
                });
            }
        });
        let scheme = if o.tls { "https" } else { "http" };
        FaultProxy {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca: o.tls.then(|| dir.path().join("ca.pem")),
            shared,
            port,
            _dir: dir,
        }
    }

    /// Replace the rules (request numbering goes on).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.shared.state.lock().unwrap().rules = rules;
    }

    pub fn set_latency(&self, d: Duration) {
        *self.shared.latency.lock().unwrap() = d;
    }

    /// Forget the log and restart request numbering at 1 (rule counters too).
    pub fn reset(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.log.clear();
        st.paused = None;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Requests seen since start or the last reset.
    pub fn requests(&self) -> usize {
        self.shared.state.lock().unwrap().log.len()
    }

    /// Wait until a `Pause` holds a request; its number.
    pub fn wait_paused(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if let Some(n) = st.paused {
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Let a held request go (it is closed without an answer).
    pub fn release(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.paused = None;
        st.released += 1;
        self.shared.cv.notify_all();
    }

    /// The log as text lines, for failure messages.
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|l| {
                format!(
                    "#{} {} {}{}{}",
                    l.n,
                    l.method,
                    l.path,
                    l.upstream_status
                        .map(|s| format!(" -> {s}"))
                        .unwrap_or_default(),
                    l.fault
                        .as_ref()
                        .map(|f| format!(" [{}]", f.name()))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

// --- Serving one connection ------------------------------------------------------------------

enum Client {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Client {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Client::Plain(s) => s.read(b),
            Client::Tls(s) => s.read(b),
        }
    }
}

impl Write for Client {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Client::Plain(s) => s.write(b),
            Client::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Client::Plain(s) => s.flush(),
            Client::Tls(s) => s.flush(),
        }
    }
}

impl Client {
    /// Close: on TLS with a close_notify first (an orderly TLS close in the middle of an
    /// HTTP answer), then the TCP connection.
    fn close(mut self) {
        let _ = self.flush();
        let tcp = match self {
            Client::Plain(s) => s,
            Client::Tls(mut s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                s.sock
            }
        };
        let _ = tcp.shutdown(Shutdown::Both);
    }
}

/// An HTTP/1.1 message: head lines and the decoded body.
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Head and body with `Content-Length` framing, without hop-by-hop headers; `extra`
    /// headers added.
    fn encode(&self, extra: &[(&str, &str)], body: &[u8], announced: usize) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            let k_l = k.to_ascii_lowercase();
            if [
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
            ]
            .contains(&k_l.as_str())
                || extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k))
            {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {announced}\r\n\r\n"));
        let mut b = out.into_bytes();
        b.extend_from_slice(body);
        b
    }
}

/// Reads one message from `r`, with `buf` holding bytes read past the previous one. `None`
/// on a clean EOF before any byte.
fn read_message(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    eof_body: bool,
) -> io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 16384];
        let n = r.read(&mut chunk)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF in a head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut m = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let chunked = m
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        m.body = read_chunked(r, buf)?;
    } else if let Some(len) = m
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        fill(r, buf, len)?;
        m.body = buf.drain(..len).collect();
    } else if eof_body {
        // A response without framing runs to EOF.
        r.read_to_end(buf)?;
        m.body = std::mem::take(buf);
    }
    Ok(Some(m))
}

fn fill(r: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    while buf.len() < want {
        let mut chunk = [0u8; 16384];
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF in a body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn read_chunked(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            let have = buf.len();
            fill(r, buf, have + 1)?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    let have = buf.len();
                    fill(r, buf, have + 1)?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        fill(r, buf, size + 2)?;
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve(mut client: Client, s: &Shared, up: &Upstream) {
    let mut buf = Vec::new();
    loop {
        let req = match read_message(&mut client, &mut buf, false) {
            Ok(Some(m)) => m,
            _ => return,
        };
        let mut parts = req.start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default();
        // The path only: a query could one day carry something private.
        let path = target.split('?').next().unwrap_or_default().to_string();
        let (n, fault) = {
            let mut st = s.state.lock().unwrap();
            let n = st.log.len() + 1;
            let fault = choose(&st, n, &path);
            st.log.push(Logged {
                n,
                method: method.clone(),
                path: path.clone(),
                fault: fault.clone(),
                upstream_status: None,
            });
            (n, fault)
        };
        eprintln!(
            "faultproxy: #{n} {method} {path}{}",
            fault
                .as_ref()
                .map(|f| format!(" [{}]", f.name()))
                .unwrap_or_default()
        );
        let latency = *s.latency.lock().unwrap();
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        if let Some(Fault::Pause {
            after_forward: false,
        }) = fault
        {
            hold(s, n);
            client.close();
            return;
        }
        if let Some(Fault::Status(code)) = fault {
            let body = format!(
                "{{\"errors\":[\"fault proxy: {code} instead of forwarding request {n}\"]}}\n"
            );
            let m = Message {
                start: format!("HTTP/1.1 {code} {}", reason(code)),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: Vec::new(),
            };
            if client
                .write_all(&m.encode(&[], body.as_bytes(), body.len()))
                .is_err()
            {
                return;
            }
            continue;
        }
        if let Some(Fault::Stall {
            forward: false,
            hold,
        }) = fault
        {
            stall(s, hold);
            client.close();
            return;
        }
        // Forward.
        let answer = match up.exchange(&req) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("faultproxy: #{n}: upstream failed: {e}");
                let body = format!("{{\"errors\":[\"fault proxy: upstream: {e}\"]}}");
                let m = Message {
                    start: "HTTP/1.1 502 Bad Gateway".into(),
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: Vec::new(),
                };
                let _ = client.write_all(&m.encode(&[], body.as_bytes(), body.len()));
                continue;
            }
        };
        let status: Option<u16> = answer.start.split(' ').nth(1).and_then(|c| c.parse().ok());
        s.state.lock().unwrap().log[n - 1].upstream_status = status;
        let out = match fault {
            None => answer.encode(&[], &answer.body, answer.body.len()),
            Some(Fault::DropAfterForward) => {
                client.close();
                return;
            }
            Some(Fault::Pause { .. }) => {
                hold(s, n);
                client.close();
                return;
            }
            Some(Fault::Stall { hold, .. }) => {
                stall(s, hold);
                client.close();
                return;
            }
            Some(Fault::MalformedJson) => {
                let body = b"{\"data\": {\"certificate\": <html>not json";
                answer.encode(&[("Content-Type", "application/json")], body, body.len())
            }
            Some(Fault::TruncatedJson) => {
                let half = &answer.body[..answer.body.len() / 2];
                answer.encode(&[], half, half.len())
            }
            Some(Fault::CutMidBody) => {
                let half = &answer.body[..answer.body.len() / 2];
                let _ = client.write_all(&answer.encode(&[], half, answer.body.len()));
                client.close();
                return;
            }
            Some(Fault::Oversize) => {
                let pad = "A".repeat(PIVAULT_MAX_BODY + 1024);
                let body = format!("{{\"data\":{{\"pad\":\"{pad}\"}}}}");
                answer.encode(
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                    body.len(),
                )
            }
            Some(Fault::ShiftDate(secs)) => {
                let date = http_date_shifted(secs);
                answer.encode(&[("Date", &date)], &answer.body, answer.body.len())
            }
            Some(Fault::WrongContentType) => answer.encode(
                &[("Content-Type", "text/html; charset=utf-8")],
                &answer.body,
                answer.body.len(),
            ),
            Some(Fault::Status(_)) => unreachable!("answered above"),
        };
        if client
            .write_all(&out)
            .and_then(|()| client.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Now plus `secs`, as an HTTP-date (IMF-fixdate, RFC 9110 section 5.6.7).
fn http_date_shifted(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .expect("format an HTTP date")
}

fn choose(st: &State, n: usize, path: &str) -> Option<Fault> {
    for r in &st.rules {
        let hit = match &r.when {
            Match::Nth(k) => n == *k,
            Match::Path(prefix, k) => {
                path.starts_with(prefix.as_str())
                    && st
                        .log
                        .iter()
                        .filter(|l| l.path.starts_with(prefix.as_str()))
                        .count()
                        + 1
                        == *k
            }
            Match::EveryPath(prefix) => path.starts_with(prefix.as_str()),
        };
        if hit {
            return Some(r.fault.clone());
        }
    }
    None
}

/// Hold a paused request until released (or the proxy stops).
fn hold(s: &Shared, n: usize) {
    let mut st = s.state.lock().unwrap();
    st.paused = Some(n);
    let gen = st.released;
    s.cv.notify_all();
    while st.released == gen && !s.stop.load(Ordering::SeqCst) {
        st = s.cv.wait_timeout(st, Duration::from_millis(200)).unwrap().0;
    }
}

fn stall(s: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !s.stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        500 => "Internal Server Error",
        429 => "Too Many Requests",
        _ => "Fault",
    }
}

// --- Upstream (Vault) --------------------------------------------------------------------------

struct Upstream {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    fn new(url: &str, ca: Option<&Path>) -> Upstream {
        let u = url::Url::parse(url).expect("upstream URL");
        let tls = (u.scheme() == "https").then(|| {
            let mut roots = rustls::RootCertStore::empty();
            let ca = ca.expect("an https upstream needs its CA bundle");
            for c in CertificateDer::pem_file_iter(ca).expect("read the upstream CA") {
                roots.add(c.expect("CA certificate")).expect("add CA");
            }
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(cfg)
        });
        Upstream {
            host: u.host_str().expect("upstream host").to_string(),
            port: u.port_or_known_default().expect("upstream port"),
            tls,
        }
    }

    /// One request on a new connection; Vault's whole answer.
    fn exchange(&self, req: &Message) -> io::Result<Message> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
        let _ = tcp.set_nodelay(true);
        let bytes = req.encode(&[("Connection", "close")], &req.body, req.body.len());
        let mut buf = Vec::new();
        let answer = match &self.tls {
            None => {
                let mut t = tcp;
                t.write_all(&bytes)?;
                read_message(&mut t, &mut buf, true)?
            }
            Some(cfg) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(Arc::clone(cfg), name)
                    .map_err(io::Error::other)?;
                let mut t = rustls::StreamOwned::new(conn, tcp);
                t.write_all(&bytes)?;
                read_message(&mut t, &mut buf, true)?
            }
        };
        answer.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))
    }
}

/// A CA and a certificate for 127.0.0.1/localhost, made by openssl in `dir`; rustls
/// server configuration with it.
fn server_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let sh = format!(
        r#"set -e
cd "{d}"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj "/CN=pivault fault proxy test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key \
  -out leaf.csr -subj "/CN=127.0.0.1"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext -out leaf.pem
"#,
        d = dir.display()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "making the proxy's certificate failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .expect("leaf.pem")
        .map(|c| c.expect("certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).expect("leaf.key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    Arc::new(cfg)
}
