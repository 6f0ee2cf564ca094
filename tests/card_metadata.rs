//! GET METADATA read by pivault's own parser (src/piv/metadata.rs) on the rig's cards:
//! what pivault reads is what other clients set (ykman generates and imports keys with
//! policies, spends a PUK try) and read (ykman's public key file, OpenSC's raw PUK
//! counter); firmware 4.3.7 has no metadata and is told so without a GET METADATA; a card
//! that answers it with a malformed body is refused with an error and nothing changes.

mod common;

use common::card::{Card, CardOptions};
use common::run::{self, text};
use common::vault::Vault;
use pivault::piv::yubikey::{Selector, YubiKeyToken};
use pivault::piv::{Algorithm, MgmAlgorithm, PinPolicy, PivToken, Slot, TokenError, TouchPolicy};
use std::path::Path;

const MGM: &str = "010203040506070801020304050607080102030405060708";

fn card(version: &str, args: &[&str]) -> Card {
    Card::start_with(CardOptions {
        version: Some(version.into()),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
}

fn open(card: &Card) -> YubiKeyToken {
    YubiKeyToken::open(&Selector {
        serial: Some(card.serial),
        reader: Some(card.reader.clone()),
    })
    .unwrap_or_else(|e| panic!("open {}: {e}", card.reader))
}

fn ykman(card: &Card, args: &[&str]) -> String {
    let mut c = run::tool("ykman");
    c.args(["--reader", &card.reader]);
    c.args(args);
    let o = run::run(c);
    assert!(o.status.success(), "ykman {args:?}: {}", text(&o));
    text(&o)
}

/// A public key file's SubjectPublicKeyInfo, DER.
fn spki_der(pem: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem).expect("public key file");
    let (label, der) = der::pem::decode_vec(&pem).expect("PEM");
    assert_eq!(label, "PUBLIC KEY");
    der
}

fn slot(s: &str) -> Slot {
    s.parse().expect("slot")
}

/// On 5.4.3 (3DES factory key) and 5.7.4 (AES-192): keys generated and imported by ykman
/// with their policies, an RSA-2048 key (an answer longer than one short APDU: GET
/// RESPONSE), an empty slot (6A88), the PUK counter after a wrong PUK, the factory flags.
#[test]
fn metadata_reads_what_other_clients_set() {
    for (version, mgm_alg, ykman_alg) in [
        ("5.4.3", MgmAlgorithm::TripleDes, "TDES"),
        ("5.7.4", MgmAlgorithm::Aes192, "AES192"),
    ] {
        let card = card(version, &[]);
        let dir = tempfile::tempdir().expect("tempdir");
        let (p9a, p9d) = (dir.path().join("9a.pem"), dir.path().join("9d.pem"));
        ykman(
            &card,
            &[
                "piv",
                "keys",
                "generate",
                "-m",
                MGM,
                "-a",
                "ECCP256",
                "--pin-policy",
                "ONCE",
                "--touch-policy",
                "NEVER",
                "9a",
                p9a.to_str().expect("path"),
            ],
        );
        ykman(
            &card,
            &[
                "piv",
                "keys",
                "generate",
                "-m",
                MGM,
                "-a",
                "RSA2048",
                "--pin-policy",
                "ALWAYS",
                "--touch-policy",
                "NEVER",
                "9d",
                p9d.to_str().expect("path"),
            ],
        );
        // An imported key: made by openssl, put in 9c by ykman.
        let key = dir.path().join("9c.key");
        let mut c = run::tool("openssl");
        c.args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ]);
        c.arg("-out").arg(&key);
        assert!(run::run(c).status.success());
        ykman(
            &card,
            &[
                "piv",
                "keys",
                "import",
                "-m",
                MGM,
                "9c",
                key.to_str().expect("path"),
            ],
        );
        // A wrong PUK: one PUK try spent, by another client.
        let mut c = run::tool("ykman");
        c.args(["--reader", &card.reader, "piv", "access", "unblock-pin"]);
        c.args(["-p", "87654321", "-n", "654321"]);
        let o = run::run(c);
        assert!(!o.status.success(), "a wrong PUK unblocked: {}", text(&o));
        let puk_left = run::metadata_tries(&card.reader, true).expect("OpenSC reads the PUK");
        assert_eq!(puk_left, 2, "{version}: {}", text(&o));

        let mut t = open(&card);
        let k = t.slot_key(slot("9a")).expect("9a").expect("a key in 9a");
        assert_eq!(k.algorithm, Algorithm::P256, "{version}");
        assert_eq!(k.pin_policy, Some(PinPolicy::Once), "{version}");
        assert_eq!(k.touch_policy, Some(TouchPolicy::Never), "{version}");
        assert_eq!(k.generated, Some(true), "{version}");
        let public = t.slot_public_key(slot("9a")).expect("9a").expect("key");
        assert_eq!(
            public.spki_der,
            spki_der(&p9a),
            "{version}: 9a's key as ykman wrote it"
        );
        let k = t.slot_key(slot("9d")).expect("9d").expect("a key in 9d");
        assert_eq!(k.algorithm, Algorithm::Rsa2048, "{version}");
        assert_eq!(k.pin_policy, Some(PinPolicy::Always), "{version}");
        let public = t.slot_public_key(slot("9d")).expect("9d").expect("key");
        assert_eq!(
            public.spki_der,
            spki_der(&p9d),
            "{version}: 9d's key as ykman wrote it"
        );
        let k = t.slot_key(slot("9c")).expect("9c").expect("a key in 9c");
        assert_eq!(k.algorithm, Algorithm::P384, "{version}");
        assert_eq!(k.generated, Some(false), "{version}: 9c was imported");
        assert_eq!(t.slot_key(slot("9e")), Ok(None), "{version}: 9e is empty");
        assert_eq!(
            t.slot_public_key(slot("82")),
            Ok(None),
            "{version}: 82 is empty"
        );
        assert_eq!(t.puk_retries(), Ok(Some(2)), "{version}");
        let d = t.credential_defaults().expect("defaults");
        assert_eq!((d.pin, d.puk), (Some(true), Some(true)), "{version}");
        let m = t.mgm_key_state().expect("management key");
        assert_eq!(m.algorithm, Some(mgm_alg), "{version}");
        assert_eq!(m.default, Some(true), "{version}");
        drop(t);
        let info = ykman(&card, &["piv", "info"]);
        assert!(
            info.contains(ykman_alg),
            "{version}: ykman piv info: {info}"
        );
    }
}

/// Firmware 4.3.7 has no GET METADATA: pivault says "not supported" (slots) or "cannot
/// tell" (PUK, factory flags) without sending it — the card's counter shows none. A 5.4.3
/// version number on a card that refuses the instruction (6D00) reads the same way.
#[test]
fn without_metadata_pivault_says_it_cannot_tell() {
    let card = card("4.3.7", &[]);
    let mut t = open(&card);
    assert!(matches!(
        t.slot_key(slot("9a")),
        Err(TokenError::NotSupported { .. })
    ));
    assert!(matches!(
        t.slot_public_key(slot("9a")),
        Err(TokenError::NotSupported { .. })
    ));
    assert_eq!(t.puk_retries(), Ok(None));
    let d = t.credential_defaults().expect("defaults");
    assert_eq!((d.pin, d.puk), (None, None));
    let m = t.mgm_key_state().expect("management key");
    assert_eq!(
        (m.algorithm, m.default),
        (Some(MgmAlgorithm::TripleDes), None)
    );
    drop(t);
    let (_, by_ins) = card.apdu_counts();
    assert_eq!(
        by_ins.get(&0xF7),
        None,
        "GET METADATA sent to 4.3.7: {by_ins:?}"
    );

    let card = card_with_answer("6D00");
    let mut t = open(&card);
    assert!(matches!(
        t.slot_key(slot("9a")),
        Err(TokenError::NotSupported { .. })
    ));
    assert_eq!(t.puk_retries(), Ok(None));
    let m = t.mgm_key_state().expect("management key");
    assert_eq!((m.algorithm, m.default), (None, None));
}

/// A 5.4.3 card whose every GET METADATA answer is `hex` (data and status word).
fn card_with_answer(hex: &str) -> Card {
    card("5.4.3", &["--fault", &format!("metadata-answer@{hex}")])
}

/// The answer that aborted the `yubikey` crate's parser (`01 00`: an algorithm tag with no
/// value), and other malformed ones: every metadata read is a token error naming the
/// answer, never a panic and never "not supported".
#[test]
fn malformed_metadata_is_a_token_error() {
    for hex in [
        "01009000",
        "9000",
        "0101FF0182009000",
        "01011104038601049000",
    ] {
        let card = card_with_answer(hex);
        let mut t = open(&card);
        for r in [
            t.slot_key(slot("9a")).map(|_| ()),
            t.slot_public_key(slot("9a")).map(|_| ()),
            t.puk_retries().map(|_| ()),
            t.credential_defaults().map(|_| ()),
            t.mgm_key_state().map(|_| ()),
        ] {
            match r {
                Err(TokenError::Card { detail, .. }) => {
                    assert!(detail.contains("malformed"), "{hex}: {detail}")
                }
                other => panic!("{hex}: {other:?}"),
            }
        }
    }
}

/// `pivault enroll` on a card answering `01 00`: exit code 1 with one line naming the bad
/// answer, not an abort; the card holds no new key or certificate (its own counter: no
/// GENERATE, no PUT DATA; yubico-piv-tool reads no certificate) and Vault issued nothing.
#[test]
fn enroll_on_a_card_with_malformed_metadata_stops_and_changes_nothing() {
    let vault = Vault::start();
    let card = card_with_answer("01009000");
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    let o = run::run(run::enroll_cmd(
        &card,
        &env,
        &["--slot", "9a", "--cn", "Jane Metadata"],
    ));
    let out = text(&o);
    eprintln!("--- pivault enroll on a card answering 01 00\n{out}");
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("GET METADATA answer"), "{out}");
    assert!(out.contains("malformed"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let (_, by_ins) = card.apdu_counts();
    assert!(
        by_ins.contains_key(&0xF7),
        "metadata never read: {by_ins:?}"
    );
    for ins in [0x47u8, 0xDB, 0xFF, 0x24, 0x2C, 0xF6] {
        assert_eq!(by_ins.get(&ins), None, "INS {ins:02X} sent: {by_ins:?}");
    }
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "read-certificate", "-s", "9a"]);
    let o = run::run(c);
    assert!(!o.status.success(), "a certificate in 9a: {}", text(&o));
    assert!(
        text(&o).contains("Failed fetching certificate"),
        "{}",
        text(&o)
    );
    let issued = vault
        .try_issued_serials()
        .expect("Vault's certificate list");
    assert!(issued.is_empty(), "issued: {issued:?}");
}

/// A token pulled while pivault's GET METADATA is on its way (vcard `--fault vanish@N`, N
/// the first GET METADATA) is "the token was removed", not a card fault or a panic.
#[test]
fn a_token_pulled_during_a_metadata_read_is_reported_removed() {
    // How many APDUs opening takes on this firmware: the next one is the metadata read.
    let probe = card("5.7.4", &[]);
    drop(open(&probe));
    let opened = probe.apdu_count();
    drop(probe);
    let card = card("5.7.4", &["--fault", &format!("vanish@{}", opened + 1)]);
    let mut t = open(&card);
    let r = t.slot_key(slot("9a"));
    assert!(
        card.wait_line("vanished apdu=", std::time::Duration::from_secs(5))
            .is_some_and(|l| l.ends_with("ins=F7")),
        "the card did not vanish at GET METADATA ({r:?})"
    );
    assert_eq!(r, Err(TokenError::CardRemoved));
}
