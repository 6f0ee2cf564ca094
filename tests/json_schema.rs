//! The JSON Schema harness itself (tests/common/schema.rs): every schema file compiles as
//! draft 2020-12 and names its own kind, and wrong documents are rejected — a harness that
//! accepted everything would make every other test's check worthless.

mod common;

use common::schema::{dir, validate, validate_as, validate_stream};
use serde_json::json;

/// Each schemas/<kind>.schema.json declares draft 2020-12, closes its top level, requires
/// `schema` and `kind`, and pins `kind` to its file name.
#[test]
fn every_schema_file_is_draft_2020_12_and_names_its_kind() {
    let mut n = 0;
    for e in std::fs::read_dir(dir()).expect("schemas/") {
        let path = e.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kind = name
            .strip_suffix(".schema.json")
            .expect("schemas/*.schema.json only");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        if kind == "defs" {
            continue;
        }
        assert_eq!(s["properties"]["kind"]["const"], kind, "{name}");
        assert_eq!(
            s["properties"]["schema"]["$ref"], "defs.schema.json#/$defs/schema_version",
            "{name}"
        );
        let req = s["required"].as_array().expect("required");
        assert!(
            req.contains(&json!("schema")) && req.contains(&json!("kind")),
            "{name}"
        );
        // Compiles (refs resolve) and accepts nothing of another kind.
        let other = json!({"schema": 1, "kind": "not-this-one"});
        assert!(
            validate_as(kind, &other).is_err(),
            "{name} accepts any kind"
        );
        n += 1;
    }
    assert!(n >= 1, "no schema files");
}

fn error_doc() -> serde_json::Value {
    json!({
        "schema": 1,
        "kind": "error",
        "error": "no token found",
        "hint": "insert a YubiKey",
        "exit_code": 3
    })
}

#[test]
fn a_good_document_validates() {
    validate(&error_doc()).expect("valid");
    let mut d = error_doc();
    d["hint"] = serde_json::Value::Null;
    validate(&d).expect("a null hint is allowed");
}

#[test]
fn wrong_documents_are_rejected() {
    type Breaker = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "missing field",
            Box::new(|d| drop(d.as_object_mut().map(|o| o.remove("error")))),
        ),
        ("unknown field", Box::new(|d| d["extra"] = json!(true))),
        (
            "exit code not in the enum",
            Box::new(|d| d["exit_code"] = json!(7)),
        ),
        (
            "exit code 0 in an error",
            Box::new(|d| d["exit_code"] = json!(0)),
        ),
        ("wrong type", Box::new(|d| d["error"] = json!(42))),
        ("other schema version", Box::new(|d| d["schema"] = json!(2))),
        (
            "unknown kind",
            Box::new(|d| d["kind"] = json!("no-such-output")),
        ),
        (
            "kind that is a path",
            Box::new(|d| d["kind"] = json!("../Cargo")),
        ),
        ("kind not a string", Box::new(|d| d["kind"] = json!(1))),
    ];
    for (what, break_it) in cases {
        let mut d = error_doc();
        break_it(&mut d);
        assert!(validate(&d).is_err(), "{what} was accepted: {d}");
    }
}

#[test]
fn a_stream_fails_on_any_bad_line_or_text() {
    let good = error_doc().to_string();
    let two = format!("{good}\n{good}\n");
    assert_eq!(validate_stream(two.as_bytes()), Ok(2));
    let mut bad = error_doc();
    bad["exit_code"] = json!("3");
    let mixed = format!("{good}\n{bad}\n");
    assert!(validate_stream(mixed.as_bytes()).is_err());
    assert!(validate_stream(b"token 123 enrolled\n").is_err());
    assert!(validate_stream(format!("{good}\ntrailing words").as_bytes()).is_err());
}

/// The run helper validates what `pivault --json` prints: a usage error of a real run is
/// an `error` document, and the helper would panic if it were not.
#[test]
fn the_run_helper_checks_pivault_json_output() {
    let mut c = common::run::pivault(&[]);
    // No Vault address anywhere: a configuration error before any token or network.
    c.args(["--json", "unblock"]);
    c.env("PIVAULT_NEW_PIN", "654321");
    assert!(common::schema::is_pivault_json(&c));
    let o = common::run::run(c);
    assert_eq!(o.status.code(), Some(2), "{}", common::run::text(&o));
    let n = validate_stream(&o.stdout).expect("valid");
    assert_eq!(n, 1, "{}", common::run::text(&o));
}

/// Documents built from the library's own structs (src/report/), with every optional field
/// filled in — the shapes the rig seldom produces (in-doubt slots, Vault warnings, a failed
/// slot next to a good one) — each with the kind its schema expects.
fn built_documents() -> Vec<(&'static str, String)> {
    use pivault::piv::{Algorithm, FirmwareVersion, MgmAlgorithm, PinPolicy, Role, Slot};
    use pivault::piv::{TokenInfo, TouchPolicy};
    use pivault::report::{self, to_json, EnrollReport, SlotReport, SlotResult};
    let slot = |b| Slot::from_byte(b).expect("slot");
    let good = SlotReport {
        slot: slot(0x9a),
        algorithm: Algorithm::P256,
        role: Role::Auth,
        result: SlotResult::Enrolled,
        certificate_serial: Some("3f:02:a1".into()),
        subject: Some("CN=Jane".into()),
        issuer: Some("CN=Issuing CA".into()),
        not_after: Some("2027-12-02T00:00:00Z".into()),
        sha256_fingerprint: Some("ab".repeat(32)),
        vault_warnings: vec!["TTL capped".into()],
        attestation: Some(pivault::workflow::attest::AttestationFacts {
            token_serial: Some(12345678),
            firmware: "5.7.4".into(),
            pin_policy: "once".into(),
            touch_policy: "never".into(),
            form_factor: Some(pivault::attestation::FormFactor::UsbCNano),
            edition: pivault::attestation::Edition::Standard,
            root: "Yubico Attestation Root 1".into(),
            advisories: vec!["YSA-2024-03".into()],
            attestation_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                .into(),
            f9_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
        }),
        error: None,
    };
    let failed = SlotReport {
        slot: slot(0x95),
        algorithm: Algorithm::Rsa2048,
        role: Role::Piv,
        result: SlotResult::Failed,
        certificate_serial: None,
        subject: None,
        issuer: None,
        not_after: None,
        sha256_fingerprint: None,
        vault_warnings: Vec::new(),
        attestation: None,
        error: Some("Vault refused the CSR".into()),
    };
    let enroll = EnrollReport {
        command: "enroll",
        token_serial: 12345678,
        firmware: FirmwareVersion::new(5, 7, 4),
        reader: "Yubico YubiKey OTP+FIDO+CCID 00 00".into(),
        slots: vec![good.clone(), failed.clone()],
        wrote_chuid_ccc: true,
        ok: false,
    };
    let renew = EnrollReport {
        command: "renew",
        slots: vec![SlotReport {
            result: SlotResult::Renewed,
            ..good.clone()
        }],
        ok: true,
        wrote_chuid_ccc: false,
        ..enroll.clone()
    };
    let list = report::list::TokenList {
        tokens: vec![TokenInfo {
            serial: 1,
            version: FirmwareVersion::new(4, 3, 7),
            reader: "r".into(),
        }],
    };
    let status = report::status::TokenStatus {
        serial: 7,
        firmware: FirmwareVersion::new(5, 4, 3),
        reader: "r".into(),
        pin_tries_left: None,
        puk_tries_left: Some(3),
        mgmt_key_algorithm: Some(MgmAlgorithm::Aes256),
        mgmt_key_pin_protected: true,
        mgmt_key_is_default: Some(false),
        slots: vec![report::status::SlotStatus {
            slot: slot(0x82),
            name: slot(0x82).name(),
            key_algorithm: Some(Algorithm::Ed25519),
            key_generated_on_token: Some(true),
            pin_policy: Some(PinPolicy::Once),
            touch_policy: Some(TouchPolicy::Cached),
            subject: Some("CN=x".into()),
            issuer: Some("CN=y".into()),
            certificate_serial: Some("01".into()),
            not_before: Some("2026-12-02T00:00:00Z".into()),
            not_after: Some("2027-12-02T00:00:00Z".into()),
            sha256_fingerprint: Some("0".repeat(64)),
            certificate_matches_key: Some(false),
            advisories: vec![pivault::attestation::Advisory::Eucleak.into()],
        }],
    };
    let attested = pivault::attestation::Attestation {
        slot: Some(slot(0x9a)),
        serial: Some(7),
        firmware: FirmwareVersion::new(5, 4, 3),
        form_factor: Some(pivault::attestation::FormFactor::UsbCNano),
        pin_policy: PinPolicy::Once,
        touch_policy: TouchPolicy::Never,
        algorithm: pivault::attestation::KeyAlgorithm::P256,
        public_key: vec![0x30, 0x00],
        edition: pivault::attestation::Edition::Standard,
        root: "Yubico PIV Root CA Serial 263751".into(),
        root_sha256: "0".repeat(64),
        chain: vec!["Yubico PIV Attestation".into()],
    };
    let attest = report::attest::AttestReport::new(
        &TokenInfo {
            serial: 7,
            version: FirmwareVersion::new(5, 4, 3),
            reader: "r".into(),
        },
        "built in".into(),
        &[
            (
                slot(0x9a),
                pivault::attestation::SlotFinding::Verified {
                    attestation: Box::new(attested),
                    key_compared: true,
                },
            ),
            (
                slot(0x9c),
                pivault::attestation::SlotFinding::Refused(
                    pivault::attestation::AttestationError::SerialMismatch {
                        attested: 8,
                        token: 7,
                    },
                ),
            ),
        ],
    );
    let check = report::renew::RenewCheck {
        token_serial: 9,
        due: true,
        slots: vec![pivault::renew::Due {
            slot: slot(0x9c),
            role: Role::EmailSigning,
            subject: "CN=Jane".into(),
            not_after: "2027-01-01T00:00:00Z".into(),
            due_at: "2026-11-01T00:00:00Z".into(),
            due: true,
            unfinished: false,
        }],
    };
    let unblock = report::unblock::UnblockReport {
        token_serial: 9,
        pin_tries_left: Some(3),
        puk_rotated: true,
        escrow_version: 4,
        ok: true,
    };
    let mut line = report::station::TokenLine::new(None, "r");
    line.slots
        .push(report::station::SlotLine::of(&good).expect("line"));
    line.record_version = Some(3);
    line.duration_ms = 1200;
    line.error = Some("sign answer lost".into());
    line.in_doubt = vec![slot(0x9e)];
    let error = report::error::ErrorDoc::of(&pivault::Error::Usage("bad".into()));
    let j = |r: Result<String, serde_json::Error>| r.expect("serialise");
    vec![
        ("enroll", j(to_json(&enroll))),
        ("renew", j(to_json(&renew))),
        ("list", j(to_json(&list))),
        ("status", j(to_json(&status))),
        ("renew-check", j(to_json(&check))),
        ("unblock", j(to_json(&unblock))),
        ("station-line", j(to_json(&line))),
        ("error", j(to_json(&error))),
        ("attest", j(to_json(&attest))),
    ]
}

#[test]
fn every_kind_built_by_the_library_validates_and_its_closed_shape_holds() {
    for (kind, text) in built_documents() {
        let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        // schema and kind come first, written once by report::to_json.
        assert!(
            text.starts_with(&format!("{{\"schema\":1,\"kind\":\"{kind}\",")),
            "{text}"
        );
        validate(&doc).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let mut extra = doc.clone();
        extra["unexpected"] = json!(1);
        assert!(validate(&extra).is_err(), "{kind} accepts unknown fields");
        for field in doc.as_object().expect("object").keys() {
            let mut d = doc.clone();
            d.as_object_mut().map(|o| o.remove(field));
            // Optional fields may go; required ones may not. Every top-level field the
            // library always writes is required, except the ones skipped when empty.
            let optional = ["record_version", "error", "in_doubt"];
            assert_eq!(
                validate(&d).is_ok(),
                kind == "station-line" && optional.contains(&field.as_str()),
                "{kind} without {field}"
            );
        }
    }
}

#[test]
fn inconsistent_slot_reports_are_rejected() {
    let (_, text) = built_documents()
        .into_iter()
        .find(|(k, _)| *k == "enroll")
        .expect("enroll");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    // A failed slot that claims a certificate, a good slot without one, ok with a failure.
    let mut a = doc.clone();
    a["slots"][1]["certificate_serial"] = json!("01");
    let mut b = doc.clone();
    b["slots"][0]
        .as_object_mut()
        .map(|o| o.remove("sha256_fingerprint"));
    let mut c = doc.clone();
    c["ok"] = json!(true);
    let mut d = doc.clone();
    d["slots"][0]["result"] = json!("renewed");
    let mut e = doc;
    e["slots"][0]["slot"] = json!("9b");
    for (what, x) in [
        ("failed slot with a certificate", a),
        ("good slot without fingerprint", b),
        ("ok with a failed slot", c),
        ("renewed in an enroll", d),
        ("slot 9b", e),
    ] {
        assert!(validate(&x).is_err(), "{what} accepted");
    }
}

/// Arguments clap refuses still give a `--json` caller an `error` document (exit 2), and
/// clap's usage message on stderr; without `--json` stdout stays empty.
#[test]
fn refused_arguments_print_an_error_document_with_json() {
    let mut c = common::run::pivault(&[]);
    c.args(["--json", "enroll", "--no-such-flag"]);
    let o = common::run::run(c);
    assert_eq!(o.status.code(), Some(2), "{}", common::run::text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one document");
    assert_eq!(doc["kind"], "error");
    assert_eq!(doc["exit_code"], 2);
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("--no-such-flag"),
        "{doc}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("Usage:"));
    let mut c = common::run::pivault(&[]);
    c.args(["enroll", "--no-such-flag"]);
    let o = common::run::run(c);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty(), "{}", common::run::text(&o));
    // --help is not an error: exit 0, no document.
    let mut c = common::run::pivault(&[]);
    c.args(["--json", "--help"]);
    let o = common::run::run(c);
    assert_eq!(o.status.code(), Some(0));
}

/// An attest document must be coherent: a verified slot carries what was attested and no
/// refusal, a refused one the check and no attested facts.
#[test]
fn inconsistent_attest_slots_are_rejected() {
    let (_, text) = built_documents()
        .into_iter()
        .find(|(k, _)| *k == "attest")
        .expect("attest");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    validate(&doc).expect("the built document validates");
    let mut a = doc.clone();
    a["slots"][0]["refused"] = doc["slots"][1]["refused"].clone();
    let mut b = doc.clone();
    b["slots"][1]["verified"] = json!(true);
    let mut c = doc.clone();
    c["slots"][1]["refused"]["check"] = json!("vibes");
    let mut d = doc;
    d["slots"][0]["attested"]["advisories"][0] =
        json!({"id": "YSA-1999-01", "summary": "x", "url": "https://x"});
    for (what, x) in [
        ("verified and refused", a),
        ("verified without attested facts", b),
        ("unknown check", c),
        ("unknown advisory", d),
    ] {
        assert!(validate(&x).is_err(), "{what} accepted");
    }
}
