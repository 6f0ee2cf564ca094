//! `--fault`: crash-test hooks at exact APDU boundaries.
//!
//! APDUs are numbered from 1 in the order the card receives them from vpcd (the same
//! count `apdus=N` reports; GET RESPONSE and each command of a chain count as one).
//! - `vanish@N`: on receiving APDU N, before processing it, the card disappears as if
//!   pulled: the process prints `vanished apdu=N ins=XX` and exits with code 5, closing
//!   the vpcd connection; persistent state is what APDU N−1 left (it is saved before each
//!   answer), volatile state (PIN verified, management key authenticated) is gone.
//! - `pause-before@N` / `pause-after@N`: at APDU N, before it is processed / after it is
//!   processed and its state saved but before the answer is sent, print
//!   `paused apdu=N ins=XX` on stdout and wait for SIGUSR2. A harness can SIGKILL the
//!   client (or the card) while it waits.
//! - `reselect-after-ins@XX` (XX hex): after the first APDU with instruction XX, the card
//!   forgets the PIN verification and management-key authentication as a SELECT of the
//!   PIV application would (SP 800-73-4 Part 2, 3.1.1), and prints `reselected apdu=N
//!   ins=XX`: what a client sees when another PC/SC client (Debian's ykman 4 lists every
//!   reader this way) selects the application between two of its commands.
//! - `metadata-answer@HEX` (2 to 18 bytes: data, then the status word): every GET
//!   METADATA (INS F7) gets this answer instead of the card's own: a broken or hostile
//!   token (`01009000`, an algorithm tag with no value, aborted the `yubikey` crate's
//!   parser), or a 5.3+ version number on firmware without the instruction (`6D00`). The
//!   card's state is not touched (GET METADATA changes nothing).

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Vanish(u64),
    PauseBefore(u64),
    PauseAfter(u64),
    ReselectAfterIns(u8),
    /// The answer (the first `len` bytes, status word last) to every GET METADATA.
    MetadataAnswer {
        bytes: [u8; 18],
        len: u8,
    },
}

impl Fault {
    /// The answer (data and status word) a `metadata-answer@HEX` fault puts in place of
    /// the card's.
    pub fn metadata_answer(&self) -> Option<&[u8]> {
        match self {
            Fault::MetadataAnswer { bytes, len } => bytes.get(..usize::from(*len)),
            _ => None,
        }
    }
}

impl Fault {
    pub fn parse(s: &str) -> Result<Fault, String> {
        let usage = || {
            format!(
                "{s:?}: expected vanish@N, pause-before@N or pause-after@N (N ≥ 1), \
                 reselect-after-ins@XX (XX hex) or metadata-answer@HEX (2 to 18 bytes)"
            )
        };
        let (kind, n) = s.split_once('@').ok_or_else(usage)?;
        if kind == "metadata-answer" {
            let data = hex::decode(n).map_err(|_| usage())?;
            if data.len() < 2 {
                return Err(usage());
            }
            let mut bytes = [0u8; 18];
            bytes
                .get_mut(..data.len())
                .ok_or_else(usage)?
                .copy_from_slice(&data);
            let len = u8::try_from(data.len()).map_err(|_| usage())?;
            return Ok(Fault::MetadataAnswer { bytes, len });
        }
        if kind == "reselect-after-ins" {
            return u8::from_str_radix(n, 16)
                .map(Fault::ReselectAfterIns)
                .map_err(|_| usage());
        }
        let n: u64 = n.parse().map_err(|_| usage())?;
        if n == 0 {
            return Err(usage());
        }
        match kind {
            "vanish" => Ok(Fault::Vanish(n)),
            "pause-before" => Ok(Fault::PauseBefore(n)),
            "pause-after" => Ok(Fault::PauseAfter(n)),
            _ => Err(usage()),
        }
    }
}

/// Blocks the card thread until SIGUSR2 (see `main.rs`) calls [`Pauser::resume`].
#[derive(Clone, Default)]
pub struct Pauser(Arc<(Mutex<bool>, Condvar)>);

impl Pauser {
    pub fn pause(&self, apdu: u64, ins: u8) {
        let (lock, wake) = &*self.0;
        let mut resumed = lock.lock().unwrap_or_else(|e| e.into_inner());
        *resumed = false;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "paused apdu={apdu} ins={ins:02X}");
            let _ = out.flush();
        }
        while !*resumed {
            resumed = wake.wait(resumed).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        let (lock, wake) = &*self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(Fault::parse("vanish@3"), Ok(Fault::Vanish(3)));
        assert_eq!(Fault::parse("pause-after@12"), Ok(Fault::PauseAfter(12)));
        assert_eq!(
            Fault::parse("reselect-after-ins@47"),
            Ok(Fault::ReselectAfterIns(0x47))
        );
        assert!(Fault::parse("reselect-after-ins@zz").is_err());
        let f = Fault::parse("metadata-answer@01009000").expect("parses");
        assert_eq!(f.metadata_answer(), Some(&[1u8, 0, 0x90, 0][..]));
        assert!(Fault::parse("metadata-answer@6D").is_err());
        assert!(Fault::parse("metadata-answer@00112233445566778899aabbccddeeff9000").is_ok());
        assert!(Fault::parse("metadata-answer@00112233445566778899aabbccddeeff009000").is_err());
        assert!(Fault::parse("vanish@0").is_err());
        assert!(Fault::parse("explode@1").is_err());
    }
}
