//! Card state: the trussed flash images and the objects the bridge keeps, and the file that
//! holds them between runs (`--state FILE`).
//!
//! The flash lives in RAM ([`Image`]) so that littlefs never waits for the disk; after every
//! APDU that changed something, the whole state is written to `FILE.tmp` and renamed over
//! `FILE` *before* the response goes out, so a card killed at any point restarts with either
//! the old or the new state, never half of each — like a real token's flash.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    rc::Rc,
};

use littlefs2::{consts, driver::Storage, io::Error as FsError};
use trussed::virt::{StorageConfig, StoreConfig};

/// littlefs geometry of the internal and external filesystems. 256 KiB each: a real
/// YubiKey 5 has about 51 KB for PIV objects, so this never is the limit in tests.
const BLOCK_SIZE: usize = 512;
const BLOCK_COUNT: usize = 512;
pub const IMAGE_LEN: usize = BLOCK_SIZE * BLOCK_COUNT;

/// A flash image in RAM, shared between littlefs (through [`Flash`]) and the state file.
#[derive(Clone)]
pub struct Image(Rc<RefCell<ImageData>>);

struct ImageData {
    bytes: Vec<u8>,
    dirty: bool,
}

impl Image {
    /// An erased chip (NOR flash reads 0xFF after erase).
    pub fn blank() -> Self {
        Self::from_bytes(vec![0xFF; IMAGE_LEN])
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Rc::new(RefCell::new(ImageData {
            bytes,
            dirty: false,
        })))
    }

    /// Whether littlefs wrote to the image since the last call; clears the flag.
    pub fn take_dirty(&self) -> bool {
        std::mem::take(&mut self.0.borrow_mut().dirty)
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.0.borrow().bytes)
    }
}

/// littlefs's view of an [`Image`].
struct Flash(Image);

impl Flash {
    fn range(off: usize, len: usize) -> Result<std::ops::Range<usize>, FsError> {
        match off.checked_add(len) {
            Some(end) if end <= IMAGE_LEN => Ok(off..end),
            _ => Err(FsError::NO_SPACE),
        }
    }
}

impl Storage for Flash {
    const READ_SIZE: usize = 16;
    const WRITE_SIZE: usize = 16;
    const BLOCK_SIZE: usize = BLOCK_SIZE;
    const BLOCK_COUNT: usize = BLOCK_COUNT;
    const BLOCK_CYCLES: isize = -1;
    type CACHE_SIZE = consts::U512;
    // In units of 8 bytes: 64 bytes of lookahead bitmap = 512 blocks.
    type LOOKAHEAD_SIZE = consts::U8;

    fn read(&mut self, off: usize, buf: &mut [u8]) -> Result<usize, FsError> {
        let range = Self::range(off, buf.len())?;
        buf.copy_from_slice(&self.0 .0.borrow().bytes[range]);
        Ok(buf.len())
    }

    fn write(&mut self, off: usize, data: &[u8]) -> Result<usize, FsError> {
        let range = Self::range(off, data.len())?;
        let mut image = self.0 .0.borrow_mut();
        image.bytes[range].copy_from_slice(data);
        image.dirty = true;
        Ok(data.len())
    }

    fn erase(&mut self, off: usize, len: usize) -> Result<usize, FsError> {
        let range = Self::range(off, len)?;
        let mut image = self.0 .0.borrow_mut();
        image.bytes[range].fill(0xFF);
        image.dirty = true;
        Ok(len)
    }
}

/// What the bridge keeps outside the emulator (see `bridge.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeObjects {
    /// Data objects by tag (5FFFxx, 5FC10C): the value inside tag 53.
    pub objects: BTreeMap<u32, Vec<u8>>,
    /// PRINTED (5FC109) was written since the last reset (the emulator pre-fills it).
    pub printed_written: bool,
}

/// The card's persistent state.
pub struct CardState {
    pub serial: Option<u32>,
    pub internal: Image,
    pub external: Image,
    /// True when the images hold filesystems (loaded from a file); false means format.
    pub formatted: bool,
    pub bridge: BridgeObjects,
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

impl std::error::Error for StateError {}

// File format, version 1: MAGIC, then records `kind: u8, len: u32 big-endian, bytes`.
const MAGIC: &[u8; 16] = b"pivault-vcard\x00\x00\x01";
const REC_SERIAL: u8 = b'S';
const REC_INTERNAL: u8 = b'I';
const REC_EXTERNAL: u8 = b'E';
const REC_OBJECT: u8 = b'O'; // tag as u32 big-endian, then the value
const REC_PRINTED_WRITTEN: u8 = b'P';

impl CardState {
    /// A new card: blank flash, no objects.
    pub fn fresh() -> Self {
        Self {
            serial: None,
            internal: Image::blank(),
            external: Image::blank(),
            formatted: false,
            bridge: BridgeObjects::default(),
        }
    }

    /// Loads `path`; a missing or empty file gives a fresh card.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::fresh()),
            Err(err) => return Err(StateError::Io(path.to_owned(), err)),
        };
        if bytes.is_empty() {
            return Ok(Self::fresh());
        }
        Self::decode(&bytes).map_err(|why| StateError::Corrupt(path.to_owned(), why))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("bad magic or version")?;
        let mut state = Self::fresh();
        let (mut internal, mut external) = (None, None);
        while !rest.is_empty() {
            if rest.len() < 5 {
                return Err("truncated record header".into());
            }
            let kind = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let body = rest.get(5..5 + len).ok_or("truncated record")?;
            rest = &rest[5 + len..];
            match kind {
                REC_SERIAL => {
                    let raw: [u8; 4] = body.try_into().map_err(|_| "bad serial record")?;
                    state.serial = Some(u32::from_be_bytes(raw));
                }
                REC_INTERNAL | REC_EXTERNAL => {
                    if body.len() != IMAGE_LEN {
                        return Err(format!("flash image of {} bytes", body.len()));
                    }
                    let image = Some(Image::from_bytes(body.to_vec()));
                    if kind == REC_INTERNAL {
                        internal = image;
                    } else {
                        external = image;
                    }
                }
                REC_OBJECT => {
                    let tag = body.get(..4).ok_or("bad object record")?;
                    let tag = u32::from_be_bytes(tag.try_into().expect("4 bytes"));
                    state.bridge.objects.insert(tag, body[4..].to_vec());
                }
                REC_PRINTED_WRITTEN => state.bridge.printed_written = body == [1],
                other => return Err(format!("unknown record kind {other:#04x}")),
            }
        }
        match (internal, external) {
            (Some(internal), Some(external)) => {
                state.internal = internal;
                state.external = external;
                state.formatted = true;
                Ok(state)
            }
            _ => Err("flash images missing".into()),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        fn record(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            out.push(kind);
            out.extend_from_slice(&u32::try_from(len).expect("record < 4 GiB").to_be_bytes());
            for part in parts {
                out.extend_from_slice(part);
            }
        }
        let mut out = Vec::with_capacity(MAGIC.len() + 2 * (IMAGE_LEN + 5) + 64);
        out.extend_from_slice(MAGIC);
        if let Some(serial) = self.serial {
            record(&mut out, REC_SERIAL, &[&serial.to_be_bytes()]);
        }
        self.internal
            .with_bytes(|b| record(&mut out, REC_INTERNAL, &[b]));
        self.external
            .with_bytes(|b| record(&mut out, REC_EXTERNAL, &[b]));
        for (tag, value) in &self.bridge.objects {
            record(&mut out, REC_OBJECT, &[&tag.to_be_bytes(), value]);
        }
        let printed = [u8::from(self.bridge.printed_written)];
        record(&mut out, REC_PRINTED_WRITTEN, &[&printed]);
        out
    }

    /// Writes the state atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io_err = |err| StateError::Io(path.to_owned(), err);
        fs::write(&tmp, self.encode()).map_err(io_err)?;
        fs::rename(&tmp, path).map_err(io_err)
    }

    /// trussed's store configuration: our two images, and a RAM volatile filesystem.
    pub fn store_config(&self) -> StoreConfig<'static> {
        let flash = |image: &Image| StorageConfig {
            storage: Box::new(Flash(image.clone())),
            format: !self.formatted,
        };
        StoreConfig {
            internal: flash(&self.internal),
            external: flash(&self.external),
            volatile: StorageConfig::ram(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut state = CardState::fresh();
        state.serial = Some(10_000_001);
        state
            .bridge
            .objects
            .insert(0x5F_FF00, vec![0x80, 0x01, 0x01]);
        state.bridge.printed_written = true;
        state.internal.0.borrow_mut().bytes[7] = 0x42;
        let back = CardState::decode(&state.encode()).unwrap();
        assert_eq!(back.serial, Some(10_000_001));
        assert_eq!(back.bridge, state.bridge);
        assert!(back.formatted);
        assert_eq!(back.internal.with_bytes(|b| b[7]), 0x42);
        assert_eq!(back.external.with_bytes(|b| b[7]), 0xFF);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(CardState::decode(b"hello").is_err());
        let mut bytes = CardState::fresh().encode();
        bytes.truncate(bytes.len() - 3);
        assert!(CardState::decode(&bytes).is_err());
    }
}
