//! pivault's Vault client against peers that answer what a Vault (or something pretending
//! to be one) could answer but OpenBao will not produce on demand: a 307 to a foreign
//! host, a 5xx after the request was taken, a connection dropped after the body was sent,
//! absurd integers, control characters in messages. Each peer is a real loopback TCP
//! server started by the test (no mock of pivault's own types).

use pivault::secret::SecretId;
use pivault::vault::{AppRoleCreds, SignRequest, VaultClient, VaultConfig, VaultError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---- a tiny HTTP/1.1 server ----------------------------------------------------------------

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
enum Reply {
    /// Status, extra headers, body.
    Answer(u16, Vec<(String, String)>, Vec<u8>),
    /// Close the connection without answering (a node killed after reading the request).
    Cut,
}

fn json(status: u16, body: &str) -> Reply {
    Reply::Answer(status, vec![], body.as_bytes().to_vec())
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// A loopback HTTP server: `handler(request, n)` (n: how many requests came before) decides
/// each answer. Returns its address (`http://127.0.0.1:PORT`) and the requests it saw.
fn serve(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Peer {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handler: Arc<Handler> = Arc::new(handler);
    let rec = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let rec = Arc::clone(&rec);
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || {
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                while let Some(req) = read_request(&mut r) {
                    let n = {
                        let mut g = rec.lock().unwrap_or_else(|e| e.into_inner());
                        g.push(req.clone());
                        g.len() - 1
                    };
                    match handler(&req, n) {
                        Reply::Cut => return,
                        Reply::Answer(status, headers, body) => {
                            let mut head = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\
                                 Content-Type: application/json\r\n",
                                body.len()
                            );
                            for (k, v) in headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            if w.write_all(head.as_bytes()).is_err() || w.write_all(&body).is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Peer { addr, seen }
}

struct Peer {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Peer {
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn count(&self, path_part: &str) -> usize {
        self.all()
            .iter()
            .filter(|s| s.path.contains(path_part))
            .count()
    }
}

// ---- what a Vault answers ------------------------------------------------------------------

const TOKEN: &str = "hvs.test-token-0123456789";

fn login_answer(lease: &str) -> Reply {
    json(
        200,
        &format!(
            r#"{{"auth":{{"client_token":"{TOKEN}","lease_duration":{lease},"renewable":true}}}}"#
        ),
    )
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

fn sign_answer(expiration: &str, warnings: &str) -> Reply {
    let cert = serde_json::to_string(CERT).expect("json");
    json(
        200,
        &format!(
            r#"{{"data":{{"certificate":{cert},"issuing_ca":{cert},"ca_chain":[{cert}],"serial_number":"01:02","expiration":{expiration}}},"warnings":{warnings}}}"#
        ),
    )
}

fn config(addrs: &[&str]) -> VaultConfig {
    let mut cfg = VaultConfig::new(
        addrs
            .iter()
            .map(|a| url::Url::parse(a).expect("url"))
            .collect(),
    );
    cfg.request_timeout = Duration::from_secs(2);
    cfg.deadline = Duration::from_secs(4);
    cfg
}

fn creds() -> AppRoleCreds {
    AppRoleCreds {
        role_id: "role-id".into(),
        secret_id: SecretId::new("secret-id-that-must-stay-home"),
    }
}

fn csr() -> SignRequest {
    SignRequest {
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"
            .into(),
        ..Default::default()
    }
}

// ---- defect 8: redirects go only to configured addresses -----------------------------------

#[test]
fn a_redirect_to_an_unconfigured_host_is_refused_and_nothing_is_sent_there() {
    // The foreign host answers like a Vault would, and records what it was sent.
    let foreign = serve(|req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else {
            sign_answer("1790000000", "null")
        }
    });
    let target = foreign.addr.clone();
    // A "standby" that logs in itself but redirects sign and a second login elsewhere.
    let node = serve(move |req, n| {
        if req.path.contains("/login") && n == 0 {
            return login_answer("3600");
        }
        Reply::Answer(
            307,
            vec![("Location".into(), format!("{target}{}", req.path))],
            vec![],
        )
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login on the node itself");
    let e = c.sign("yubikey-piv", &csr()).expect_err("foreign redirect");
    assert!(
        e.to_string().contains(&foreign.addr),
        "the error names the target: {e}"
    );
    assert!(
        matches!(e, VaultError::RedirectRefused { ref to, .. } if *to == foreign.addr),
        "{e:?}"
    );
    // A login redirected elsewhere would carry the secret_id.
    let e = c.login(creds()).expect_err("foreign redirect");
    assert!(e.to_string().contains(&foreign.addr), "{e}");
    assert!(
        foreign.all().is_empty(),
        "the foreign host got requests: {:?}",
        foreign.all()
    );
    assert_eq!(node.count("/sign/"), 1, "refused, not retried");
}

// ---- a sign that may have reached Vault is never repeated ----------------------------------

#[test]
fn a_sign_answered_500_is_in_doubt_and_made_once() {
    let node = serve(|req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else {
            json(500, r#"{"errors":["internal error"]}"#)
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    let e = c.sign("yubikey-piv", &csr()).expect_err("500");
    assert_eq!(node.count("/sign/"), 1, "a 500 may come after issuing: {e}");
    assert!(!e.is_transient(), "{e:?}");
    match &e {
        VaultError::InDoubt {
            path, addr, cause, ..
        } => {
            assert_eq!(path, "pki/sign/yubikey-piv");
            assert_eq!(addr, &node.addr);
            assert!(matches!(
                **cause,
                VaultError::Unavailable { status: 500, .. }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.status(), Some(500));
}

#[test]
fn a_sign_whose_connection_drops_after_sending_is_made_once() {
    let node = serve(|req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else {
            Reply::Cut
        }
    });
    // Two addresses: a retry would have somewhere to go.
    let other = serve(|_, _| json(200, "{}"));
    let c = VaultClient::new(config(&[&node.addr, &other.addr])).expect("client");
    c.login(creds()).expect("login");
    let before = std::time::SystemTime::now();
    let e = c.sign("yubikey-piv", &csr()).expect_err("cut");
    assert_eq!(node.count("/sign/") + other.count("/sign/"), 1, "{e:?}");
    assert!(!e.is_transient() && !e.is_unavailable(), "{e:?}");
    match &e {
        VaultError::InDoubt {
            addr,
            sent_at,
            cause,
            ..
        } => {
            assert_eq!(addr, &node.addr);
            assert!(*sent_at >= before);
            assert!(
                matches!(**cause, VaultError::ConnectionLost { .. }),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Sent asking a standby not to forward it.
    assert!(node.all().iter().any(|s| s.method == "POST"
        && s.path.contains("/sign/")
        && s.header("x-vault-no-request-forwarding") == Some("true")));
    // The body did reach the peer: this is the case that must be journaled as in doubt.
    assert!(node
        .all()
        .iter()
        .any(|s| s.path.contains("/sign/") && !s.body.is_empty()));
}

#[test]
fn a_sign_refused_before_vault_acted_is_retried() {
    // "no active Vault instance found" is answered by a standby before routing (OpenBao
    // http/handler.go respondStandby): safe to send again.
    let node = serve(|req, _| {
        if req.path.contains("/login") {
            return login_answer("3600");
        }
        static SIGNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if SIGNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            json(503, r#"{"errors":["no active Vault instance found"]}"#)
        } else {
            sign_answer("1790000000", "null")
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    c.sign("yubikey-piv", &csr())
        .expect("retried after a standby refusal");
    assert_eq!(node.count("/sign/"), 2);
}

// ---- defect 10: absurd integers and control characters from Vault -------------------------

#[test]
fn absurd_lease_durations_do_not_overflow() {
    for lease in [
        "9223372036854775807",
        "18446744073709551615",
        "9223372036854775000",
    ] {
        let lease_s = lease.to_string();
        let node = serve(move |req, _| {
            if req.path.contains("/login") || req.path.contains("/renew-self") {
                login_answer(&lease_s)
            } else {
                sign_answer("1790000000", "null")
            }
        });
        let c = VaultClient::new(config(&[&node.addr])).expect("client");
        c.login(creds()).expect("login");
        c.ensure_fresh_token().expect("fresh");
        c.sign("yubikey-piv", &csr()).expect("sign");
        let left = c.token_expires_in();
        assert!(
            left.is_none_or(|d| d > Duration::from_secs(3600)),
            "{lease}: {left:?}"
        );
    }
}

#[test]
fn absurd_expiration_and_kv_version_are_bounded() {
    let node = serve(|req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else if req.path.contains("/sign/") {
            sign_answer("-9223372036854775808", "null")
        } else {
            json(
                200,
                r#"{"data":{"data":{"a":1},"metadata":{"version":18446744073709551615}}}"#,
            )
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    let s = c.sign("yubikey-piv", &csr()).expect("sign");
    assert!(s.expiration >= 0, "{}", s.expiration);
    // A version that cannot be one (KV versions count writes) is refused, so that no caller
    // computes version + 1 on it.
    let r = c.kv_read::<serde_json::Value>("t/1");
    assert!(matches!(r, Err(VaultError::BadResponse { .. })), "{r:?}");
}

fn has_controls(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[test]
fn vault_text_reaches_the_user_with_controls_escaped() {
    let evil = r#"\u001b[2J\u001b[31mcommon name not allowed\r\u0007 by this role\u202e\u009b1m"#;
    let warnings = format!(r#"["ttl\u001b]0;pwned\u0007 shortened", "{evil}"]"#);
    let node = serve(move |req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else if req.path.contains("/sign/yubikey-piv-auth") {
            sign_answer("1790000000", &warnings)
        } else if req.path.contains("/sign/") {
            json(400, &format!(r#"{{"errors":["{evil}"]}}"#))
        } else {
            // Not JSON: the first line is shown.
            Reply::Answer(502, vec![], b"\x1b[5mbad gateway\x1b[0m\r\nmore".to_vec())
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    let e = c.sign("yubikey-piv", &csr()).expect_err("400");
    let shown = format!("{e} {}", e.hint().unwrap_or_default());
    assert!(!has_controls(&shown), "{shown:?}");
    assert!(shown.contains("common name not allowed"), "{shown}");
    assert!(shown.contains("\\x1b"), "escaped, not dropped: {shown}");
    let s = c.sign("yubikey-piv-auth", &csr()).expect("sign");
    assert_eq!(s.warnings.len(), 2);
    for w in &s.warnings {
        assert!(!has_controls(w), "{w:?}");
    }
    let e = c
        .kv_read::<serde_json::Value>("t/1")
        .expect_err("502 from a proxy");
    assert!(!has_controls(&e.to_string()), "{:?}", e.to_string());
}
