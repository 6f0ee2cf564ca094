//! Unit tests of the enrollment workflow's ordering and refusals, on the fake token.
use super::*;
use crate::piv::fake::FakeToken;
use std::sync::atomic::{AtomicU32, Ordering};

/// An issuer that must not be reached, or that refuses in preflight.
struct TestIssuer {
    preflight_ok: bool,
    issued: AtomicU32,
}

impl Issuer for TestIssuer {
    fn preflight(&self, role: Role) -> Result<(), Error> {
        if self.preflight_ok {
            Ok(())
        } else {
            Err(Error::Usage(format!("preflight refused {role}")))
        }
    }
    fn issue(&self, _: Role, _: &str, _: &Subject, _: Option<&str>) -> Result<Issued, Error> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        Err(Error::Usage("not in this test".into()))
    }
}

fn plan(slots: &[&str]) -> Plan {
    Plan {
        slots: slots
            .iter()
            .map(|s| {
                let slot: Slot = s.parse().expect("slot");
                SlotPlan {
                    slot,
                    algorithm: Algorithm::P256,
                    pin_policy: PinPolicy::Default,
                    touch_policy: TouchPolicy::Default,
                    role: slot.default_role(),
                    subject: Subject {
                        common_name: "Test".into(),
                        ..Default::default()
                    },
                    ttl: None,
                }
            })
            .collect(),
        force: false,
    }
}

fn run(
    token: &mut FakeToken,
    issuer: &TestIssuer,
    plan: &Plan,
    pin: &str,
) -> Result<Outcome, Error> {
    let pf = Preflight::default();
    let ctx = Context {
        issuer,
        anchors_der: Vec::new(),
        preflight: &pf,
        attestation: None,
        strict_usage: false,
    };
    enroll(
        token,
        &ctx,
        plan,
        &Pin::new(pin),
        None,
        &mut || Ok(MgmKeySource::FactoryDefault),
        &mut Quiet,
    )
}

#[test]
fn durations() {
    for ok in ["90d", "8760h", "30m", "3600", "45s"] {
        assert!(valid_duration(ok), "{ok}");
    }
    for bad in ["", "h", "1y", "-5m", "5 m", "1h30m"] {
        assert!(!valid_duration(bad), "{bad}");
    }
}

#[test]
fn last_pin_try_is_never_spent() {
    let mut t = FakeToken::new();
    t.pin_tries = 1;
    let issuer = TestIssuer {
        preflight_ok: true,
        issued: AtomicU32::new(0),
    };
    let e = run(&mut t, &issuer, &plan(&["9a"]), "000000")
        .err()
        .expect("refused");
    assert!(matches!(e, Error::Token(TokenError::PinLastTry)), "{e:?}");
    assert_eq!(t.pin_tries, 1, "a try was spent");
    assert!(t.changes.is_empty());
}

#[test]
fn wrong_pin_reports_tries_and_changes_nothing() {
    let mut t = FakeToken::new();
    let issuer = TestIssuer {
        preflight_ok: true,
        issued: AtomicU32::new(0),
    };
    let e = run(&mut t, &issuer, &plan(&["9a"]), "999999")
        .err()
        .expect("refused");
    assert!(
        matches!(e, Error::Token(TokenError::WrongPin { tries_left: 2 })),
        "{e:?}"
    );
    assert!(t.changes.is_empty());
}

#[test]
fn vault_refusal_comes_before_the_token_is_unlocked() {
    let mut t = FakeToken::new();
    let issuer = TestIssuer {
        preflight_ok: false,
        issued: AtomicU32::new(0),
    };
    assert!(run(&mut t, &issuer, &plan(&["9a", "9e"]), "123456").is_err());
    assert!(!t.pin_verified && !t.authenticated && t.changes.is_empty());
}

#[test]
fn occupied_slot_needs_force() {
    let mut t = FakeToken::new();
    t.certs.insert(Slot::CARD_AUTHENTICATION, vec![0x30, 0x00]);
    let issuer = TestIssuer {
        preflight_ok: true,
        issued: AtomicU32::new(0),
    };
    let e = run(&mut t, &issuer, &plan(&["9a", "9e"]), "123456")
        .err()
        .expect("refused");
    assert!(matches!(e, Error::SlotOccupied { .. }), "{e:?}");
    assert!(t.changes.is_empty(), "{:?}", t.changes);
    assert_eq!(issuer.issued.load(Ordering::SeqCst), 0);
}

#[test]
fn bad_plans_are_refused_first() {
    let mut t = FakeToken::new();
    let issuer = TestIssuer {
        preflight_ok: true,
        issued: AtomicU32::new(0),
    };
    let mut p = plan(&["9a", "9a"]);
    assert!(matches!(
        run(&mut t, &issuer, &p, "123456"),
        Err(Error::Usage(_))
    ));
    p = plan(&["9a"]);
    p.slots[0].algorithm = Algorithm::Ed25519; // needs 5.7, the fake is 5.2.7
    assert!(matches!(
        run(&mut t, &issuer, &p, "123456"),
        Err(Error::Usage(_))
    ));
    p = plan(&["9a"]);
    p.slots[0].subject.common_name = String::new();
    assert!(run(&mut t, &issuer, &p, "123456").is_err());
    assert!(!t.pin_verified && t.changes.is_empty());
}

#[test]
fn card_failure_mid_slot_stops_the_run() {
    // The fake's sign_raw reports the card removed after generation.
    let mut t = FakeToken::new();
    let issuer = TestIssuer {
        preflight_ok: true,
        issued: AtomicU32::new(0),
    };
    let out = run(&mut t, &issuer, &plan(&["9a", "9e"]), "123456").expect("outcome");
    // A key was generated: the error says so, and never exits 2 or 4 ("nothing changed").
    match &out.fatal {
        Some(e @ Error::AfterChange { source, .. }) => {
            assert!(
                matches!(**source, Error::Token(TokenError::CardRemoved)),
                "{e:?}"
            );
            assert_eq!(e.exit_code(), crate::error::exit::FAILED);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        out.report.slots.len(),
        1,
        "the second slot was not attempted"
    );
    assert!(!out.report.ok);
    assert_eq!(issuer.issued.load(Ordering::SeqCst), 0);
}
