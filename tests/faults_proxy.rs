//! The fault proxy itself, against a real OpenBao dev server: each fault does what it says,
//! "Vault acted" is checked on Vault's side (the cert list), and the log names requests
//! without their bodies.

mod common;

#[path = "common/faultproxy.rs"]
mod faultproxy;

use common::vault::{Vault, VaultOptions};
use faultproxy::{Fault, FaultProxy, Match, ProxyOptions, PIVAULT_MAX_BODY};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SIGN: &str = "/v1/pki/sign/";

fn client(ca: Option<&Path>, timeout: Duration) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .tls_built_in_root_certs(false);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("ca");
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
    }
    b.build().expect("client")
}

fn csr_json(dir: &Path) -> String {
    let out = dir.join("req.csr");
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-keyout"])
        .arg(dir.join("req.key"))
        .args(["-subj", "/CN=proxy test", "-out"])
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    serde_json::json!({ "csr": std::fs::read_to_string(&out).expect("csr") }).to_string()
}

/// POST a sign request through the proxy with the root token.
fn sign(
    c: &reqwest::blocking::Client,
    p: &FaultProxy,
    v: &Vault,
    body: &str,
) -> reqwest::Result<reqwest::blocking::Response> {
    c.post(format!("{}{SIGN}yubikey-piv", p.addr))
        .header("X-Vault-Token", v.root_token())
        .body(body.to_string())
        .send()
}

struct Rig {
    v: Vault,
    dir: tempfile::TempDir,
    body: String,
}

fn rig(tls: bool) -> Rig {
    let v = Vault::start_with(VaultOptions {
        tls,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    let body = csr_json(dir.path());
    Rig { v, dir, body }
}

#[test]
fn forwards_and_faults_each_request_as_told_over_http() {
    let r = rig(false);
    let v = &r.v;
    let p = FaultProxy::start(
        ProxyOptions::to(v)
            .rule(Match::path(SIGN, 2), Fault::DropAfterForward)
            .rule(Match::path(SIGN, 3), Fault::Status(503))
            .rule(Match::path(SIGN, 4), Fault::MalformedJson)
            .rule(Match::path(SIGN, 5), Fault::TruncatedJson)
            .rule(Match::path(SIGN, 6), Fault::Oversize)
            .rule(Match::path(SIGN, 7), Fault::WrongContentType)
            .rule(Match::path(SIGN, 8), Fault::CutMidBody)
            .rule(Match::path(SIGN, 9), Fault::Status(502))
            .rule(Match::path(SIGN, 10), Fault::Status(504)),
    );
    let c = client(None, Duration::from_secs(20));
    let issued = |want: usize, what: &str| {
        assert_eq!(
            v.issued_cert_count(),
            want,
            "after {what}:\n{}",
            p.log_text()
        );
    };

    // 1: passes through; JSON with a certificate.
    let a = sign(&c, &p, v, &r.body).expect("sign 1");
    assert_eq!(a.status(), 200);
    let j: serde_json::Value = a.json().expect("JSON");
    assert!(j["data"]["certificate"].as_str().is_some());
    issued(1, "a plain sign");
    // 2: Vault acted, the answer is lost.
    assert!(sign(&c, &p, v, &r.body).is_err(), "the answer must be lost");
    issued(2, "drop-after-forward");
    // 3: 503 without forwarding: Vault never saw it.
    let a = sign(&c, &p, v, &r.body).expect("sign 3");
    assert_eq!(a.status(), 503);
    issued(2, "503");
    // 4: malformed JSON, but Vault issued.
    let a = sign(&c, &p, v, &r.body).expect("sign 4");
    assert_eq!(a.status(), 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&a.bytes().expect("body")).is_err());
    issued(3, "malformed JSON");
    // 5: truncated JSON (framing complete).
    let a = sign(&c, &p, v, &r.body).expect("sign 5");
    let b = a.bytes().expect("body");
    assert!(b.starts_with(b"{"));
    assert!(serde_json::from_slice::<serde_json::Value>(&b).is_err());
    issued(4, "truncated JSON");
    // 6: over pivault's cap.
    let a = sign(&c, &p, v, &r.body).expect("sign 6");
    assert!(a.bytes().expect("body").len() > PIVAULT_MAX_BODY);
    issued(5, "oversize");
    // 7: wrong content type, body intact.
    let a = sign(&c, &p, v, &r.body).expect("sign 7");
    let ct = a.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(a.json::<serde_json::Value>().is_ok());
    issued(6, "wrong content type");
    // 8: body cut mid-way: the client sees an error reading it.
    let cut = sign(&c, &p, v, &r.body).and_then(|a| a.bytes());
    assert!(cut.is_err(), "a cut body must fail: {cut:?}");
    issued(7, "cut mid-body");
    // 9, 10: 502 and 504 without forwarding.
    assert_eq!(sign(&c, &p, v, &r.body).expect("9").status(), 502);
    assert_eq!(sign(&c, &p, v, &r.body).expect("10").status(), 504);
    issued(7, "502/504");

    // The log: ten sign requests, methods and paths, the faults named; no body, no token.
    let log = p.log();
    assert_eq!(log.len(), 10, "{}", p.log_text());
    assert!(log
        .iter()
        .all(|l| l.method == "POST" && l.path == "/v1/pki/sign/yubikey-piv"));
    assert_eq!(log[1].fault, Some(Fault::DropAfterForward));
    assert_eq!(
        log[1].upstream_status,
        Some(200),
        "Vault answered request 2"
    );
    assert_eq!(
        log[2].upstream_status, None,
        "request 3 never reached Vault"
    );
    let text = p.log_text();
    assert!(!text.contains("BEGIN CERTIFICATE REQUEST") && !text.contains(v.root_token()));
}

#[test]
fn stall_outlasts_the_client_deadline_and_pause_holds_until_released() {
    let r = rig(false);
    let v = &r.v;
    let p = FaultProxy::start(
        ProxyOptions::to(v)
            .rule(
                Match::Nth(1),
                Fault::Stall {
                    forward: false,
                    hold: Duration::from_secs(30),
                },
            )
            .rule(
                Match::Nth(2),
                Fault::Stall {
                    forward: true,
                    hold: Duration::from_secs(30),
                },
            )
            .rule(
                Match::Nth(3),
                Fault::Pause {
                    after_forward: true,
                },
            )
            .rule(
                Match::Nth(4),
                Fault::Pause {
                    after_forward: false,
                },
            ),
    );
    let c = client(None, Duration::from_secs(1));
    let t0 = Instant::now();
    let e = sign(&c, &p, v, &r.body).expect_err("stalled");
    assert!(e.is_timeout(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(v.issued_cert_count(), 0, "stall before forwarding");
    let e = sign(&c, &p, v, &r.body).expect_err("stalled");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(
        v.issued_cert_count(),
        1,
        "stall after forwarding: Vault acted"
    );

    for (n, issued) in [(3, 2), (4, 2)] {
        let (addr, token, body) = (p.addr.clone(), v.root_token().to_string(), r.body.clone());
        let t = std::thread::spawn(move || {
            client(None, Duration::from_secs(30))
                .post(format!("{addr}{SIGN}yubikey-piv"))
                .header("X-Vault-Token", token)
                .body(body)
                .send()
        });
        assert_eq!(p.wait_paused(Duration::from_secs(10)), Some(n));
        assert_eq!(v.issued_cert_count(), issued, "request {n} held");
        assert!(
            !t.is_finished(),
            "the client waits while the request is held"
        );
        p.release();
        assert!(
            t.join().expect("thread").is_err(),
            "released: closed, no answer"
        );
    }
}

#[test]
fn tls_on_both_sides_latency_and_tls_closed_mid_answer() {
    let r = rig(true);
    let v = &r.v;
    let p = FaultProxy::start(ProxyOptions::to(v).rule(Match::path(SIGN, 2), Fault::CutMidBody));
    assert!(p.addr.starts_with("https://"));
    let ca = p.ca.clone().expect("proxy CA");
    // Only the proxy's CA is trusted by the client: the proxy terminates TLS.
    let c = client(Some(&ca), Duration::from_secs(20));
    let a = sign(&c, &p, v, &r.body).expect("sign over TLS");
    assert_eq!(a.status(), 200);
    assert!(a.json::<serde_json::Value>().expect("json")["data"]["serial_number"].is_string());
    let cut = sign(&c, &p, v, &r.body).and_then(|a| a.bytes());
    assert!(cut.is_err(), "TLS closed mid-answer must fail: {cut:?}");
    assert_eq!(v.issued_cert_count(), 2);
    // Without the proxy's CA the handshake fails.
    let bad = client(None, Duration::from_secs(5))
        .get(format!("{}/v1/sys/health", p.addr))
        .send();
    assert!(bad.is_err());

    // 50 ms per request.
    p.set_latency(Duration::from_millis(50));
    let t0 = Instant::now();
    for _ in 0..4 {
        let a = c
            .get(format!("{}/v1/sys/health", p.addr))
            .send()
            .expect("health");
        assert_eq!(a.status(), 200);
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    let _ = &r.dir;
}
