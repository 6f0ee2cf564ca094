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

#[test]
fn a_kv_write_that_keeps_losing_its_answer_ends_in_doubt() {
    let node = serve(|req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else {
            // Read, maybe written, never answered.
            Reply::Cut
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    let e = c
        .kv_write("t/1", &serde_json::json!({"puk": "12345678"}), Some(3))
        .expect_err("never answered");
    assert!(node.count("/data/") >= 2, "a KV write is retried");
    match &e {
        VaultError::InDoubt { path, cause, .. } => {
            assert_eq!(path, "yubikeys/data/t/1");
            assert!(
                matches!(**cause, VaultError::ConnectionLost { .. }),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.to_string().contains("12345678"));
    // A read that keeps failing is just a failure: nothing can have changed.
    let e = c.kv_read::<serde_json::Value>("t/1").expect_err("cut");
    assert!(matches!(e, VaultError::ConnectionLost { .. }), "{e:?}");
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

#[test]
fn oversized_answers_are_not_read() {
    let big = format!(
        r#"{{"data":{{"data":{{"pad":"{}"}},"metadata":{{"version":1}}}}}}"#,
        "x".repeat(2 << 20)
    );
    let big2 = big.clone();
    let node = serve(move |req, _| {
        if req.path.contains("/login") {
            login_answer("3600")
        } else if req.path.contains("/sign/") {
            Reply::Answer(200, vec![], big2.clone().into_bytes())
        } else {
            Reply::Answer(200, vec![], big.clone().into_bytes())
        }
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    let e = c
        .kv_read::<serde_json::Value>("t/1")
        .expect_err("2 MiB answer");
    assert!(e.to_string().contains("larger than"), "{e}");
    // A sign answered 200 whose body is not taken: issued, and pivault does not hold it.
    let e = c.sign("yubikey-piv", &csr()).expect_err("2 MiB answer");
    assert!(e.is_in_doubt(), "{e:?}");
    assert_eq!(node.count("/sign/"), 1);
}

// ---- issue 10 defect 12: an escrow write whose answer was lost is settled by reading back --

/// How the KV peer treats the first write of a test.
#[derive(Clone, Copy, PartialEq, Debug)]
enum FirstWrite {
    /// Not stored; "check-and-set mismatch" (a raft leader died before committing it, and
    /// the retry reached a node that had not seen it either).
    Lost,
    /// Stored; "check-and-set mismatch" (the retry of a write that had landed).
    Landed,
    /// Another writer's record stored instead; "check-and-set mismatch".
    Other,
    /// Not stored; mismatch; and the next read answers one version behind (a lagging node).
    LostAndLagging,
}

/// A KV v2 peer holding one record of token 4242 at version 3; returns the client, the
/// peer, and the number of writes it saw.
fn kv_peer(first: FirstWrite) -> (VaultClient, Peer, Arc<Mutex<usize>>) {
    let state = Arc::new(Mutex::new((
        3u64,
        serde_json::json!({"schema": 2, "serial": 4242, "live": {"pin": "48291375"}}),
        0usize, // reads after the first write
    )));
    let writes = Arc::new(Mutex::new(0usize));
    let (st, w) = (Arc::clone(&state), Arc::clone(&writes));
    let node = serve(move |req, _| {
        if req.path.contains("/login") {
            return login_answer("3600");
        }
        let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
        let mismatch = || {
            json(
                400,
                r#"{"errors":["check-and-set parameter did not match the current version"]}"#,
            )
        };
        if req.method == "GET" {
            let written = *w.lock().unwrap_or_else(|e| e.into_inner()) > 0;
            let lag = first == FirstWrite::LostAndLagging && written && g.2 == 0;
            if written {
                g.2 += 1;
            }
            let (v, data) = if lag {
                (
                    g.0 - 1,
                    serde_json::json!({"schema": 2, "serial": 4242, "live": {}}),
                )
            } else {
                (g.0, g.1.clone())
            };
            return json(
                200,
                &serde_json::json!({"data": {"data": data, "metadata": {"version": v}}})
                    .to_string(),
            );
        }
        let body: serde_json::Value = serde_json::from_slice(&req.body).expect("json body");
        let mut n = w.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        if *n == 1 {
            match first {
                FirstWrite::Lost | FirstWrite::LostAndLagging => return mismatch(),
                FirstWrite::Landed => {
                    g.0 += 1;
                    g.1 = body["data"].clone();
                    return mismatch();
                }
                FirstWrite::Other => {
                    g.0 += 1;
                    g.1 = serde_json::json!({"schema": 2, "serial": 4242, "updated_by": "someone else"});
                    return mismatch();
                }
            }
        }
        if body["options"]["cas"].as_u64() != Some(g.0) {
            return mismatch();
        }
        g.0 += 1;
        g.1 = body["data"].clone();
        json(200, &format!(r#"{{"data":{{"version":{}}}}}"#, g.0))
    });
    let c = VaultClient::new(config(&[&node.addr])).expect("client");
    c.login(creds()).expect("login");
    (c, node, writes)
}

#[test]
fn an_escrow_write_whose_answer_was_lost_is_settled_by_reading_it_back() {
    use pivault::escrow::Escrow;
    for (first, ok, writes_seen, version) in [
        // Did not land: the record is still at the version read: sent again, accepted.
        (FirstWrite::Lost, true, 2, 4),
        // Landed: the record read back is exactly what was written: done, not sent again.
        (FirstWrite::Landed, true, 1, 4),
        // Another writer: an error, nothing overwritten.
        (FirstWrite::Other, false, 1, 3),
        // A node one version behind: nothing can be told: asked again, then accepted.
        (FirstWrite::LostAndLagging, true, 2, 4),
    ] {
        let (c, _peer, writes) = kv_peer(first);
        let esc = Escrow {
            client: &c,
            by: "test".into(),
        };
        let mut rec = esc.read(4242).expect("read").expect("record");
        assert_eq!(rec.version, 3);
        rec.record.live.puk = Some(pivault::secret::Puk::new("73915824"));
        let r = esc.write(&mut rec);
        assert_eq!(r.is_ok(), ok, "{first:?}: {r:?}");
        if let Err(e) = &r {
            assert!(
                matches!(e, pivault::Error::Vault(VaultError::CasMismatch { .. })),
                "{first:?}: {e:?}"
            );
        }
        assert_eq!(
            *writes.lock().unwrap_or_else(|e| e.into_inner()),
            writes_seen,
            "{first:?}"
        );
        if ok {
            assert_eq!(rec.version, version, "{first:?}");
        }
    }
}

// ---- property tests of the parsers of Vault's answers --------------------------------------

mod props {
    use super::*;
    use pivault::text::is_clean;
    use proptest::prelude::*;

    /// The status and body the peer gives next.
    type Slot = Arc<Mutex<(u16, Vec<u8>)>>;

    /// A logged-in client whose peer answers every non-login request with the status and
    /// body in the returned slot.
    fn peer_with_slot() -> (VaultClient, Slot, Peer) {
        let slot: Slot = Arc::new(Mutex::new((200, b"{}".to_vec())));
        let s = Arc::clone(&slot);
        let node = serve(move |req, _| {
            if req.path.contains("/login") {
                return login_answer("3600");
            }
            let (status, body) = s.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Reply::Answer(status, vec![], body)
        });
        let mut cfg = config(&[&node.addr]);
        cfg.deadline = Duration::from_secs(1);
        let c = VaultClient::new(cfg).expect("client");
        c.login(creds()).expect("login");
        (c, slot, node)
    }

    fn set(slot: &Mutex<(u16, Vec<u8>)>, status: u16, body: Vec<u8>) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = (status, body);
    }

    /// Any text, control and bidi characters included.
    fn any_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
    }

    /// `n` cases, or `PROPTEST_CASES` (scripts/fuzz-parsers); failures are saved in
    /// proptest-regressions/hostile_vault.txt (kept in the repo, replayed first).
    fn config_cases(n: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        ProptestConfig {
            cases,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(
                    "proptest-regressions/hostile_vault.txt",
                ),
            )),
            ..ProptestConfig::default()
        }
    }

    const MARK: &str = "S3CR3T-MARK";

    #[test]
    fn any_sign_body_is_read_or_refused_quietly() {
        let (c, slot, _node) = peer_with_slot();
        proptest!(config_cases(200), |(
            pre in proptest::collection::vec(any::<u8>(), 0..200),
            post in proptest::collection::vec(any::<u8>(), 0..200),
        )| {
            // Whatever the body, with a secret-looking marker inside it.
            let mut body = pre;
            body.extend_from_slice(MARK.as_bytes());
            body.extend(post);
            set(&slot, 200, body);
            match c.sign("yubikey-piv", &csr()) {
                Ok(s) => {
                    prop_assert!(s.warnings.iter().all(|w| is_clean(w)));
                    prop_assert!(is_clean(&s.serial_number));
                }
                Err(e) => {
                    // A 200 whose body cannot be read: issued, not held.
                    prop_assert!(e.is_in_doubt(), "{:?}", e);
                    let shown = format!("{e} {}", e.hint().unwrap_or_default());
                    prop_assert!(is_clean(&shown), "{:?}", shown);
                    prop_assert!(!shown.contains(MARK), "{}", shown);
                }
            }
        });
    }

    #[test]
    fn structured_sign_answers_keep_their_bounds() {
        let (c, slot, _node) = peer_with_slot();
        proptest!(config_cases(200), |(
            expiration in any::<i64>(),
            warnings in proptest::collection::vec(any_text(40), 0..40),
            chain_len in 0usize..20,
            serial in any_text(20),
        )| {
            let chain: Vec<&str> = std::iter::repeat_n(CERT, chain_len).collect();
            let body = serde_json::json!({
                "data": {
                    "certificate": CERT,
                    "issuing_ca": CERT,
                    "ca_chain": chain,
                    "serial_number": serial,
                    "expiration": expiration,
                },
                "warnings": warnings,
            });
            set(&slot, 200, body.to_string().into_bytes());
            let s = c.sign("yubikey-piv", &csr()).expect("a well-formed answer");
            prop_assert!((0..=253_402_300_799).contains(&s.expiration));
            prop_assert_eq!(
                s.expiration,
                expiration.clamp(0, 253_402_300_799)
            );
            prop_assert!(s.warnings.len() <= 16);
            prop_assert!(s.warnings.iter().all(|w| is_clean(w)));
            prop_assert!(s.ca_chain_pem.len() <= 8);
            prop_assert!(is_clean(&s.serial_number));
        });
    }

    #[test]
    fn vault_error_messages_print_clean() {
        let (c, slot, _node) = peer_with_slot();
        proptest!(config_cases(200), |(
            status in prop_oneof![400u16..=428, 430u16..=499, Just(500u16), Just(502), Just(504)],
            messages in proptest::collection::vec(any_text(80), 0..30),
        )| {
            let body = serde_json::json!({ "errors": messages });
            set(&slot, status, body.to_string().into_bytes());
            let e = c.sign("yubikey-piv", &csr()).expect_err("refused");
            let shown = format!("{e} {}", e.hint().unwrap_or_default());
            prop_assert!(is_clean(&shown), "{:?}", shown);
            // Bounded: at most 16 messages of at most 1000 characters each, escaped.
            prop_assert!(shown.chars().count() < 16 * 1001 * 10 + 1000, "{}", shown.len());
            if status >= 500 {
                prop_assert!(e.is_in_doubt(), "{:?}", e);
            }
        });
    }

    #[test]
    fn kv_versions_outside_what_vault_counts_are_refused() {
        let (c, slot, _node) = peer_with_slot();
        proptest!(config_cases(100), |(version in any::<u64>())| {
            let body = format!(
                r#"{{"data":{{"data":{{"a":1}},"metadata":{{"version":{version}}}}}}}"#
            );
            set(&slot, 200, body.into_bytes());
            let r = c.kv_read::<serde_json::Value>("t/1");
            if (1..=(1u64 << 53)).contains(&version) {
                prop_assert_eq!(r.expect("read").expect("present").1.version, version);
            } else {
                prop_assert!(matches!(r, Err(VaultError::BadResponse { .. })), "{:?}", r);
            }
        });
    }

    #[test]
    fn any_lease_duration_is_taken_without_overflow() {
        proptest!(config_cases(40), |(lease in any::<u64>())| {
            let node = serve(move |req, _| {
                if req.path.contains("/login") {
                    login_answer(&lease.to_string())
                } else {
                    json(200, "{}")
                }
            });
            let c = VaultClient::new(config(&[&node.addr])).expect("client");
            c.login(creds()).expect("login");
            let left = c.token_expires_in();
            prop_assert!(left.is_none_or(|d| d <= Duration::from_secs(10 * 365 * 24 * 3600)));
            prop_assert_eq!(left.is_none(), lease == 0);
        });
    }

    /// A real certificate (openssl), PEM.
    fn real_cert() -> &'static str {
        static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PEM.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tmp");
            let k = dir.path().join("k.pem");
            let o = std::process::Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args([
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    "/CN=t",
                    "-keyout",
                ])
                .arg(&k)
                .output()
                .expect("openssl");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).expect("pem")
        })
    }

    proptest! {
        #![proptest_config(config_cases(300))]

        #[test]
        fn pem_bundles_never_panic(text in any_text(400)) {
            let _ = pivault::verify::pem_bundle_to_der(&text);
            let damaged = format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----");
            // Random text is never a certificate: refused, never accepted or a panic.
            prop_assert!(pivault::verify::pem_bundle_to_der(&damaged).is_err());
        }

        #[test]
        fn pem_bundles_yield_each_certificate_between_junk(
            junk in proptest::collection::vec(any_text(60), 1..6),
        ) {
            // Junk between certificates (text around PEM blocks is allowed, RFC 7468 2),
            // without a marker of its own.
            let junk: Vec<String> = junk.into_iter().map(|j| j.replace("-----", "")).collect();
            let cert = real_cert();
            let mut text = String::new();
            for j in &junk {
                text.push_str(j);
                text.push('\n');
                text.push_str(cert);
            }
            let ders = pivault::verify::pem_bundle_to_der(&text).expect("parsed");
            prop_assert_eq!(ders.len(), junk.len());
            let one = pivault::verify::pem_bundle_to_der(cert).expect("one");
            prop_assert!(ders.iter().all(|d| *d == one[0]));
        }
    }
}
