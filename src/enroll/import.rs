//! Checking a certificate Vault issued, and writing it into the slot (separate steps: a
//! staged key is moved into its slot between them, see `staged`).

use super::{Context, Issued, SlotPlan};
use crate::error::Error;
use crate::piv::{PivToken, Slot};
use crate::verify::{self, Accepted, Expectation};
use spki::SubjectPublicKeyInfoOwned;
use std::time::SystemTime;

/// Verify an issued certificate against the key and chain, and write it.
pub fn import_issued(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    sp: &SlotPlan,
    key: &SubjectPublicKeyInfoOwned,
    issued: &Issued,
) -> Result<(Accepted, Vec<String>), Error> {
    let (cert_der, accepted, warnings) = check_issued(ctx, sp, key, issued)?;
    write_checked(token, sp.slot, &cert_der)?;
    Ok((accepted, warnings))
}

/// Write a checked certificate into the slot. No read-back: the PUT DATA answers 9000
/// only once the object is stored (SP 800-73-4 part 2, 3.3.2; ISO 7816-4 chaining), so
/// reading it again would cost four APDUs and prove nothing the status word did not.
pub fn write_checked(token: &mut dyn PivToken, slot: Slot, cert_der: &[u8]) -> Result<(), Error> {
    token.write_certificate(slot, cert_der)?;
    Ok(())
}

/// Verify an issued certificate against the key and chain, without touching the token:
/// its DER, the facts and the warnings.
pub fn check_issued(
    ctx: &Context<'_>,
    sp: &SlotPlan,
    key: &SubjectPublicKeyInfoOwned,
    issued: &Issued,
) -> Result<(Vec<u8>, Accepted, Vec<String>), Error> {
    let bad = |source| Error::Verify {
        slot: sp.slot,
        source,
    };
    let cert_der = verify::pem_bundle_to_der(&issued.certificate_pem)
        .map_err(bad)?
        .into_iter()
        .next()
        .ok_or(bad(verify::VerifyError::Parse(
            "no certificate in Vault's answer".into(),
        )))?;
    let mut chain_der = Vec::new();
    for pem in &issued.chain_pem {
        chain_der.extend(verify::pem_bundle_to_der(pem).map_err(bad)?);
    }
    let accepted = verify::check(
        &cert_der,
        &Expectation {
            slot: sp.slot,
            role: sp.role,
            public_key: key,
            chain_der: &chain_der,
            anchors_der: &ctx.anchors_der,
            now: SystemTime::now(),
            strict_usage: ctx.strict_usage,
        },
    )
    .map_err(bad)?;
    // It names exactly what was asked (CN, e-mail, UPN); what the role added beyond the
    // request (EKUs, SANs) is reported, not refused.
    let name = sp.subject.name()?;
    let asked = verify::AskedNames {
        subject: &name,
        email: sp.subject.email.as_deref(),
        upn: sp.subject.upn.as_deref(),
    };
    let mut warnings: Vec<String> = verify::check_identity(&cert_der, &asked, sp.role)
        .map_err(bad)?
        .iter()
        .map(|w| w.to_string())
        .collect();
    // Issue 10 defect 6: a usage the administrator's role chose is reported, not refused
    // (strict usage refused it in `check` above).
    warnings.extend(verify::usage_warning(&cert_der, sp.slot, key));
    for w in &warnings {
        log::warn!("slot {}: {w}", sp.slot);
    }
    Ok((cert_der, accepted, warnings))
}
