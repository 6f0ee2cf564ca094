//! The card's persistent state and the file that holds it between runs (`--state FILE`).
//!
//! After every APDU that changed something the whole state is written to `FILE.tmp` and
//! renamed over `FILE` *before* the response goes out, so a card killed at any point
//! restarts with either the old or the new state, never half of each — like a real
//! token's flash. The file is JSON (format 2): readable when a test fails. It holds key
//! material in the clear: it is a test card; the file is created mode 0600.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::firmware::Firmware;
use crate::keys::StoredKey;

const FORMAT: u32 = 2;

/// PIN and PUK factory values (Yubico PIV defaults), padded to 8 bytes with FF.
pub const DEFAULT_PIN: &[u8; 8] = b"123456\xFF\xFF";
pub const DEFAULT_PUK: &[u8; 8] = b"12345678";
/// Factory management key: 01..08 three times (3DES before 5.7, AES-192 from 5.7).
pub const DEFAULT_MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// Retry counters after manufacture and after RESET.
pub const DEFAULT_TRIES: u8 = 3;

/// Everything that survives a power cycle.
#[derive(Clone, Serialize, Deserialize)]
pub struct CardState {
    pub format: u32,
    pub serial: Option<u32>,
    /// The test attestation CA (keys and certificates, PEM) from attest.rs.
    pub attestation_ca: Option<String>,
    pub piv: PivState,
}

/// The PIV applet's persistent data.
#[derive(Clone, Serialize, Deserialize)]
pub struct PivState {
    /// PIN and PUK, 8 bytes padded with FF, hex.
    pub pin: String,
    pub puk: String,
    pub pin_tries_total: u8,
    pub pin_tries_left: u8,
    pub puk_tries_total: u8,
    pub puk_tries_left: u8,
    pub mgmt: MgmtKey,
    /// Keys by slot ("9a", "f9", …).
    pub slots: BTreeMap<String, SlotKey>,
    /// Data objects by tag ("5fc105", "7e", …): the value inside tag 53, hex.
    pub objects: BTreeMap<String, String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MgmtKey {
    pub algorithm: u8,
    pub key: String,
    /// Touch policy: 1 never, 2 always (SET MGMT KEY with P2 = FE).
    pub touch: u8,
}

impl fmt::Debug for MgmtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MgmtKey {{ algorithm: {:#04x}, .. }}", self.algorithm)
    }
}

/// A key in a slot with its policies (resolved: never "default") and origin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotKey {
    pub key: StoredKey,
    pub pin_policy: u8,
    pub touch_policy: u8,
    pub generated: bool,
}

impl PivState {
    /// A PIV applet as manufactured (or after RESET) on `firmware`.
    pub fn factory(firmware: &Firmware) -> PivState {
        PivState {
            pin: hex::encode(DEFAULT_PIN),
            puk: hex::encode(DEFAULT_PUK),
            pin_tries_total: DEFAULT_TRIES,
            pin_tries_left: DEFAULT_TRIES,
            puk_tries_total: DEFAULT_TRIES,
            puk_tries_left: DEFAULT_TRIES,
            mgmt: MgmtKey {
                algorithm: firmware.default_mgmt_algorithm(),
                key: hex::encode(DEFAULT_MGMT_KEY),
                touch: 1,
            },
            slots: BTreeMap::new(),
            objects: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
pub enum StateError {
    Io(PathBuf, io::Error),
    Corrupt(PathBuf, String),
    InUse(PathBuf),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(path, err) => write!(f, "state file {}: {err}", path.display()),
            Self::Corrupt(path, why) => write!(
                f,
                "state file {} is not a pivault-vcard state ({why}); remove it to start with a fresh card",
                path.display()
            ),
            Self::InUse(lock) => write!(
                f,
                "another pivault-vcard uses this state (it holds {}); stop it first",
                lock.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// Takes `FILE.lock` (created next to the state file) for the life of the returned handle.
pub fn lock(path: &Path) -> Result<fs::File, StateError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|err| StateError::Io(lock_path.clone(), err))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StateError::InUse(lock_path)),
        Err(fs::TryLockError::Error(err)) => Err(StateError::Io(lock_path, err)),
    }
}

impl CardState {
    /// A new card on `firmware`.
    pub fn fresh(firmware: &Firmware) -> CardState {
        CardState {
            format: FORMAT,
            serial: None,
            attestation_ca: None,
            piv: PivState::factory(firmware),
        }
    }

    /// Loads `path`; a missing or empty file gives a fresh card.
    pub fn load(path: &Path, firmware: &Firmware) -> Result<CardState, StateError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::fresh(firmware)),
            Err(err) => return Err(StateError::Io(path.to_owned(), err)),
        };
        if bytes.is_empty() {
            return Ok(Self::fresh(firmware));
        }
        Self::decode(&bytes).map_err(|why| StateError::Corrupt(path.to_owned(), why))
    }

    pub fn decode(bytes: &[u8]) -> Result<CardState, String> {
        let state: CardState = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if state.format != FORMAT {
            return Err(format!(
                "format {} (this card reads {FORMAT})",
                state.format
            ));
        }
        Ok(state)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Writes the state atomically (temporary file + rename), owner-only.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io_err = |err| StateError::Io(path.to_owned(), err);
        let mut file = fs::File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(&self.encode()).map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let fw = Firmware::new([5, 7, 4]);
        let mut state = CardState::fresh(&fw);
        state.serial = Some(10_000_001);
        state.piv.objects.insert("5fff00".into(), "800101".into());
        let back = CardState::decode(&state.encode()).unwrap();
        assert_eq!(back.serial, Some(10_000_001));
        assert_eq!(back.piv.objects, state.piv.objects);
        assert_eq!(back.piv.mgmt, state.piv.mgmt);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(CardState::decode(b"hello").is_err());
        let mut bytes = CardState::fresh(&Firmware::new([5, 2, 7])).encode();
        bytes.truncate(bytes.len() - 3);
        assert!(CardState::decode(&bytes).is_err());
    }
}
