//! Which programs may hold a reader: the processes connected to pcscd's socket, best
//! effort. pcscd does not say which client holds a reader, so this names every PC/SC
//! client connected now and puts the programs known to hold readers first (GnuPG's
//! scdaemon, yubikey-agent, programs with OpenSC's PKCS#11 module loaded).
//!
//! How: `ss -xpn` (iproute2, sock_diag) pairs each Unix socket with its peer; the peers of
//! the sockets whose local address is pcscd's are its clients. Where `ss` is missing or
//! sees nothing (no permission on other users' processes), the processes with
//! libpcsclite mapped (`/proc/PID/maps`) stand in for them.

use crate::report::doctor::Holder;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// pcscd's socket: `$PCSCLITE_CSOCK_NAME` as the client library reads it, else the
/// default (pcsc-lite `PCSCLITE_CSOCK_NAME`).
pub fn pcscd_socket(env_value: Option<&str>) -> String {
    env_value
        .filter(|v| !v.is_empty())
        .unwrap_or("/run/pcscd/pcscd.comm")
        .to_string()
}

/// The processes connected to pcscd at `socket`, except this one, known programs first.
pub fn pcsc_clients(socket: &str) -> Vec<Holder> {
    let me = std::process::id();
    let mut pids = ss_clients(socket);
    if pids.is_empty() {
        pids = mapped_clients();
    }
    let mut out: Vec<Holder> = pids
        .into_iter()
        .filter(|&p| p != me)
        .filter_map(describe)
        .filter(|h| h.name != "pcscd")
        .collect();
    out.sort_by_key(|h| (h.known_as.is_none(), h.pid));
    out
}

/// The pid of a running pcscd, if this machine shows one (`/proc/PID/comm`).
pub fn pcscd_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                .is_ok_and(|c| c.trim() == "pcscd")
        })
}

/// Client pids from `ss -xpn`: lines are `Netid State Recv-Q Send-Q Local LocalInode Peer
/// PeerInode [users:(("name",pid=N,fd=M),...)]`.
fn ss_clients(socket: &str) -> BTreeSet<u32> {
    let Ok(out) = Command::new("ss").args(["-xpn"]).output() else {
        return BTreeSet::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8)
        .collect();
    // pcscd's side of each connection: local address is the socket path; its peer inode
    // is the client's socket.
    let peers: BTreeSet<&str> = rows
        .iter()
        .filter(|f| f[4] == socket)
        .map(|f| f[7])
        .collect();
    rows.iter()
        .filter(|f| peers.contains(f[5]))
        .flat_map(|f| f[8..].iter().flat_map(|u| pids_in(u)))
        .collect()
}

/// The `pid=N` values in an `ss` users field.
fn pids_in(users: &str) -> Vec<u32> {
    users
        .split("pid=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

fn mapped_clients() -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| maps(*pid).is_some_and(|m| m.contains("libpcsclite")))
        .collect()
}

fn maps(pid: u32) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("maps")).ok()
}

fn describe(pid: u32) -> Option<Holder> {
    let name = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .ok()?
        .trim()
        .to_string();
    let known_as = known(&name, maps(pid).as_deref().unwrap_or(""));
    Some(Holder {
        pid,
        name,
        known_as,
    })
}

/// Programs known to keep readers (the most reported sharing violations: GnuPG's
/// scdaemon by default connects exclusively; OpenSC's PKCS#11 module in a browser or
/// ssh-agent holds a transaction per operation).
fn known(name: &str, maps: &str) -> Option<String> {
    Some(match name {
        "scdaemon" => "GnuPG scdaemon".into(),
        "gpg-agent" => "GnuPG gpg-agent".into(),
        "yubikey-agent" => "yubikey-agent".into(),
        _ if maps.contains("opensc-pkcs11") => format!("OpenSC PKCS#11 module in {name}"),
        _ if maps.contains("libykcs11") => format!("Yubico PKCS#11 module in {name}"),
        _ => return None,
    })
}

/// What to do about a holder: the usual way to make that program let go.
pub fn advice(holders: &[Holder]) -> String {
    match holders
        .first()
        .and_then(|h| h.known_as.as_deref().map(|k| (h, k)))
    {
        Some((h, "GnuPG scdaemon" | "GnuPG gpg-agent")) => format!(
            "stop GnuPG's card daemon (`gpgconf --kill scdaemon`, pid {}), or add \
             `pcsc-shared` to ~/.gnupg/scdaemon.conf so it shares the reader",
            h.pid
        ),
        Some((h, "yubikey-agent")) => format!(
            "stop yubikey-agent (pid {}; `systemctl --user stop yubikey-agent`) while \
             pivault runs",
            h.pid
        ),
        Some((h, k)) => format!("close {} (pid {}: {k}) or end its session", h.name, h.pid),
        None if !holders.is_empty() => format!(
            "close the program holding the reader (PC/SC clients connected now: {})",
            holders
                .iter()
                .take(5)
                .map(|h| format!("{} pid {}", h.name, h.pid))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "close the other program using the token, or remove and reinsert it".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_from_ss_users() {
        assert_eq!(
            pids_in(r#"users:(("scdaemon",pid=812,fd=7),("gpg",pid=9,fd=3))"#),
            vec![812, 9]
        );
        assert!(pids_in("*").is_empty());
    }

    #[test]
    fn known_programs() {
        assert_eq!(known("scdaemon", "").as_deref(), Some("GnuPG scdaemon"));
        assert_eq!(
            known(
                "firefox-esr",
                "7f.. /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
            )
            .as_deref(),
            Some("OpenSC PKCS#11 module in firefox-esr")
        );
        assert_eq!(known("python3", "libpcsclite.so.1"), None);
    }

    #[test]
    fn socket_default() {
        assert_eq!(pcscd_socket(None), "/run/pcscd/pcscd.comm");
        assert_eq!(pcscd_socket(Some("/tmp/x")), "/tmp/x");
    }
}
