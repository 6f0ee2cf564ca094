//! Command-line arguments. Secrets have no value flags: only `--*-file` paths (or `-` for
//! standard input), environment variables, or a prompt.

use clap::{Args, Parser, Subcommand};
use pivault::enroll::Ttl;
use pivault::piv::{Algorithm, MgmAlgorithm, PinPolicy, Role, Slot, TouchPolicy};
use pivault::profile::SlotSpec;
use pivault::renew::Threshold;
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  failed (a slot or token failed, a certificate was refused)
  2  usage or configuration error; nothing was changed
  3  needs a person: no token or several, PIN/PUK blocked, last PIN try, occupied slot
  4  Vault unavailable (down, sealed, standby); the token was not changed, retry later
 10  renew --check: a certificate is due

Secrets are read from environment variables, from files readable only by their owner,
or from a prompt; never from the command line:
  PIVAULT_PIN[_FILE]  PIVAULT_NEW_PIN[_FILE]  PIVAULT_MGMT_KEY[_FILE]  PIVAULT_SECRET_ID[_FILE]";

/// A typed value from its text (the library's `FromStr`), for clap.
fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

#[derive(Debug, Parser)]
#[command(name = "pivault", version, about = "Enroll YubiKey PIV tokens against Vault / OpenBao PKI", after_help = EXIT_CODES)]
pub struct Cli {
    /// Config file (default: $PIVAULT_CONFIG, else /etc/pivault/config.toml if present)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output (versioned JSON schema) on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); secrets are never logged
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the tokens present (serial, firmware, reader)
    List,
    /// Show what a token holds: PIN/PUK tries, management key, slots and certificates
    Status(TokenArgs),
    /// Generate keys on the token, have Vault certify them, import the certificates
    Enroll(Box<EnrollArgs>),
    /// Renew certificates nearing expiry, with only the PIN (re-keys by default)
    Renew(Box<RenewArgs>),
    /// Unblock a blocked (or forgotten) PIN with the PUK escrowed in Vault, then rotate the PUK
    Unblock(Box<UnblockArgs>),
    /// Provisioning station: watch readers, enroll inserted tokens per a profile, escrow credentials
    Station(Box<StationArgs>),
    /// Check this machine and Vault: pcscd, readers, tokens, firmware advisories, TLS, namespace, login, roles, KV, clock
    #[command(after_help = DOCTOR_EXIT_CODES)]
    Doctor(Box<DoctorArgs>),
    /// Verify the token's attestation of its keys (Yubico's chain) and show what it proves
    Attest(Box<AttestArgs>),
    /// Print a shell completion script (bash, zsh or fish) on stdout
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the manual pages (pivault.1, pivault-<command>.1) into DIR (for packaging)
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

// --- `pivault attest` (h-attest) ---
#[derive(Debug, Args, Clone, Default)]
pub struct AttestArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Only this slot (repeatable) [default: every slot holding a key]
    #[arg(long = "slot", value_parser = parse::<Slot>)]
    pub slots: Vec<Slot>,
    /// Trusted attestation roots and intermediates (PEM) instead of Yubico's shipped bundle
    #[arg(long, value_name = "FILE")]
    pub attestation_roots: Option<PathBuf>,
}
// --- end `pivault attest` ---

/// Shells `pivault completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StationArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Station profile (TOML): credentials policy, allow-list, slots and subject templates
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    /// Report file: one JSON line per token, appended and fsynced
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/pivault/station-report.jsonl"
    )]
    pub report: PathBuf,
    /// Journal directory for crash recovery [default: $STATE_DIRECTORY or /var/lib/pivault/journal]
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Stop after this many tokens
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Stop when idle (no token in flight, no reader event) this many seconds
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<u64>,
    /// How long the station (at start) and each token wait for an unavailable Vault (sealed, down, electing a leader) before giving up
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub vault_wait: u64,
    /// Watch only this reader (exact PC/SC name; repeatable); all readers when absent
    #[arg(long = "reader", value_name = "NAME")]
    pub readers: Vec<String>,
    /// Re-key slots whose certificate already fits the profile (they are kept otherwise)
    #[arg(long)]
    pub force: bool,
    /// Attestation roots (PEM) replacing the shipped Yubico bundle and the profile's
    /// attestation_roots
    #[arg(long, value_name = "FILE")]
    pub attestation_roots: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RenewArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    /// Change nothing: print what is due and exit 10 if something is, 0 if not
    #[arg(long)]
    pub check: bool,
    /// Certify the existing key again instead of generating a new one
    #[arg(long)]
    pub reuse_key: bool,
    /// When a certificate is due: lifetime fraction elapsed (2/3, 0.75, 75%) or time left (30d)
    #[arg(long, default_value = "2/3", value_parser = parse::<Threshold>)]
    pub threshold: Threshold,
    /// Only these slots (default: every slot holding a certificate from the configured CA)
    #[arg(long = "slot", value_parser = parse::<Slot>)]
    pub slots: Vec<Slot>,
    /// Where unfinished renewals are journaled [default: $STATE_DIRECTORY, $XDG_STATE_HOME/pivault or ~/.local/state/pivault]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub login: CertLoginArgs,
}

/// How `renew` logs in (see [`pivault::config::CertLogin`]).
#[derive(Debug, Args, Clone, Default)]
pub struct CertLoginArgs {
    /// Vault login: approle (role_id + secret_id) or cert (the token's certificate, no secret on this machine) [env: PIVAULT_AUTH] [default: vault.auth, else approle]
    #[arg(long, value_parser = parse::<pivault::config::AuthMethod>)]
    pub auth: Option<pivault::config::AuthMethod>,
    /// Cert auth mount [env: PIVAULT_CERT_MOUNT] [default: cert]
    #[arg(long)]
    pub cert_mount: Option<String>,
    /// Cert auth role to log in with (Vault tries every matching one without it) [env: PIVAULT_CERT_ROLE]
    #[arg(long)]
    pub cert_role: Option<String>,
    /// Slot whose certificate logs in [env: PIVAULT_LOGIN_SLOT] [default: 9a]
    #[arg(long, value_parser = parse::<Slot>)]
    pub login_slot: Option<Slot>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct UnblockArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// File holding the new PIN, owner-only (`-` = stdin) [env: PIVAULT_NEW_PIN(_FILE)]; asked twice on a terminal otherwise
    #[arg(long, value_name = "FILE")]
    pub new_pin_file: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct TokenArgs {
    /// Token serial number
    #[arg(long)]
    pub serial: Option<u32>,
    /// PC/SC reader name
    #[arg(long)]
    pub reader: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct VaultArgs {
    /// Vault/OpenBao address (repeat for an HA cluster) [env: VAULT_ADDR]
    #[arg(long = "vault-addr", value_name = "URL")]
    pub addrs: Vec<String>,
    /// Vault Enterprise / OpenBao namespace [env: VAULT_NAMESPACE]
    #[arg(long)]
    pub namespace: Option<String>,
    /// CA bundle (PEM) for a Vault with a private CA [env: VAULT_CACERT]
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// DEVELOPMENT ONLY: do not verify Vault's TLS certificate
    #[arg(long)]
    pub tls_skip_verify: bool,
    /// PKI mount [env: PIVAULT_PKI_MOUNT] [default: pki]
    #[arg(long)]
    pub pki_mount: Option<String>,
    /// KV v2 mount [env: PIVAULT_KV_MOUNT] [default: yubikeys]
    #[arg(long)]
    pub kv_mount: Option<String>,
    /// AppRole auth mount [env: PIVAULT_APPROLE_MOUNT] [default: approle]
    #[arg(long)]
    pub approle_mount: Option<String>,
    /// AppRole role_id [env: PIVAULT_ROLE_ID]
    #[arg(long)]
    pub role_id: Option<String>,
    /// File holding the AppRole secret_id, owner-only (`-` = stdin) [env: PIVAULT_SECRET_ID(_FILE)]
    #[arg(long, value_name = "FILE")]
    pub secret_id_file: Option<PathBuf>,
    /// Issued certificates must chain to this CA (PEM) [env: PIVAULT_TRUST_ANCHOR]
    #[arg(long, value_name = "FILE")]
    pub trust_anchor: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct UnlockArgs {
    /// File holding the PIN, owner-only (`-` = stdin) [env: PIVAULT_PIN(_FILE)]
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// File holding the management key in hex, owner-only [env: PIVAULT_MGMT_KEY(_FILE)]
    #[arg(long, value_name = "FILE")]
    pub mgmt_key_file: Option<PathBuf>,
    /// Management key algorithm when the token cannot tell (3des, aes128, aes192, aes256)
    #[arg(long, value_name = "ALG", value_parser = parse::<MgmAlgorithm>)]
    pub mgmt_key_algorithm: Option<MgmAlgorithm>,
    /// Use the factory-default management key (a token still on it is unprotected)
    #[arg(long)]
    pub default_mgmt_key: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    /// Slot to enroll, repeatable: 9a, 9c, 9d, 9e, 82-95 or ykman's names, optionally
    /// with settings: 9c:algorithm=rsa2048,role=code-signing,pin-policy=always,touch-policy=never,cn=...,ttl=90d
    #[arg(long = "slot", value_name = "SLOT[:k=v,...]", value_parser = pivault::profile::parse_slot_flag)]
    pub slots: Vec<SlotSpec>,
    /// Profile file (TOML) with the slots and subject templates
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Key algorithm for slots that set none: p256 (default), p384, rsa2048, rsa3072, rsa4096, ed25519
    #[arg(long, value_parser = parse::<Algorithm>)]
    pub algorithm: Option<Algorithm>,
    /// PKI role for slots that set none (default per slot: 9a auth, 9c/9d email-signing, 9e/retired piv)
    #[arg(long, value_parser = parse::<Role>)]
    pub role: Option<Role>,
    /// PIN policy: default, never, once, always
    #[arg(long, value_parser = parse::<PinPolicy>)]
    pub pin_policy: Option<PinPolicy>,
    /// Touch policy: default, never, always, cached
    #[arg(long, value_parser = parse::<TouchPolicy>)]
    pub touch_policy: Option<TouchPolicy>,
    /// Certificate lifetime to request, e.g. 8760h (the role's default when absent)
    #[arg(long, value_parser = parse::<Ttl>)]
    pub ttl: Option<Ttl>,
    /// Subject common name (templates: {serial} and --var names)
    #[arg(long)]
    pub cn: Option<String>,
    /// E-mail address (subjectAltName)
    #[arg(long)]
    pub email: Option<String>,
    /// User principal name for smart-card logon (sent as Vault other_sans)
    #[arg(long)]
    pub upn: Option<String>,
    /// Template variable, repeatable: --var name=Jane
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Replace keys and certificates already in the slots
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation on a terminal
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Secure a factory token as the station does: random PUK and PIN-protected random
    /// management key, escrowed in Vault KV before they are applied; then the user's own
    /// PIN (typed twice, or PIVAULT_NEW_PIN / --new-pin-file), not escrowed
    #[arg(long)]
    pub secure: bool,
    /// File holding the user's new PIN for --secure (owner-only)
    #[arg(long, value_name = "FILE", requires = "secure")]
    pub new_pin_file: Option<PathBuf>,
    #[command(flatten)]
    pub attestation: AttestPolicyArgs,
}

// --- pivault doctor (h-doctor) ---

const DOCTOR_EXIT_CODES: &str = "\
Exit codes (the class of the first failed check; warnings do not fail):
  0  every check passed
  1  Vault refuses what pivault needs (a role missing from the policy or the PKI mount, KV not writable)
  2  configuration: Vault's TLS CA not trusted, namespace missing, AppRole credentials wrong or missing
  3  this machine needs a person: pcscd not reachable, no reader or token, a reader held by another program, clock skew
  4  Vault unavailable (down, sealed)";

#[derive(Debug, Args, Clone, Default)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Check only this reader (exact PC/SC name; repeatable); all readers when absent.
    /// Probing a reader ends another program's PIN session on its card.
    #[arg(long = "reader", value_name = "NAME")]
    pub readers: Vec<String>,
    /// Seconds a reader may take to answer before it counts as held by another program
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub card_timeout: u64,
    /// Seconds each Vault check may take, retries included
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub vault_timeout: u64,
    /// Check only this machine (pcscd, readers, tokens), not Vault
    #[arg(long, conflicts_with = "skip_local")]
    pub skip_vault: bool,
    /// Check only Vault, not this machine's readers and tokens
    #[arg(long)]
    pub skip_local: bool,
}

// ---- h-policy: attestation policy flags (issue 12, "Policy before signing") ----

/// A firmware version flag, e.g. 5.7.0.
fn parse_firmware(s: &str) -> Result<pivault::piv::FirmwareVersion, String> {
    pivault::attestation::parse_firmware(s)
}

/// A form factor name as in the profile: usb-a-keychain, usb-c-nano, usb-c-bio, ...
fn parse_form_factor(s: &str) -> Result<pivault::attestation::FormFactor, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_string())).map_err(|_| {
        format!(
            "form factor '{s}': use usb-a-keychain, usb-a-nano, usb-c-keychain, usb-c-nano, \
             usb-c-lightning, usb-a-bio or usb-c-bio"
        )
    })
}

/// What a generated key's attestation must show before it is sent to Vault; each flag
/// replaces the profile's `[attestation]` setting of the same name.
#[derive(Debug, Args, Clone, Default)]
pub struct AttestPolicyArgs {
    /// Refuse a key without a verified attestation (checked before Vault is asked)
    #[arg(long)]
    pub require_attestation: bool,
    /// Refuse tokens whose firmware is older, e.g. 5.7.0
    #[arg(long, value_name = "VERSION", value_parser = parse_firmware)]
    pub min_firmware: Option<pivault::piv::FirmwareVersion>,
    /// Allowed PIN policy of the attested key, repeatable: never, once, always
    #[arg(long = "pin-policy-allowed", value_name = "POLICY", value_parser = parse::<PinPolicy>)]
    pub pin_policy_allowed: Vec<PinPolicy>,
    /// Allowed touch policy of the attested key, repeatable: never, always, cached
    #[arg(long = "touch-policy-allowed", value_name = "POLICY", value_parser = parse::<TouchPolicy>)]
    pub touch_policy_allowed: Vec<TouchPolicy>,
    /// Allowed form factor, repeatable: usb-a-keychain, usb-c-nano, ...
    #[arg(long = "form-factor", value_name = "NAME", value_parser = parse_form_factor)]
    pub form_factors: Vec<pivault::attestation::FormFactor>,
    /// Require a FIPS edition token
    #[arg(long)]
    pub fips: bool,
    /// Attestation roots (PEM) replacing the shipped Yubico bundle
    #[arg(long, value_name = "FILE")]
    pub attestation_roots: Option<PathBuf>,
    /// Also put the attestation under 1.3.6.1.4.1.41482.3.11 in the request, where
    /// yubico-piv-tool up to 2.6 wrote it
    #[arg(long)]
    pub csr_attestation_legacy_oid: bool,
    /// Refuse a certificate whose key usage does not fit the slot (default: a warning;
    /// the PKI role decides the usages)
    #[arg(long)]
    pub strict_usage: bool,
    /// Do not have the token attest generated keys (saves about 250 ms per key on a
    /// YubiKey 5); the request then carries no attestation. Refused with any attestation
    /// policy
    #[arg(long)]
    pub no_attestation: bool,
}

impl AttestPolicyArgs {
    /// The profile's policy with these flags applied over it.
    pub fn over(
        &self,
        mut p: pivault::attestation::AttestationPolicy,
    ) -> pivault::attestation::AttestationPolicy {
        p.require |= self.require_attestation;
        p.fips_only |= self.fips;
        if self.min_firmware.is_some() {
            p.min_firmware = self.min_firmware;
        }
        if !self.pin_policy_allowed.is_empty() {
            p.allowed_pin_policies = self.pin_policy_allowed.clone();
        }
        if !self.touch_policy_allowed.is_empty() {
            p.allowed_touch_policies = self.touch_policy_allowed.clone();
        }
        if !self.form_factors.is_empty() {
            p.form_factors = self.form_factors.clone();
        }
        p
    }
}
