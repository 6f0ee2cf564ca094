//! The attestation step of the per-token workflow: right after a key is generated, the
//! token attests it (ATTEST, Yubico INS F9), pivault verifies the chain and that the
//! attested key and serial are the ones it just generated on this token, and the
//! attestation policy decides before anything is sent to Vault.
//!
//! What is refused and when (issue 12, "Policy before signing"):
//! - before a key is generated, what the plan already says: the firmware the token
//!   reports against `min_firmware`, an explicit PIN/touch policy against the allowed
//!   lists ([`precheck`]); nothing on the token has changed then;
//! - after the key is generated, what only the attestation proves (firmware, policies the
//!   card really applied, form factor, edition, known-vulnerable firmware) ([`attest_key`]).
//!
//! An attestation that does not verify (no attestation on the firmware, a chain to a root
//! outside the bundle) is a warning unless the policy requires attestation. An attested
//! key that is not the generated one, or a serial that is not the token's, is always
//! refused: it can only come from a token (or a reader) that is lying.

use crate::attestation::{
    self, Attestation, AttestationError, AttestationPolicy, PolicyRefusal, TrustBundle,
};
use crate::enroll::SlotPlan;
use crate::error::Error;
use crate::piv::{FirmwareVersion, PinPolicy, PivToken, Slot, TokenError, TouchPolicy};
use der::Encode;
use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;
use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Attestation settings of a run: the trust bundle, the policy, CSR options.
#[derive(Debug, Clone)]
pub struct AttestSetup {
    pub bundle: TrustBundle,
    pub policy: AttestationPolicy,
    /// Also write the attestation under 41482.3.11 in the CSR, as yubico-piv-tool did.
    pub csr_legacy_oid: bool,
    /// Do not ask the token to attest generated keys (`--no-attestation`): saves an ATTEST
    /// per key (about 250 ms on a YubiKey 5); only without a policy to check.
    pub skip: bool,
}

impl AttestSetup {
    /// `--attestation-roots FILE` (else the shipped Yubico bundle) and a policy.
    pub fn load(roots: Option<&Path>, policy: AttestationPolicy) -> Result<AttestSetup, Error> {
        let bundle = TrustBundle::load(roots).map_err(|e| Error::Config(e.to_string()))?;
        Ok(AttestSetup {
            bundle,
            policy,
            csr_legacy_oid: false,
            skip: false,
        })
    }

    /// The shipped bundle and an empty policy: attest, report, refuse nothing but a lie.
    pub fn shipped() -> &'static AttestSetup {
        static S: OnceLock<AttestSetup> = OnceLock::new();
        S.get_or_init(|| AttestSetup {
            bundle: TrustBundle::yubico(),
            policy: AttestationPolicy::default(),
            csr_legacy_oid: false,
            skip: false,
        })
    }
}

/// A key's verified attestation, as carried into the CSR, the report and the escrow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttestation {
    pub attestation_der: Vec<u8>,
    pub f9_der: Vec<u8>,
    pub verified: Attestation,
}

/// The F9 certificate, read once per token (the workflow keeps it across slots).
#[derive(Debug, Default)]
pub struct F9Cache(Option<Option<Vec<u8>>>);

impl F9Cache {
    fn get(&mut self, token: &mut dyn PivToken) -> Result<Option<Vec<u8>>, TokenError> {
        if let Some(c) = &self.0 {
            return Ok(c.clone());
        }
        let c = token.attestation_certificate()?;
        self.0 = Some(c.clone());
        Ok(c)
    }
}

fn refused(slot: Option<Slot>, refusal: PolicyRefusal) -> Error {
    Error::Policy { slot, refusal }
}

/// What the plan already tells, refused before any key is generated.
pub fn precheck(
    policy: &AttestationPolicy,
    version: FirmwareVersion,
    slots: &[SlotPlan],
) -> Result<(), Error> {
    if let Some(min) = policy.min_firmware {
        if version < min {
            return Err(refused(
                None,
                PolicyRefusal::FirmwareTooOld {
                    firmware: version,
                    min,
                },
            ));
        }
    }
    for sp in slots {
        // "default" leaves the choice to the card (per slot and firmware): only the
        // attestation can tell, after generation.
        if sp.pin_policy != PinPolicy::Default
            && !policy.allowed_pin_policies.is_empty()
            && !policy.allowed_pin_policies.contains(&sp.pin_policy)
        {
            return Err(refused(
                Some(sp.slot),
                PolicyRefusal::PinPolicy {
                    got: sp.pin_policy,
                    allowed: policy.allowed_pin_policies.clone(),
                },
            ));
        }
        if sp.touch_policy != TouchPolicy::Default
            && !policy.allowed_touch_policies.is_empty()
            && !policy.allowed_touch_policies.contains(&sp.touch_policy)
        {
            return Err(refused(
                Some(sp.slot),
                PolicyRefusal::TouchPolicy {
                    got: sp.touch_policy,
                    allowed: policy.allowed_touch_policies.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// Attest the key just generated in `slot`, verify it, apply the policy. `Ok(None)`: no
/// verified attestation, and the policy does not require one (a warning is logged).
pub fn attest_key(
    token: &mut dyn PivToken,
    setup: &AttestSetup,
    f9: &mut F9Cache,
    slot: Slot,
    key: &SubjectPublicKeyInfoOwned,
) -> Result<Option<KeyAttestation>, Error> {
    if setup.skip {
        return Ok(None);
    }
    let serial = token.info().serial;
    let missing = |why: String| -> Result<Option<KeyAttestation>, Error> {
        setup
            .policy
            .check_missing(&why)
            .map_err(|r| refused(Some(slot), r))?;
        log::warn!("token {serial} slot {slot}: no verified attestation: {why}");
        Ok(None)
    };
    let attestation_der = match token.attest(slot) {
        Ok(Some(d)) => d,
        Ok(None) => return missing("the token refused to attest the generated key".into()),
        Err(TokenError::NotSupported { .. }) => {
            return missing(format!(
                "firmware {} cannot attest keys",
                token.info().version
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let f9_der = match f9.get(token) {
        Ok(Some(d)) => d,
        Ok(None) => return missing("the token has no F9 attestation certificate".into()),
        Err(TokenError::NotSupported { .. }) => {
            return missing("the token cannot read its F9 certificate".into())
        }
        Err(e) => return Err(e.into()),
    };
    let expected = key.to_der().map_err(|e| {
        Error::Csr(crate::csr::CsrError::Encoding(format!(
            "generated public key: {e}"
        )))
    })?;
    let verified = match attestation::verify_generated_key(
        &attestation_der,
        &f9_der,
        &setup.bundle,
        SystemTime::now(),
        &expected,
        serial,
    ) {
        Ok(a) => a,
        // The token attested another key or another token: never a mere warning.
        Err(
            e @ (AttestationError::PublicKeyMismatch { .. }
            | AttestationError::SerialMismatch { .. }),
        ) => {
            return Err(Error::Attestation {
                slot: Some(slot),
                source: e,
            })
        }
        Err(e) => return missing(e.to_string()),
    };
    setup
        .policy
        .check(&verified)
        .map_err(|r| refused(Some(slot), r))?;
    for a in verified.advisories() {
        log::warn!("token {serial} slot {slot}: {a} ({})", a.url());
    }
    Ok(Some(KeyAttestation {
        attestation_der,
        f9_der,
        verified,
    }))
}

/// The attestation as reported (`--json`) and kept in the escrow record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AttestationFacts {
    pub token_serial: Option<u32>,
    pub firmware: String,
    pub pin_policy: String,
    pub touch_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_factor: Option<attestation::FormFactor>,
    pub edition: attestation::Edition,
    pub root: String,
    #[serde(default)]
    pub advisories: Vec<String>,
    /// The slot attestation certificate, PEM.
    pub attestation_pem: String,
    /// The F9 certificate that signed it, PEM.
    pub f9_pem: String,
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl KeyAttestation {
    pub fn facts(&self) -> AttestationFacts {
        let v = &self.verified;
        AttestationFacts {
            token_serial: v.serial,
            firmware: v.firmware.to_string(),
            pin_policy: v.pin_policy.to_string(),
            touch_policy: v.touch_policy.to_string(),
            form_factor: v.form_factor,
            edition: v.edition,
            root: v.root.clone(),
            advisories: v.advisories().iter().map(|a| a.id().to_string()).collect(),
            attestation_pem: pem(&self.attestation_der),
            f9_pem: pem(&self.f9_der),
        }
    }

    pub fn for_csr(&self, legacy_oid: bool) -> crate::csr::CsrAttestation<'_> {
        crate::csr::CsrAttestation {
            attestation_der: &self.attestation_der,
            f9_der: &self.f9_der,
            legacy_oid,
        }
    }
}
