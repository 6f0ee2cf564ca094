//! Enrollment profiles: which slots get which key, role and subject. A profile comes from
//! a TOML file or from `--slot` flags; subjects may use templates such as `{serial}`.

use crate::csr::Subject;
use crate::enroll::{SlotPlan, Ttl};
use crate::error::Error;
use crate::piv::{Algorithm, PinPolicy, Role, Slot, TouchPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One slot as written in a profile, before templates are filled in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub slot: Slot,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub pin_policy: Option<PinPolicy>,
    #[serde(default)]
    pub touch_policy: Option<TouchPolicy>,
    #[serde(default)]
    pub ttl: Option<Ttl>,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
}

/// A profile file: defaults for every slot, then the slots.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub ttl: Option<Ttl>,
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotSpec>,
    /// Attestation bundle replacing the shipped Yubico one; `--attestation-roots` wins.
    #[serde(default)]
    pub attestation_roots: Option<std::path::PathBuf>,
    /// What an attested key must meet before it is sent to Vault (issue 12).
    #[serde(default)]
    pub attestation: crate::attestation::AttestationPolicy,
    /// Refuse certificates whose key usage does not fit the slot (default: a warning).
    #[serde(default)]
    pub strict_usage: bool,
}

impl Profile {
    pub fn from_toml(text: &str) -> Result<Profile, Error> {
        toml::from_str(text).map_err(|e| Error::Config(format!("profile: {e}")))
    }
}

impl SlotSpec {
    /// A slot with every setting left to the defaults.
    pub fn new(slot: Slot) -> SlotSpec {
        SlotSpec {
            slot,
            algorithm: None,
            role: None,
            pin_policy: None,
            touch_policy: None,
            ttl: None,
            common_name: None,
            email: None,
            upn: None,
        }
    }
}

/// Parse `--slot` values: `9a` or `9a:algorithm=rsa2048,role=auth,pin-policy=once` (a
/// clap value parser: every value is typed here, at the edge).
pub fn parse_slot_flag(s: &str) -> Result<SlotSpec, Error> {
    let (slot, rest) = s.split_once(':').unwrap_or((s, ""));
    let mut spec = SlotSpec::new(slot.parse().map_err(Error::Usage)?);
    for kv in rest.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--slot {s}: '{kv}' is not key=value")))?;
        let typed = |e: String| Error::Usage(format!("--slot {s}: {e}"));
        match k.trim().replace('_', "-").as_str() {
            "algorithm" | "alg" => spec.algorithm = Some(v.parse().map_err(typed)?),
            "role" => spec.role = Some(v.parse().map_err(typed)?),
            "pin-policy" => spec.pin_policy = Some(v.parse().map_err(typed)?),
            "touch-policy" => spec.touch_policy = Some(v.parse().map_err(typed)?),
            "ttl" => spec.ttl = Some(v.parse().map_err(typed)?),
            "cn" | "common-name" => spec.common_name = Some(v.to_string()),
            "email" => spec.email = Some(v.to_string()),
            "upn" => spec.upn = Some(v.to_string()),
            other => {
                return Err(Error::Usage(format!(
                    "--slot {s}: unknown setting '{other}' (algorithm, role, pin-policy, \
                     touch-policy, ttl, cn, email, upn)"
                )))
            }
        }
    }
    Ok(spec)
}

/// Fill `{name}` placeholders from `vars`; `{{` and `}}` are literal braces. An unknown
/// placeholder is an error, never an empty string.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let value = vars.get(name.trim()).ok_or_else(|| {
                    Error::Usage(format!(
                        "template '{template}' uses {{{name}}}, which is not known here (known: {})",
                        vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                out.push_str(value);
            }
            '}' => {
                return Err(Error::Usage(format!(
                    "template '{template}' has a lone '}}'"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Defaults that apply to slots that do not set their own (flags or profile top level).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub algorithm: Option<Algorithm>,
    pub role: Option<Role>,
    pub pin_policy: Option<PinPolicy>,
    pub touch_policy: Option<TouchPolicy>,
    pub ttl: Option<Ttl>,
    pub common_name: Option<String>,
    pub email: Option<String>,
    pub upn: Option<String>,
}

/// Turn specs into a plan: parse names, apply defaults, render subject templates.
pub fn resolve(
    specs: &[SlotSpec],
    defaults: &Defaults,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<SlotPlan>, Error> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let slot = spec.slot;
        fn pick<T: Clone>(own: &Option<T>, dflt: &Option<T>) -> Option<T> {
            own.clone().or_else(|| dflt.clone())
        }
        let algorithm = pick(&spec.algorithm, &defaults.algorithm).unwrap_or(Algorithm::P256);
        let role = pick(&spec.role, &defaults.role).unwrap_or(slot.default_role());
        let pin_policy = pick(&spec.pin_policy, &defaults.pin_policy).unwrap_or(PinPolicy::Default);
        let touch_policy =
            pick(&spec.touch_policy, &defaults.touch_policy).unwrap_or(TouchPolicy::Default);
        let fill = |t: Option<String>| -> Result<Option<String>, Error> {
            t.map(|t| render(&t, vars))
                .transpose()
                .map(|v| v.filter(|s| !s.trim().is_empty()))
        };
        let common_name =
            fill(pick(&spec.common_name, &defaults.common_name))?.ok_or_else(|| {
                Error::Usage(format!(
                    "slot {slot}: no common name (give --cn or common_name in the profile)"
                ))
            })?;
        out.push(SlotPlan {
            slot,
            algorithm,
            pin_policy,
            touch_policy,
            role,
            subject: Subject {
                common_name,
                email: fill(pick(&spec.email, &defaults.email))?,
                // A UPN is for smart-card logon: a run-wide one goes to the auth role's
                // slots only (other roles refuse the otherName); a slot's own is kept.
                upn: fill(if spec.upn.is_some() || role == Role::Auth {
                    pick(&spec.upn, &defaults.upn)
                } else {
                    None
                })?,
            },
            ttl: pick(&spec.ttl, &defaults.ttl),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("serial", "123"), ("name", "Jane")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates() {
        assert_eq!(render("yk-{serial}", &vars()).ok(), Some("yk-123".into()));
        assert_eq!(
            render("{{x}} {name}", &vars()).ok(),
            Some("{x} Jane".into())
        );
        assert!(render("{nope}", &vars()).is_err());
        assert!(render("a}b", &vars()).is_err());
    }

    #[test]
    fn slot_flags_and_defaults() {
        let s = parse_slot_flag("9c:alg=rsa2048,role=code-signing").expect("spec");
        assert_eq!(s.algorithm, Some(Algorithm::Rsa2048));
        assert!(parse_slot_flag("9c:bogus=1").is_err());
        assert!(parse_slot_flag("9c:ttl=1y").is_err());
        assert!(parse_slot_flag("9z").is_err());
        assert!(parse_slot_flag("9c:alg").is_err());
        let d = Defaults {
            common_name: Some("user {serial}".into()),
            ..Default::default()
        };
        let plans = resolve(&[s, parse_slot_flag("9a").expect("9a")], &d, &vars()).expect("plan");
        assert_eq!(plans[0].role, Role::CodeSigning);
        assert_eq!(plans[0].algorithm, Algorithm::Rsa2048);
        assert_eq!(plans[1].role, Role::Auth);
        assert_eq!(plans[1].algorithm, Algorithm::P256);
        assert_eq!(plans[1].subject.common_name, "user 123");
        assert!(resolve(
            &[parse_slot_flag("9a").expect("9a")],
            &Defaults::default(),
            &vars()
        )
        .is_err());
    }

    #[test]
    fn profile_file() {
        let p = Profile::from_toml(
            r#"
            common_name = "{name}"
            [[slot]]
            slot = "9a"
            [[slot]]
            slot = "9d"
            algorithm = "p384"
            "#,
        )
        .expect("profile");
        assert_eq!(p.slots.len(), 2);
        assert!(Profile::from_toml("[[slot]]\nslot='9a'\ncolour='red'").is_err());
        assert!(Profile::from_toml("[[slot]]\nslot='9a'\nalgorithm='rsa1024'").is_err());
    }
}
