//! The checks on this machine: pcscd, readers, who holds them, tokens and their firmware.

use super::holders;
use crate::attestation::{advisories, KeyAlgorithm};
use crate::error::exit;
use crate::piv::probe::{self, CardProbe, ReaderState};
use crate::piv::{FirmwareVersion, TokenInfo};
use crate::report::doctor::{AdvisoryRef, Check, CheckId, Holder};
use std::time::Duration;

/// What the local checks look at.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Only these readers (exact PC/SC names); all when empty. Probing a reader SELECTs
    /// the PIV application on its card, which ends another program's PIN session there.
    pub readers: Vec<String>,
    /// How long a reader may take to answer before it counts as held by another program.
    pub card_timeout: Duration,
    /// pcscd's socket, as the PC/SC library will use it (`$PCSCLITE_CSOCK_NAME`).
    pub pcscd_socket: String,
}

pub fn run(o: &LocalOptions) -> Vec<Check> {
    let mut out = Vec::new();
    let all = match probe::readers() {
        Ok(r) => {
            out.push(Check::ok(
                CheckId::Pcscd,
                format!(
                    "pcscd answers at {} ({} reader(s))",
                    o.pcscd_socket,
                    r.len()
                ),
            ));
            r
        }
        Err(e) => {
            out.push(pcscd_down(o, &e.to_string()));
            for id in [CheckId::Readers, CheckId::Tokens] {
                out.push(Check::skipped(id, "not checked: pcscd is not reachable"));
            }
            return out;
        }
    };
    let chosen: Vec<&ReaderState> = all
        .iter()
        .filter(|r| o.readers.is_empty() || o.readers.contains(&r.name))
        .collect();
    let missing: Vec<&String> = o
        .readers
        .iter()
        .filter(|n| !all.iter().any(|r| &r.name == *n))
        .collect();
    out.push(readers_line(&all, &chosen, &missing));
    // Readers with a card that no one holds exclusively are opened, all at once.
    let to_probe: Vec<String> = chosen
        .iter()
        .filter(|r| r.card && !r.exclusive)
        .map(|r| r.name.clone())
        .collect();
    let mut probes = to_probe
        .iter()
        .cloned()
        .zip(probe::probe_cards(&to_probe, o.card_timeout))
        .collect::<std::collections::BTreeMap<_, _>>();
    let mut tokens: Vec<TokenInfo> = Vec::new();
    for r in &chosen {
        let (line, token) = reader_line(r, probes.remove(&r.name), o);
        out.push(line);
        tokens.extend(token);
    }
    if tokens.is_empty() {
        if !chosen.is_empty() {
            out.push(Check::fail(
                CheckId::Tokens,
                exit::NEEDS_PERSON,
                format!("no token in any of {} reader(s)", chosen.len()),
                "insert the YubiKey (or check the reader lines above for a program holding it)",
            ));
        } else {
            out.push(Check::skipped(CheckId::Tokens, "not checked: no reader"));
        }
    } else {
        let serials: Vec<String> = tokens.iter().map(|t| t.serial.to_string()).collect();
        out.push(Check::ok(
            CheckId::Tokens,
            format!("{} token(s): {}", tokens.len(), serials.join(", ")),
        ));
    }
    for t in &tokens {
        out.push(firmware_line(t));
    }
    out
}

fn pcscd_down(o: &LocalOptions, err: &str) -> Check {
    let (message, fix) = match holders::pcscd_pid() {
        Some(pid) => (
            format!(
                "pcscd is running (pid {pid}) but does not answer at {}: {err}",
                o.pcscd_socket
            ),
            format!(
                "check PCSCLITE_CSOCK_NAME (pcscd listens on its own socket path) and that this \
                 user may use pcscd (polkit: the pivault package's rules give the `pivault` \
                 group the readers); socket used: {}",
                o.pcscd_socket
            ),
        ),
        None => (
            format!("pcscd is not running (socket {}): {err}", o.pcscd_socket),
            "start it: `systemctl start pcscd.socket` (package pcscd)".to_string(),
        ),
    };
    Check::fail(CheckId::Pcscd, exit::NEEDS_PERSON, message, fix)
}

fn readers_line(all: &[ReaderState], chosen: &[&ReaderState], missing: &[&String]) -> Check {
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
        return Check::fail(
            CheckId::Readers,
            exit::NEEDS_PERSON,
            format!(
                "reader {} not found ({} reader(s) present)",
                names.join(", "),
                all.len()
            ),
            "plug the reader in, or name one that `pcsc_scan -r` / `pivault list` shows",
        );
    }
    if chosen.is_empty() {
        return Check::fail(
            CheckId::Readers,
            exit::NEEDS_PERSON,
            "pcscd sees no reader",
            "plug the YubiKey in; if it is in, check `lsusb` and that the CCID interface is \
             enabled (`ykman config usb --enable CCID`)",
        );
    }
    let with_card = chosen.iter().filter(|r| r.card).count();
    Check::ok(
        CheckId::Readers,
        format!("{} reader(s), {with_card} with a card", chosen.len()),
    )
}

/// One reader: its token, or who holds it (`probe`: what opening its card gave).
fn reader_line(
    r: &ReaderState,
    probe: Option<CardProbe>,
    o: &LocalOptions,
) -> (Check, Option<TokenInfo>) {
    if !r.card {
        return (
            Check::ok(CheckId::Reader, format!("'{}': empty", r.name)).reader(&r.name),
            None,
        );
    }
    let held = |how: &str| {
        let hs: Vec<Holder> = holders::pcsc_clients(&o.pcscd_socket);
        let who = match hs.first() {
            Some(h) => match &h.known_as {
                Some(k) => format!("{k} ({} pid {})", h.name, h.pid),
                None => format!(
                    "another program (PC/SC clients now: {})",
                    hs.iter()
                        .take(5)
                        .map(|h| format!("{} pid {}", h.name, h.pid))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            None => "another program".to_string(),
        };
        let mut c = Check::fail(
            CheckId::Reader,
            exit::NEEDS_PERSON,
            format!("'{}': held {how} by {who}", r.name),
            holders::advice(&hs),
        )
        .reader(&r.name);
        c.holders = hs;
        c
    };
    let Some(probe) = probe.filter(|_| !r.exclusive) else {
        return (held("exclusively"), None);
    };
    match probe {
        CardProbe::Token(t) => {
            let mut c = Check::ok(
                CheckId::Reader,
                format!(
                    "'{}': YubiKey {} (firmware {})",
                    r.name, t.serial, t.version
                ),
            )
            .reader(&r.name);
            c.token_serial = Some(t.serial);
            c.firmware = Some(t.version);
            (c, Some(t))
        }
        CardProbe::Exclusive => (held("exclusively"), None),
        CardProbe::Busy => (
            held(&format!(
                "(no answer within {} s, in a transaction)",
                o.card_timeout.as_secs()
            )),
            None,
        ),
        CardProbe::Other(why) => (
            Check::warn(
                CheckId::Reader,
                format!("'{}': a card that is not a YubiKey PIV token ({why})", r.name),
                "insert a YubiKey with the PIV application enabled (`ykman config usb --enable PIV`)",
            )
            .reader(&r.name),
            None,
        ),
    }
}

/// The advisories that apply to keys made on `v`, by key family.
pub fn firmware_advisories(v: FirmwareVersion) -> Vec<AdvisoryRef> {
    let mut out: Vec<AdvisoryRef> = Vec::new();
    for (keys, alg) in [
        ("rsa", KeyAlgorithm::Rsa2048),
        ("ecdsa", KeyAlgorithm::P256),
    ] {
        for a in advisories(v, alg) {
            match out.iter_mut().find(|r| r.id == a.id()) {
                Some(r) => r.keys = format!("{},{keys}", r.keys),
                None => out.push(AdvisoryRef {
                    id: a.id().to_string(),
                    keys: keys.to_string(),
                    summary: a.summary().to_string(),
                    url: a.url().to_string(),
                }),
            }
        }
    }
    out
}

fn firmware_line(t: &TokenInfo) -> Check {
    let adv = firmware_advisories(t.version);
    let mut c = if adv.is_empty() {
        Check::ok(
            CheckId::Firmware,
            format!(
                "token {}: firmware {}, no Yubico advisory applies",
                t.serial, t.version
            ),
        )
    } else {
        let ids: Vec<String> = adv
            .iter()
            .map(|a| format!("{} ({} keys)", a.id, a.keys))
            .collect();
        Check::warn(
            CheckId::Firmware,
            format!(
                "token {}: firmware {} is affected by {}",
                t.serial,
                t.version,
                ids.join(", ")
            ),
            adv.iter()
                .map(|a| format!("{}: {}", a.id, a.url))
                .collect::<Vec<_>>()
                .join("; ")
                + "; replace the token, or avoid the affected key types on it",
        )
    };
    c.reader = Some(t.reader.clone());
    c.token_serial = Some(t.serial);
    c.firmware = Some(t.version);
    c.advisories = adv;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisories_by_firmware() {
        let ids = |v| {
            firmware_advisories(v)
                .into_iter()
                .map(|a| (a.id, a.keys))
                .collect::<Vec<_>>()
        };
        let v = FirmwareVersion::new;
        assert_eq!(
            ids(v(4, 3, 4)),
            vec![
                ("YSA-2017-01".to_string(), "rsa".to_string()),
                ("YSA-2024-03".to_string(), "ecdsa".to_string())
            ]
        );
        // ROCA was fixed in 4.3.5: 4.3.7 has only EUCLEAK.
        assert_eq!(
            ids(v(4, 3, 7)),
            vec![("YSA-2024-03".to_string(), "ecdsa".to_string())]
        );
        assert!(ids(v(5, 7, 4)).is_empty());
    }
}
