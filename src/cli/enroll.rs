//! `pivault enroll`.

use super::args::{Cli, EnrollArgs};
use super::secrets::{self, Source};
use pivault::enroll::{self, Context, MgmKeySource, Plan};
use pivault::error::exit;
use pivault::escrow::Escrow;
use pivault::piv::yubikey::YubiKeyToken;
use pivault::piv::{PivToken, Slot};
use pivault::profile::{self, Defaults, Profile, SlotSpec};
use pivault::secret::MgmKeyHex;
use pivault::workflow::attest::AttestSetup;
use pivault::Error;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;

pub(super) fn ask(label: &str, default: Option<&str>) -> Result<String, Error> {
    match default {
        Some(d) => eprint!("{label} [{d}]: "),
        None => eprint!("{label}: "),
    }
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Usage(format!("reading an answer: {e}")))?;
    let line = line.trim().to_string();
    Ok(if line.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        line
    })
}

/// Slot specs and defaults from the profile file and the flags (flags win).
fn specs_and_defaults(a: &EnrollArgs) -> Result<(Vec<SlotSpec>, Defaults), Error> {
    let prof = match &a.profile {
        Some(p) => Profile::from_toml(&pivault::config::read_text(p, "profile")?)?,
        None => Profile::default(),
    };
    let mut specs = prof.slots.clone();
    if !a.slots.is_empty() {
        specs = a.slots.clone();
    }
    let defaults = Defaults {
        algorithm: a.algorithm.or(prof.algorithm),
        role: a.role,
        pin_policy: a.pin_policy,
        touch_policy: a.touch_policy,
        ttl: a.ttl.clone().or(prof.ttl),
        common_name: a.cn.clone().or(prof.common_name),
        email: a.email.clone().or(prof.email),
        upn: a.upn.clone().or(prof.upn),
    };
    Ok((specs, defaults))
}

/// The attestation bundle and policy (the profile's `[attestation]`, flags over it), and
/// whether usage mismatches are refused (`strict_usage` in the profile, or the flag).
fn attest_setup(a: &EnrollArgs) -> Result<(AttestSetup, bool), Error> {
    let prof = match &a.profile {
        Some(p) => Profile::from_toml(
            &std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("cannot read profile {}: {e}", p.display())))?,
        )?,
        None => Profile::default(),
    };
    let f = &a.attestation;
    let roots = f.attestation_roots.clone().or(prof.attestation_roots);
    let policy = f.over(prof.attestation);
    if f.no_attestation && policy != pivault::attestation::AttestationPolicy::default() {
        return Err(Error::Usage(
            "--no-attestation cannot go with an attestation policy (flags or the profile's \
             [attestation]): the policy is checked on the attestation"
                .into(),
        ));
    }
    let mut s = AttestSetup::load(roots.as_deref(), policy)?;
    s.csr_legacy_oid = f.csr_attestation_legacy_oid;
    s.skip = f.no_attestation;
    Ok((s, f.strict_usage || prof.strict_usage))
}

fn vars_of(a: &EnrollArgs) -> Result<BTreeMap<String, String>, Error> {
    a.vars
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| Error::Usage(format!("--var {kv}: expected NAME=VALUE")))
        })
        .collect()
}

/// At a terminal with no slots given: ask for them, showing defaults.
fn ask_plan(defaults: &mut Defaults) -> Result<Vec<SlotSpec>, Error> {
    let slots = ask("Slots to enroll (comma-separated)", Some("9a"))?;
    let mut specs = Vec::new();
    for s in slots.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let slot: Slot = s.parse().map_err(Error::Usage)?;
        let role = ask(
            &format!("  role for slot {slot}"),
            Some(slot.default_role().name()),
        )?;
        let alg = ask(
            &format!("  algorithm for slot {slot}"),
            Some(defaults.algorithm.map(|a| a.name()).unwrap_or("p256")),
        )?;
        let mut spec = SlotSpec::new(slot);
        spec.role = Some(role.parse().map_err(Error::Usage)?);
        spec.algorithm = Some(alg.parse().map_err(Error::Usage)?);
        specs.push(spec);
    }
    if defaults.common_name.is_none() {
        let cn = ask("Subject common name", None)?;
        defaults.common_name = Some(cn);
    }
    if defaults.email.is_none() {
        let e = ask("E-mail address (empty for none)", Some(""))?;
        defaults.email = Some(e).filter(|e| !e.is_empty());
    }
    if defaults.upn.is_none() {
        let u = ask("User principal name (empty for none)", Some(""))?;
        defaults.upn = Some(u).filter(|u| !u.is_empty());
    }
    Ok(specs)
}

fn describe_plan(plan: &Plan, token: &dyn PivToken) -> String {
    let i = token.info();
    let mut s = format!(
        "Plan for token {} (firmware {}, reader '{}'){}:\n",
        i.serial,
        i.version,
        i.reader,
        if plan.force {
            " — REPLACING what the slots hold"
        } else {
            ""
        }
    );
    for sp in &plan.slots {
        s.push_str(&format!(
            "  slot {} ({}): new {} key, PIN policy {}, touch policy {}, role {}, CN={}{}{}\n",
            sp.slot,
            sp.slot.name(),
            sp.algorithm,
            sp.pin_policy,
            sp.touch_policy,
            sp.role,
            sp.subject.common_name,
            sp.subject
                .email
                .as_ref()
                .map(|e| format!(", e-mail {e}"))
                .unwrap_or_default(),
            sp.subject
                .upn
                .as_ref()
                .map(|u| format!(", UPN {u}"))
                .unwrap_or_default(),
        ));
    }
    s
}

pub fn run(cli: &Cli, a: &EnrollArgs) -> Result<ExitCode, Error> {
    // 1. Everything that can be checked without the token or Vault.
    let file = super::load_config(cli)?;
    let settings = super::vault_settings(&file, &a.vault)?;
    let (mut specs, mut defaults) = specs_and_defaults(a)?;
    let mut vars = vars_of(a)?;
    let interactive = secrets::interactive() && !cli.json;
    // At a counter (a terminal, no slots given) the token comes first: shown, then asked
    // for; the slots after (src/cli/helpdesk.rs).
    let mut counter = None;
    if specs.is_empty() {
        if !interactive {
            return Err(Error::Usage(
                "no slot given: use --slot (repeatable) or --profile; run on a terminal to be asked"
                    .into(),
            ));
        }
        match super::helpdesk::counter_token(super::selector(&a.token)?)? {
            Some(t) => counter = Some(t),
            None => {
                eprintln!("nothing done");
                return Ok(ExitCode::from(exit::USAGE));
            }
        }
        specs = ask_plan(&mut defaults)?;
    }
    let mgm_alg = a.unlock.mgmt_key_algorithm;
    // Parse everything in the specs once with a stand-in serial so that a typo is refused
    // before the token is opened.
    vars.entry("serial".into()).or_insert_with(|| "0".into());
    let roles: Vec<_> = profile::resolve(&specs, &defaults, &vars)?
        .iter()
        .map(|sp| sp.role)
        .collect();

    // 2. Vault: the login and a pre-flight request per role go now, on another thread,
    // while the token is opened and unlocked; their answers are awaited before anything
    // on the token that could not be undone (so a wrong secret_id, a dead server or a
    // role the policy lacks still changes nothing) and before the user is asked anything.
    let issuer = std::sync::Arc::new(super::login_later(&settings)?);
    let preflight = pivault::workflow::Preflight::start(issuer.clone(), &roles);
    if interactive {
        preflight.settle()?;
    }

    // 3. The token, and the plan for it. At a counter with several tokens present and
    // none named, list them and ask which.
    let mut sel = super::selector(&a.token)?;
    if counter.is_none() && interactive && sel.serial.is_none() && sel.reader.is_none() {
        let tokens = pivault::piv::yubikey::list()?;
        if tokens.len() > 1 {
            let t = super::helpdesk::pick_token(&tokens)?;
            sel.serial = Some(t.serial);
            sel.reader = Some(t.reader.clone());
        }
    }
    let mut token = match counter {
        Some(t) => t,
        None => YubiKeyToken::open(&sel)?,
    };
    vars.insert("serial".into(), token.info().serial.to_string());
    let plan = Plan {
        slots: profile::resolve(&specs, &defaults, &vars)?,
        force: a.force,
    };
    plan.validate()?;
    plan.check_token(&token)?;
    // Occupied slots are refused here, before the question, the PIN and --secure: a token
    // in use is never changed by accident (enroll::enroll checks again after unlocking).
    if !plan.force {
        for sp in &plan.slots {
            if let Some(what) = enroll::occupant(&mut token, sp.slot)? {
                return Err(Error::SlotOccupied {
                    slot: sp.slot,
                    what,
                });
            }
        }
    }
    if !cli.json {
        eprint!("{}", describe_plan(&plan, &token));
    }
    if interactive && !a.yes {
        let yes = ask("Proceed? (y/N)", Some("N"))?;
        let mut go = yes.eq_ignore_ascii_case("y") || yes.eq_ignore_ascii_case("yes");
        if go && a.force {
            go = super::helpdesk::confirm_replace(token.info().serial)?;
        }
        if !go {
            eprintln!("nothing done");
            return Ok(ExitCode::from(exit::USAGE));
        }
    }

    let mut progress = super::progress::Progress::new(cli.json);
    let pin = if a.secure {
        preflight.settle()?;
        let user_pin = super::helpdesk::user_pin(a.new_pin_file.clone())?;
        let esc = Escrow {
            client: issuer.client(),
            by: format!("pivault enroll --secure on {}", super::host_name()),
        };
        progress.begin("escrowing a new PUK and management key in Vault, then applying them");
        let s = pivault::credentials::secure_for_user(&mut token, &esc, 8, &user_pin)?;
        progress.done();
        if !cli.json {
            eprintln!(
                "token {}: random PUK and PIN-protected {} management key set (escrow record \
                 version {}); the user's PIN is set",
                s.token_serial, s.mgmt_key_algorithm, s.escrow_version
            );
        }
        user_pin
    } else {
        if interactive && token.mgm_key_state()?.default == Some(true) {
            eprintln!(
                "warning: token {} stays on the factory management key: anyone holding it can \
                 replace its keys and certificates; run with --secure to do what the station does",
                token.info().serial
            );
        }
        super::read_pin(&a.unlock)?
    };
    let mgm_file = a.unlock.mgmt_key_file.clone();
    let default_ok = a.unlock.default_mgmt_key;
    let mut ask_mgm = move || -> Result<MgmKeySource, Error> {
        let src = Source {
            what: "management key (hex)",
            env: "PIVAULT_MGMT_KEY",
            file: mgm_file.clone(),
        };
        if let Some(k) = secrets::read(&src)? {
            return Ok(MgmKeySource::Given(MgmKeyHex::new(k.as_str()), None));
        }
        if default_ok {
            return Ok(MgmKeySource::FactoryDefault);
        }
        if secrets::interactive() {
            return Ok(MgmKeySource::Given(
                MgmKeyHex::new(secrets::prompt("Management key (hex): ")?.as_str()),
                None,
            ));
        }
        Err(Error::Usage(
            "the token keeps no PIN-protected management key: set PIVAULT_MGMT_KEY or \
             PIVAULT_MGMT_KEY_FILE, or pass --default-mgmt-key for a token still on the factory key"
                .into(),
        ))
    };

    let anchors_der = issuer.anchors_der()?;
    if anchors_der.is_empty() {
        log::warn!(
            "no trust anchor configured: certificates are checked against the chain Vault \
             returns; set --trust-anchor or PIVAULT_TRUST_ANCHOR to the PKI's root CA"
        );
    }
    let (attest_setup, strict_usage) = attest_setup(a)?;
    let ctx = Context {
        issuer: &*issuer,
        anchors_der,
        preflight: &preflight,
        attestation: Some(&attest_setup),
        strict_usage,
    };
    let outcome = enroll::enroll(
        &mut token,
        &ctx,
        &plan,
        &pin,
        mgm_alg,
        &mut ask_mgm,
        &mut progress,
    )?;
    progress.done();
    log::info!(
        "Vault: {} requests, {} AppRole login(s)",
        issuer.stats().requests,
        issuer.stats().logins
    );
    if cli.json {
        super::print_json(&outcome.report)?;
    } else {
        print!("{}", outcome.report.to_text());
    }
    if let Some(e) = &outcome.fatal {
        return Ok(super::fail(e, false));
    }
    Ok(ExitCode::from(if outcome.report.ok {
        exit::OK
    } else {
        exit::FAILED
    }))
}
