//! `--timing yubikey5`: on-card operations take about as long as on a YubiKey 5, so
//! benchmarks against the virtual card mean something. Without it, the card answers as
//! fast as the host computes.
//!
//! Every figure below is ours to defend; where no published measurement was found it is
//! marked ASSUMPTION (an order of magnitude from public reports of YubiKey 5 PIV use,
//! not a measurement). Replace with measured values when a real token is at hand
//! (`hardware-tests/` can time them).

use std::time::Duration;

use crate::firmware::alg;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// As fast as the host computes.
    Instant,
    /// About as slow as a YubiKey 5.
    YubiKey5,
}

/// What the card is about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// PIN / PUK comparison (VERIFY, CHANGE REFERENCE, RESET RETRY).
    Verify,
    /// Key generation with this algorithm.
    Generate(u8),
    /// IMPORT KEY.
    Import,
    /// ECDSA / EdDSA signature or ECDH with this algorithm.
    Sign(u8),
    /// RSA private key operation (sign or decrypt) with this algorithm.
    RsaPrivate(u8),
    /// ATTEST: build and sign a certificate with the f9 key.
    Attest,
    /// PUT DATA: a flash write of up to 3 KB.
    Write,
}

impl Timing {
    pub fn parse(s: &str) -> Result<Timing, String> {
        match s {
            "none" | "instant" => Ok(Timing::Instant),
            "yubikey5" => Ok(Timing::YubiKey5),
            _ => Err(format!("{s:?}: timing profiles are `yubikey5` and `none`")),
        }
    }

    /// How long `op` takes on this profile (`None`: no added delay).
    pub fn duration(&self, op: Op) -> Option<Duration> {
        if *self == Timing::Instant {
            return None;
        }
        let ms = match op {
            // ASSUMPTION: PIN checks are a few tens of ms (constant-time compare and a
            // retry-counter write to flash).
            Op::Verify => 20,
            // RSA key generation: Yubico documents it as slow ("can take a few seconds",
            // developers.yubico.com PIV guides); reports for YubiKey 5 RSA-2048 range over
            // 1–10 s with a mean around 4 s. ASSUMPTION for the exact values.
            Op::Generate(alg::RSA1024) => 1_000,
            Op::Generate(alg::RSA2048) => 4_000,
            Op::Generate(alg::RSA3072) => 20_000,
            Op::Generate(alg::RSA4096) => 45_000,
            // ASSUMPTION: EC / Edwards key generation ~0.1 s (P-384 slower).
            Op::Generate(alg::P384) => 150,
            Op::Generate(_) => 90,
            // ASSUMPTION: import is a flash write plus key checks.
            Op::Import => 100,
            // ASSUMPTION: ECDSA P-256 / Ed25519 / X25519 ~60 ms, P-384 ~110 ms.
            Op::Sign(alg::P384) => 110,
            Op::Sign(_) => 60,
            // ASSUMPTION: RSA private operations, CRT, on the YubiKey 5's secure element.
            Op::RsaPrivate(alg::RSA1024) => 45,
            Op::RsaPrivate(alg::RSA3072) => 500,
            Op::RsaPrivate(alg::RSA4096) => 1_100,
            Op::RsaPrivate(_) => 180,
            // ASSUMPTION: attestation = one signature with f9 plus certificate assembly.
            Op::Attest => 250,
            // ASSUMPTION: a 1–3 KB flash write.
            Op::Write => 60,
        };
        Some(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_adds_nothing_and_yubikey5_is_slow_where_a_yubikey_is() {
        assert_eq!(Timing::Instant.duration(Op::Generate(alg::RSA2048)), None);
        let yk = Timing::parse("yubikey5").unwrap();
        assert_eq!(
            yk.duration(Op::Generate(alg::RSA2048)),
            Some(Duration::from_secs(4))
        );
        assert!(yk.duration(Op::Sign(alg::P256)) < yk.duration(Op::RsaPrivate(alg::RSA2048)));
        assert!(Timing::parse("fast").is_err());
    }
}
