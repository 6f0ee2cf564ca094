//! Property tests of the parsers of outside data (issue 11, Deliver 5): card answers (TLV,
//! GET METADATA), certificates and PEM chains from Vault, profile / config / allow-list
//! TOML, `--slot` flags and templates, escrow records (with the schema-1 migration). The
//! property everywhere: no panic (a release build aborts on one), a bounded result, and a
//! typed error. Vault's JSON bodies are covered by `tests/hostile_vault.rs`.
//!
//! Cases per property: `PROPTEST_CASES` (64 when unset, the CI run); `scripts/fuzz-parsers`
//! runs many more. A failure is saved in `proptest-regressions/parser_props.txt` (kept in
//! the repo, replayed first on every run).

use crate::error::Error;
use crate::escrow::{migrate, RECORD_SCHEMA};
use crate::piv::metadata;
use crate::piv::tlv::{find_tlv, tlv, tlvs};
use crate::piv::{Algorithm, MgmAlgorithm, Role, Slot};
use crate::verify::{describe, pem_bundle_to_der, VerifyError};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const LEAF_PEM: &str = include_str!("../fixtures/escrow/leaf.pem");

fn leaf_der() -> Vec<u8> {
    pem_bundle_to_der(LEAF_PEM).expect("fixture")[0].clone()
}

/// Bytes shaped like a run of BER-TLVs (short and long length forms, lengths that lie),
/// mixed with plain noise, so the parsers get past their first byte.
fn tlv_bytes() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        any::<u8>(),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<u16>(),
    )
        .prop_map(|(tag, form, value, lie)| {
            let mut v = vec![tag];
            let len = if lie % 5 == 0 {
                usize::from(lie)
            } else {
                value.len()
            };
            match form {
                0 => v.push((len & 0x7f) as u8),
                1 => v.extend([0x81, len as u8]),
                2 => v.extend([0x82, (len >> 8) as u8, len as u8]),
                _ => v.push(0x83),
            }
            v.extend(value);
            v
        });
    prop_oneof![
        proptest::collection::vec(one, 0..8).prop_map(|vs| vs.concat()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

/// GET METADATA-shaped answers: tags 01–07 (and a stray one) with values of the lengths
/// and codes a YubiKey sends, and some that are one off, so the parser gets to its checks
/// of each field and of the public key.
fn metadata_bytes() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(vec![]),
        prop_oneof![
            Just(0xFFu8),
            Just(0x03),
            Just(0x08),
            Just(0x0A),
            Just(0x0C),
            Just(0x06),
            Just(0x07),
            Just(0x05),
            Just(0x16),
            Just(0x11),
            Just(0x14),
            Just(0xE0),
            Just(0xE1),
            any::<u8>(),
        ]
        .prop_map(|b| vec![b]),
        (0u8..6, 0u8..5).prop_map(|(a, b)| vec![a, b]),
        proptest::collection::vec(any::<u8>(), 0..8),
        (
            prop_oneof![Just(0x81u8), Just(0x82), Just(0x86), any::<u8>()],
            prop_oneof![
                Just(32usize),
                Just(65),
                Just(97),
                Just(128),
                Just(256),
                0usize..300
            ],
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(tag, len, fill, point)| {
                // A point starts 04 (SEC 1 uncompressed); an RSA modulus with its top bit set.
                let mut v = vec![if point { 0x04 } else { 0xC1 }];
                v.extend(std::iter::repeat_n(fill, len.saturating_sub(1)));
                tlv(tag, &v)
            }),
    ];
    proptest::collection::vec((0u8..8, value), 0..7)
        .prop_map(|fields| fields.into_iter().flat_map(|(t, v)| tlv(t, &v)).collect())
}

/// A well-formed answer for a P-256 key in 9a (to mutate).
fn p256_metadata() -> Vec<u8> {
    let sk = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
    let point = sk.public_key().to_sec1_bytes();
    let mut v = vec![0x01, 0x01, 0x11, 0x02, 0x02, 0x02, 0x01, 0x03, 0x01, 0x01];
    v.extend(tlv(0x04, &tlv(0x86, &point)));
    v
}

/// Any text, control characters and non-ASCII included, or text built from the
/// characters TOML and PEM care about.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter),
        proptest::collection::vec(
            prop_oneof![
                Just('['),
                Just(']'),
                Just('='),
                Just('"'),
                Just('\''),
                Just('\n'),
                Just('{'),
                Just('}'),
                Just('.'),
                Just(','),
                Just('-'),
                Just('#'),
                Just('\\'),
                proptest::char::range('0', '9'),
                proptest::char::range('a', 'z'),
            ],
            0..max
        )
        .prop_map(String::from_iter),
    ]
}

/// A copy of `base` with a few bytes changed, cut, or spliced.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len();
    (
        proptest::collection::vec((0..n, any::<u8>()), 0..6),
        0..=n,
        any::<bool>(),
    )
        .prop_map(move |(edits, cut, truncate)| {
            let mut v = base.clone();
            for (i, b) in edits {
                v[i] = b;
            }
            if truncate {
                v.truncate(cut);
            }
            v
        })
}

/// A TOML document from plausible keys of pivault's files with random values.
fn toml_doc() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("slot"),
        Just("algorithm"),
        Just("role"),
        Just("pin_policy"),
        Just("touch_policy"),
        Just("ttl"),
        Just("common_name"),
        Just("email"),
        Just("upn"),
        Just("pin_length"),
        Just("puk_length"),
        Just("mgmt_key"),
        Just("protect_mgmt_key"),
        Just("allow_list"),
        Just("allow_unknown"),
        Just("serial"),
        Just("name"),
        Just("addr"),
        Just("addrs"),
        Just("deadline_secs"),
        Just("request_timeout_secs"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any_text(20).prop_map(|s| format!("{s:?}")),
        Just("\"9a\"".to_string()),
        Just("\"{name}\"".to_string()),
        Just("\"rsa2048\"".to_string()),
        Just("\"best\"".to_string()),
        Just("[\"https://127.0.0.1:8200\", 1]".to_string()),
        Just("1e400".to_string()),
    ];
    let header = prop_oneof![
        Just(""),
        Just("[[slot]]\n"),
        Just("[credentials]\n"),
        Just("[tokens]\n"),
        Just("[[token]]\n"),
        Just("[vault]\n"),
        Just("[defaults]\n"),
    ];
    proptest::collection::vec((header, key, value), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(h, k, v)| format!("{h}{k} = {v}\n"))
            .collect()
    })
}

/// A JSON value tree (depth-limited).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any_text(24).prop_map(Value::String),
        Just(Value::String(LEAF_PEM.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("schema".to_string()),
                    Just("serial".to_string()),
                    Just("live".to_string()),
                    Just("pending".to_string()),
                    Just("state".to_string()),
                    Just("slots".to_string()),
                    Just("9a".to_string()),
                    Just("pin".to_string()),
                    Just("puk".to_string()),
                    Just("mgmt_key".to_string()),
                    Just("mgmt_key_algorithm".to_string()),
                    Just("certificate_pem".to_string()),
                    Just("chain_pem".to_string()),
                    any_text(8),
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record as pivault 0.1 wrote it (schema 1), for mutation.
fn schema_1_record() -> serde_json::Value {
    serde_json::json!({
        "schema": 1, "serial": 4242,
        "live": {"pin": "48291375", "puk": "73915824",
                 "mgmt_key": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                 "mgmt_key_algorithm": "aes256", "mgmt_key_protected": true},
        "state": {"enrolled": true,
                  "slots": {"9a": {"certificate_pem": LEAF_PEM, "chain_pem": [], "warnings": []}}},
    })
}

// ---- card answers -------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// pivault's own TLV reader (PIN-protected data, object 5FC109): whatever the card
    /// sends, the value found lies inside the answer.
    #[test]
    fn tlv_values_stay_inside_the_answer(data in tlv_bytes(), tag in any::<u8>()) {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let inside = |v: &[u8]| {
            let p = v.as_ptr() as usize;
            p >= start && p + v.len() <= end
        };
        if let Some(v) = find_tlv(&data, tag) {
            prop_assert!(inside(v));
        }
        // The whole run: values inside, headers and values adding up to at most the
        // answer, and an error only as the last item.
        let items: Vec<_> = tlvs(&data).collect();
        let mut used = 0;
        for (i, item) in items.iter().enumerate() {
            match item {
                Ok((_, v)) => {
                    prop_assert!(inside(v));
                    used += 2 + v.len();
                }
                Err(_) => prop_assert_eq!(i, items.len() - 1),
            }
        }
        prop_assert!(used <= data.len());
    }

    /// pivault's GET METADATA parser (every PIN, PUK, management-key and slot metadata
    /// answer goes through it): any answer, for any reference, is parsed or refused with
    /// a typed error; what it accepts is consistent with the reference asked for.
    #[test]
    fn metadata_answers_are_parsed_or_refused(
        reference in prop_oneof![
            Just(metadata::PIN), Just(metadata::PUK), Just(metadata::MANAGEMENT_KEY),
            Just(0x9Au8), Just(0x82), any::<u8>(),
        ],
        data in prop_oneof![tlv_bytes(), metadata_bytes(), mutated(p256_metadata())],
    ) {
        match metadata::parse(reference, &data) {
            Ok(m) => {
                let key_ref = !matches!(
                    reference,
                    metadata::PIN | metadata::PUK | metadata::MANAGEMENT_KEY
                );
                prop_assert_eq!(matches!(m.algorithm, metadata::MetaAlgorithm::Key(_)), key_ref);
                if let Some(k) = m.public_key {
                    prop_assert!(key_ref);
                    let der = der::Encode::to_der(&k).expect("encodes");
                    prop_assert!(der.len() <= data.len() + 64);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Slot names, algorithms, roles and management-key algorithms as flags, profiles and
    /// records give them: parsed or refused with a message; a parsed value prints back to
    /// something that parses to itself.
    #[test]
    fn names_parse_or_are_refused(s in any_text(24)) {
        if let Ok(slot) = s.parse::<Slot>() {
            prop_assert_eq!(slot.to_string().parse::<Slot>(), Ok(slot));
        }
        if let Ok(a) = s.parse::<Algorithm>() {
            prop_assert_eq!(a.to_string().parse::<Algorithm>(), Ok(a));
        }
        if let Ok(r) = s.parse::<Role>() {
            prop_assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        let _ = s.parse::<MgmAlgorithm>();
        let _ = crate::attestation::parse_firmware(&s);
    }

    #[test]
    fn slot_bytes_are_checked(b in any::<u8>()) {
        if let Some(s) = Slot::from_byte(b) {
            prop_assert_eq!(s.byte(), b);
        }
    }

    // ---- certificates and PEM chains from Vault -------------------------------------------

    /// Any text as a PEM bundle: parsed or a typed error; never more DER out than text in.
    #[test]
    fn pem_bundles_parse_or_are_refused(s in prop_oneof![
        any_text(400),
        mutated(LEAF_PEM.as_bytes().to_vec()).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (any_text(40), any_text(40)).prop_map(|(a, b)| format!("{a}{LEAF_PEM}{b}{LEAF_PEM}")),
    ]) {
        match pem_bundle_to_der(&s) {
            Ok(ders) => {
                prop_assert!(ders.len() <= s.matches("-----END CERTIFICATE-----").count());
                prop_assert!(ders.iter().map(Vec::len).sum::<usize>() <= s.len());
                for d in &ders {
                    let _ = describe(d);
                }
            }
            Err(VerifyError::Parse(m)) => prop_assert!(!m.is_empty()),
            Err(e) => prop_assert!(false, "untyped error {e:?}"),
        }
    }

    /// Any bytes as a certificate (a slot's object, a chain member): described or refused.
    #[test]
    fn certificate_bytes_are_described_or_refused(der in prop_oneof![
        mutated(leaf_der()),
        proptest::collection::vec(any::<u8>(), 0..400),
    ]) {
        if let Ok(a) = describe(&der) {
            prop_assert!(a.serial_hex.len() <= 2 * der.len());
            prop_assert_eq!(a.sha256.len(), 64);
        }
    }

    // ---- profile, config and allow-list TOML; --slot flags; templates ---------------------

    #[test]
    fn profiles_and_configs_parse_or_are_refused(doc in prop_oneof![toml_doc(), any_text(200)]) {
        match crate::profile::Profile::from_toml(&doc) {
            Ok(p) => prop_assert!(p.slots.len() <= doc.matches("slot").count()),
            Err(e) => prop_assert!(matches!(e, Error::Config(_)), "{e:?}"),
        }
        let _ = toml::from_str::<crate::config::FileConfig>(&doc);
        let _ = toml::from_str::<crate::station::StationProfile>(&doc);
    }

    /// A station profile and its allow-list as files: loaded or a configuration error.
    #[test]
    fn station_profile_files_load_or_are_refused(
        profile in prop_oneof![toml_doc(), any_text(200)],
        list in prop_oneof![toml_doc(), any_text(100)],
        with_list in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut text = profile.clone();
        if with_list {
            text = format!("{text}\n[tokens]\nallow_list = \"tokens.toml\"\n");
        }
        std::fs::write(dir.path().join("p.toml"), &text).expect("write");
        std::fs::write(dir.path().join("tokens.toml"), &list).expect("write");
        match crate::station::StationProfile::load(&dir.path().join("p.toml")) {
            Ok((p, allow)) => {
                prop_assert!(!p.slots.is_empty());
                prop_assert!(allow.len() <= list.len());
            }
            Err(e) => prop_assert!(matches!(e, Error::Config(_)), "{e:?}"),
        }
    }

    #[test]
    fn slot_flags_parse_or_are_refused(s in prop_oneof![
        any_text(60),
        (any_text(6), any_text(40)).prop_map(|(a, b)| format!("9a:{a}={b}")),
    ]) {
        if let Err(e) = crate::profile::parse_slot_flag(&s) {
            prop_assert!(matches!(e, Error::Usage(_)), "{e:?}");
        }
    }

    /// Templates (`{name}`, `{{`): rendered or refused; the result is never larger than
    /// the template with every placeholder replaced by the longest value.
    #[test]
    fn templates_render_or_are_refused(t in any_text(80), v in any_text(30)) {
        let vars: BTreeMap<String, String> =
            [("name".to_string(), v.clone()), ("serial".to_string(), "1".to_string())].into();
        if let Ok(out) = crate::profile::render(&t, &vars) {
            prop_assert!(out.len() <= t.len() * (1 + v.len()));
        }
    }

    // ---- escrow records -------------------------------------------------------------------

    /// Any JSON as an escrow record (or a schema-1 record with fields replaced): migrated
    /// to the current schema or refused as an escrow error.
    #[test]
    fn escrow_records_migrate_or_are_refused(v in prop_oneof![
        json_value(),
        (json_value(), prop_oneof![
            Just(vec!["schema"]), Just(vec!["serial"]), Just(vec!["live", "pin"]),
            Just(vec!["live", "mgmt_key_algorithm"]), Just(vec!["state", "slots", "9a"]),
            Just(vec!["state", "slots", "9a", "certificate_pem"]), Just(vec!["state", "slots"]),
            Just(vec!["state", "enrolled"]),
        ]).prop_map(|(x, path)| {
            let mut r = schema_1_record();
            let mut at = &mut r;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = x;
            r
        }),
    ]) {
        match migrate(v) {
            Ok(r) => prop_assert_eq!(r.schema, RECORD_SCHEMA),
            Err(e) => prop_assert!(matches!(e, Error::Escrow(_)), "{e:?}"),
        }
    }
}

/// A configuration file larger than the cap is refused before it is read into memory.
#[test]
fn an_oversized_config_file_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("big.toml");
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(crate::config::MAX_CONFIG_FILE + 1)
        .expect("sparse file");
    let e = crate::config::FileConfig::load(&p).expect_err("refused");
    assert!(e.to_string().contains("larger than"), "{e}");
    let e = crate::station::StationProfile::load(&p).expect_err("refused");
    assert!(e.to_string().contains("larger than"), "{e}");
}
