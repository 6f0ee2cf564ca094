//! pivault against a 3-node OpenBao raft cluster on loopback (fixtures/vault/cluster.sh),
//! all three addresses configured, while the leader dies. Checked from outside: the card
//! (yubico-piv-tool, openssl) and Vault (cert list + audit log), never pivault's report.

mod common;

use common::card::Card;
use common::run::{self, text};
use common::vault::{Cluster, Issuance};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PIN: &str = "123456";
const SLOTS: [(&str, &str); 4] = [
    ("9a", "yubikey-piv-auth"),
    ("9c", "yubikey-piv-code-signing"),
    ("9d", "yubikey-piv-email-signing"),
    ("9e", "yubikey-piv"),
];

fn enroll(c: &Cluster, card: &Card, deadline_secs: u64) -> Child {
    let mut env = c.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    env.push(("PIVAULT_VAULT_DEADLINE".into(), deadline_secs.to_string()));
    let mut args: Vec<String> = vec!["-v".into(), "--force".into()];
    for (slot, role) in SLOTS {
        args.push("--slot".into());
        args.push(format!("{slot}:role={role}"));
    }
    args.extend(["--cn".into(), "Cluster {serial}".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = run::enroll_cmd(card, &env, &args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("spawn pivault")
}

/// Vault issued at most `completed` certificates per slot and signed no CSR twice; every
/// slot holds a certificate Vault issued that chains to the cluster's CA.
fn check(c: &Cluster, card: &Card, before: &Issuance, completed: usize) {
    let now = c
        .issuance()
        .unwrap_or_else(|e| {
            let events = common::vault::read_audit(std::slice::from_ref(&c.audit_log), None, "pki");
            panic!(
                "counting from the cluster failed: {e}\nsign requests in the audit log: {events:#?}\n{}\n{}",
                c.status(),
                c.history()
            )
        })
        .since(before);
    for (slot, role) in SLOTS {
        let n = now.per_role().get(role).copied().unwrap_or(0);
        assert!(
            n <= completed,
            "slot {slot}: {n} certificates issued for {completed} completed run(s)"
        );
    }
    assert!(
        now.per_csr().values().all(|&n| n == 1),
        "a CSR was signed twice: {:?}",
        now.per_csr()
    );
    let dir = tempfile::tempdir().expect("tmp");
    for (slot, _) in SLOTS {
        let pem = run::piv_tool_read_cert(&card.reader, slot);
        let v = run::openssl_verify(&pem, &c.root_pem, &c.chain_pem, dir.path());
        assert!(v.status.success(), "slot {slot}: {}", text(&v));
    }
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().expect("wait for pivault")
}

#[test]
fn enroll_survives_the_leader_killed_mid_run_and_nothing_is_issued_twice() {
    let c = Cluster::start();
    let card = Card::start();
    let lead = c.wait_leader(Duration::from_secs(60));
    let before = c.issuance().expect("count before");
    let t0 = Instant::now();
    let child = enroll(&c, &card, 120);
    // Mid-run: after the login, while the signs go on (a clean 4-slot run takes ~0.5 s).
    std::thread::sleep(Duration::from_millis(150));
    c.kill(lead);
    let killed_at = t0.elapsed();
    let o = finish(child);
    let took = t0.elapsed();
    let new_lead = c.wait_leader(Duration::from_secs(90));
    eprintln!(
        "leader node {lead} SIGKILLed {} ms into the run; pivault exited {:?} after {} ms; \
         node {new_lead} leads",
        killed_at.as_millis(),
        o.status.code(),
        took.as_millis()
    );
    assert!(o.status.success(), "{}\n{}", text(&o), c.status());
    check(&c, &card, &before, 1);
}

#[test]
fn enroll_started_against_a_dead_leader_finishes_once_a_new_one_is_elected() {
    let c = Cluster::start();
    let card = Card::start();
    let lead = c.wait_leader(Duration::from_secs(60));
    let before = c.issuance().expect("count before");
    // The leader dies just before the run: standbys answer 307 to the dead leader or
    // "no active node" until an election ends.
    c.kill(lead);
    let t0 = Instant::now();
    let o = finish(enroll(&c, &card, 120));
    let took = t0.elapsed();
    let new_lead = c.wait_leader(Duration::from_secs(90));
    eprintln!(
        "leader node {lead} SIGKILLed before the run; pivault exited {:?} after {} ms; node \
         {new_lead} leads",
        o.status.code(),
        took.as_millis()
    );
    assert!(o.status.success(), "{}\n{}", text(&o), c.status());
    check(&c, &card, &before, 1);
}

#[test]
fn the_cluster_count_fails_when_no_node_answers() {
    let mut c = Cluster::start();
    assert_eq!(c.issuance().expect("count").issued(), 0);
    c.stop();
    let e = c
        .issuance()
        .expect_err("a stopped cluster must not count as zero certificates");
    assert!(e.0.contains("could not be asked"), "{e}");
}

#[test]
fn enroll_with_the_leader_frozen_past_the_deadline_then_resumed() {
    let c = Cluster::start();
    let card = Card::start();
    let lead = c.wait_leader(Duration::from_secs(60));
    let before = c.issuance().expect("count before");
    // SIGSTOP: the leader keeps its sockets open but never answers (requests forwarded to
    // it hang) until the others elect a new leader.
    c.pause(lead);
    let t0 = Instant::now();
    let first = finish(enroll(&c, &card, 20));
    let took = t0.elapsed();
    c.resume(lead);
    let new_lead = c.wait_leader(Duration::from_secs(90));
    let mut completed = usize::from(first.status.success());
    eprintln!(
        "leader node {lead} SIGSTOPped; pivault exited {:?} after {} ms; resumed; node \
         {new_lead} leads",
        first.status.code(),
        took.as_millis()
    );
    if !first.status.success() {
        // "Vault unavailable": the operator runs it again once a leader is back.
        let again = finish(enroll(&c, &card, 60));
        assert!(
            again.status.success(),
            "first:\n{}\nagain:\n{}\n{}",
            text(&first),
            text(&again),
            c.status()
        );
        completed += 1;
    }
    check(&c, &card, &before, completed);
}
