//! Running the real `pivault` binary and the third-party clients that cross-check it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Environment variables that must not leak from the developer's shell into a test run.
const SCRUB: &[&str] = &[
    "VAULT_ADDR",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "VAULT_TOKEN",
    "VAULT_SKIP_VERIFY",
    "BAO_ADDR",
    "BAO_TOKEN",
    "BAO_NAMESPACE",
    "BAO_CACERT",
    "PIVAULT_CONFIG",
    "PIVAULT_PIN",
    "PIVAULT_PIN_FILE",
    "PIVAULT_PUK",
    "PIVAULT_MGMT_KEY",
    "PIVAULT_SECRET_ID",
    "PIVAULT_SECRET_ID_FILE",
    "PIVAULT_ROLE_ID",
    "PIVAULT_TLS_SKIP_VERIFY",
    "PIVAULT_AUTH",
    "PIVAULT_SERIAL",
    "PIVAULT_READER",
    "RUST_LOG",
];

/// `pivault` with a clean environment plus `env`.
pub fn pivault(env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pivault"));
    for k in SCRUB {
        c.env_remove(k);
    }
    // An empty config, so a machine's /etc/pivault/config.toml cannot change a test.
    c.env("PIVAULT_CONFIG", "/dev/null");
    c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    c.stdin(Stdio::null());
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a command, panicking with its output if it cannot start. What `pivault --json`
/// prints is validated against its JSON Schema (common::schema).
pub fn run(mut c: Command) -> Output {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", c.get_program()));
    super::schema::check_output(&c, &o);
    o
}

/// Run and require success.
pub fn ok(c: Command) -> Output {
    let o = run(c);
    assert!(o.status.success(), "command failed:\n{}", text(&o));
    o
}

pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    if name == "pkcs11-tool" {
        c.env("OPENSC_CONF", opensc_conf());
    }
    c
}

/// fixtures/pcsc/opensc.conf: OpenSC's PKCS#11 module reaches only the first 4 readers by
/// default; the rig has 8.
pub fn opensc_conf() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pcsc/opensc.conf")
}

/// `pkcs11-tool` that sees only `reader`. OpenSC otherwise probes every card on the
/// machine, and waits on cards other tests (or scripts/ykman-conformance) hold in long
/// transactions: a plain `pkcs11-tool -L` then hangs. The other readers go in
/// `ignored_readers` of a configuration written for this reader.
pub fn pkcs11_tool(reader: &str) -> Command {
    let mut c = Command::new("pkcs11-tool");
    c.env("OPENSC_CONF", opensc_conf_for(reader));
    c
}

/// fixtures/pcsc/opensc.conf plus `ignored_readers` = every PC/SC reader but `reader`.
pub fn opensc_conf_for(reader: &str) -> std::path::PathBuf {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("PC/SC context (pcscd)");
    let others: Vec<String> = ctx
        .list_readers_owned()
        .expect("PC/SC reader list")
        .into_iter()
        .map(|r| r.to_string_lossy().into_owned())
        .filter(|r| r != reader)
        .map(|r| format!("\"{r}\""))
        .collect();
    let base = std::fs::read_to_string(opensc_conf()).expect("fixtures/pcsc/opensc.conf");
    let ignored = if others.is_empty() {
        String::new()
    } else {
        format!("    ignored_readers = {};\n", others.join(", "))
    };
    let conf = base.replacen("app default {\n", &format!("app default {{\n{ignored}"), 1);
    let tag: String = reader.chars().filter(char::is_ascii_alphanumeric).collect();
    let path =
        std::env::temp_dir().join(format!("pivault-opensc-{}-{tag}.conf", std::process::id()));
    std::fs::write(&path, conf).expect("write the OpenSC configuration");
    path
}

/// The certificate in a slot, as PEM, read by yubico-piv-tool (a third party).
pub fn piv_tool_read_cert(reader: &str, slot: &str) -> String {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", reader, "-a", "read-certificate", "-s", slot]);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

/// `openssl verify` of a PEM certificate against the root and intermediate.
pub fn openssl_verify(cert_pem: &str, root: &Path, chain: &Path, dir: &Path) -> Output {
    let f = dir.join("leaf.pem");
    std::fs::write(&f, cert_pem).expect("write leaf");
    let mut c = tool("openssl");
    c.arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(chain)
        .arg(&f);
    run(c)
}

/// SHA-256 fingerprint (lowercase hex, no colons) of a PEM certificate, by openssl.
pub fn openssl_fingerprint(cert_pem: &str, dir: &Path) -> String {
    let f = dir.join("fp.pem");
    std::fs::write(&f, cert_pem).expect("write");
    let mut c = tool("openssl");
    c.args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&f);
    let out = String::from_utf8_lossy(&ok(c).stdout).into_owned();
    out.trim()
        .split('=')
        .nth(1)
        .unwrap_or("")
        .replace(':', "")
        .to_lowercase()
}

/// `openssl x509 -text` of a PEM certificate.
pub fn openssl_text(cert_pem: &str, dir: &Path) -> String {
    let f = dir.join("text.pem");
    std::fs::write(&f, cert_pem).expect("write");
    let mut c = tool("openssl");
    c.args(["x509", "-noout", "-text", "-in"]).arg(&f);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

/// OpenSC's PKCS#11 module on this machine.
pub fn opensc_module() -> String {
    for p in [
        "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
        "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
        "/usr/lib/arm-linux-gnueabihf/opensc-pkcs11.so",
        "/usr/lib/opensc-pkcs11.so",
        "/usr/lib64/opensc-pkcs11.so",
    ] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("OpenSC's opensc-pkcs11.so not found: apt-get install opensc");
}

/// Sign with the slot's key through OpenSC and verify with the certificate in the slot:
/// proves the certificate and the private key belong together.
pub fn slot_key_matches_cert(reader: &str, slot: &str, pin: &str, dir: &Path) -> bool {
    let id = match slot {
        "9a" => "01",
        "9c" => "02",
        "9d" => "03",
        "9e" => "04",
        other => panic!("no OpenSC id for slot {other}"),
    };
    let pem = piv_tool_read_cert(reader, slot);
    let cert = dir.join("match.pem");
    std::fs::write(&cert, &pem).expect("write");
    let mut c = tool("openssl");
    c.args(["x509", "-pubkey", "-noout", "-in"]).arg(&cert);
    let pubkey = dir.join("match.pub");
    std::fs::write(&pubkey, ok(c).stdout).expect("pub");
    let data = dir.join("match.data");
    std::fs::write(&data, b"does the key match?").expect("data");
    let sig = dir.join("match.sig");
    let rsa = String::from_utf8_lossy(&std::fs::read(&pubkey).unwrap_or_default()).len() > 300;
    let mut c = pkcs11_tool(reader);
    c.args(["--module", &opensc_module(), "--slot-description", reader]);
    c.args(["--login", "--pin", pin, "--sign", "--id", id]);
    if rsa {
        c.args(["-m", "SHA256-RSA-PKCS"]);
    } else {
        c.args(["-m", "ECDSA-SHA256", "--signature-format", "openssl"]);
    }
    c.arg("-i").arg(&data).arg("-o").arg(&sig);
    ok(c);
    let mut c = tool("openssl");
    c.args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sig)
        .arg(&data);
    run(c).status.success()
}

/// The public key of a PEM certificate, as PEM (openssl).
pub fn openssl_pubkey(cert_pem: &str, dir: &Path) -> String {
    let f = dir.join("pk.pem");
    std::fs::write(&f, cert_pem).expect("write");
    let mut c = tool("openssl");
    c.args(["x509", "-pubkey", "-noout", "-in"]).arg(&f);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

/// `pivault status --json` of a rig card, opening only its reader.
pub fn status_json(card: &super::card::Card) -> serde_json::Value {
    let mut c = pivault(&[]);
    c.args(["status", "--json", "--serial", &card.serial.to_string()]);
    c.args(["--reader", &card.reader]);
    let o = ok(c);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(&o)))
}

/// `pivault enroll` on a rig card with the factory management key. `--reader` as well as
/// `--serial`: pivault then opens (and SELECTs) only this card, not the cards other tests
/// are working on.
pub fn enroll_cmd(card: &super::card::Card, env: &[(String, String)], extra: &[&str]) -> Command {
    let mut c = pivault(env);
    c.args(["enroll", "--serial", &card.serial.to_string()]);
    c.args(["--reader", &card.reader, "--default-mgmt-key"]);
    c.args(extra);
    c
}

/// `Vault::pivault_env` plus the trust anchor (the root CA) that `station` and `renew`
/// require.
pub fn anchored_env(vault: &super::vault::Vault) -> Vec<(String, String)> {
    let mut env = vault.pivault_env();
    env.push((
        "PIVAULT_TRUST_ANCHOR".into(),
        vault.root_pem.display().to_string(),
    ));
    env
}

/// Escrow a card's factory credentials in Vault KV (schema-1 record) the way a station
/// would have, so `unblock` and renewal tests start from an escrowed token.
pub fn escrow_factory(vault: &super::vault::Vault, card: &super::card::Card, dir: &Path) {
    let rec = serde_json::json!({
        "schema": 1,
        "serial": card.serial,
        "live": {
            "pin": "123456",
            "puk": "12345678",
            "mgmt_key": "010203040506070801020304050607080102030405060708",
            "mgmt_key_algorithm": "3des",
            "mgmt_key_protected": false
        },
        "updated_at": "2026-01-01T00:00:00Z",
        "updated_by": "test rig"
    });
    let f = dir.join("rec.json");
    std::fs::write(&f, rec.to_string()).expect("write the escrow record");
    let o = vault.bao(&[
        "kv",
        "put",
        &format!("yubikeys/{}", card.serial),
        &format!("@{}", f.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// PIN and PUK tries left as the card's GET METADATA tells them (Yubico PIV extension,
/// INS F7, P2 80 / 81; firmware 5.3+), asked with OpenSC's `opensc-tool` — another client,
/// and no try spent (yubico-piv-tool and Debian's ykman 4.0.9 cannot read the PUK counter).
/// `Err` when the card has no metadata or the answer cannot be read: never a guess.
pub fn metadata_tries(reader: &str, puk: bool) -> Result<u32, String> {
    let mut c = tool("opensc-tool");
    // SELECT PIV (SP 800-73-4 Part 2, 3.1.1), then GET METADATA.
    c.args(["-r", reader, "-s", "00A4040009A00000030800001000"]);
    c.args(["-s", if puk { "00F7008100" } else { "00F7008000" }]);
    let o = run(c);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let answer = out
        .split("Sending: 00 F7")
        .nth(1)
        .ok_or_else(|| format!("no GET METADATA sent:\n{}", text(&o)))?;
    let (head, dump) = answer
        .split_once('\n')
        .and_then(|(_, rest)| rest.split_once('\n'))
        .ok_or_else(|| format!("no answer:\n{}", text(&o)))?;
    if !head.contains("SW1=0x90, SW2=0x00") {
        return Err(format!("GET METADATA refused ({head}):\n{}", text(&o)));
    }
    let bytes: Vec<u8> = dump
        .lines()
        .take_while(|l| !l.starts_with("Sending"))
        .flat_map(|l| {
            l.split_whitespace()
                .take(16)
                .take_while(|t| t.len() == 2)
                .filter_map(|t| u8::from_str_radix(t, 16).ok())
                .collect::<Vec<_>>()
        })
        .collect();
    // TLVs: 06 02 <total> <left> (retries).
    let mut d = bytes.as_slice();
    while d.len() >= 2 {
        let (tag, len) = (d[0], usize::from(d[1]));
        let v = d
            .get(2..2 + len)
            .ok_or_else(|| format!("truncated metadata {bytes:02x?}"))?;
        if tag == 0x06 && len == 2 {
            return Ok(u32::from(v[1]));
        }
        d = &d[2 + len..];
    }
    Err(format!(
        "no retries in metadata {bytes:02x?}:\n{}",
        text(&o)
    ))
}

/// A station profile in `dir` (and its allow-list `tokens.toml`): the tokens `serials`
/// (named "User N", user<N>@example.org), random 8-digit PIN and PUK, the best management
/// key kept PIN-protected, and `slots` with the contract's default roles.
pub fn station_profile(dir: &Path, serials: &[u32], slots: &[&str]) -> std::path::PathBuf {
    let list: String = serials
        .iter()
        .map(|s| {
            format!(
                "[[token]]\nserial = {s}\nname = \"User {s}\"\nemail = \"user{s}@example.org\"\n"
            )
        })
        .collect();
    std::fs::write(dir.join("tokens.toml"), list).expect("allow-list");
    let slots: String = slots
        .iter()
        .map(|slot| format!("\n[[slot]]\nslot = \"{slot}\"\n"))
        .collect();
    let profile = dir.join("station.toml");
    std::fs::write(
        &profile,
        format!(
            "common_name = \"{{name}}\"\nemail = \"{{email}}\"\n\n[credentials]\npin_length = 8\n\
             puk_length = 8\nmgmt_key = \"best\"\nprotect_mgmt_key = true\n\n[tokens]\n\
             allow_list = \"tokens.toml\"\n{slots}"
        ),
    )
    .expect("profile");
    profile
}

/// A station run's files in a temporary directory: the profile for `serials` (slots 9a and
/// 9d, see [`station_profile`]), the report and the journal directory.
pub struct StationFiles {
    pub dir: tempfile::TempDir,
    pub profile: std::path::PathBuf,
    pub report: std::path::PathBuf,
    pub journal: std::path::PathBuf,
}

pub fn station_files(serials: &[u32]) -> StationFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = station_profile(dir.path(), serials, &["9a", "9d"]);
    StationFiles {
        report: dir.path().join("report.jsonl"),
        journal: dir.path().join("journal"),
        profile,
        dir,
    }
}
