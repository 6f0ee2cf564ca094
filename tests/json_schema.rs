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
