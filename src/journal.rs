//! The one local journal, used by the station and by `renew`: per token, the keys
//! generated and not yet certified, the certificate requests sent whose answer has not
//! come back ("in doubt"), and the certificates issued and not yet imported. No secrets.
//!
//! Durable: written to a temporary file, fsynced, renamed over the old one, and the
//! directory fsynced; owner-only (directory 0700, files 0600), since it tells which
//! tokens are being worked on.

use crate::enroll::Issued;
use crate::error::Error;
use crate::piv::Slot;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What one token's journal holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Public keys generated (base64 DER SubjectPublicKeyInfo), per slot.
    #[serde(default)]
    pub keys: BTreeMap<Slot, String>,
    /// Certificate requests sent whose answer was not recorded (time sent, RFC 3339).
    #[serde(default)]
    pub requested: BTreeMap<Slot, String>,
    /// Certificates issued, per slot.
    #[serde(default)]
    pub issued: BTreeMap<Slot, Issued>,
}

impl Entry {
    pub fn key(&self, slot: Slot) -> Option<SubjectPublicKeyInfoOwned> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.keys.get(&slot)?)
            .ok()?;
        SubjectPublicKeyInfoOwned::from_der(&b).ok()
    }

    pub fn set_key(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        use base64::Engine;
        let der = key
            .to_der()
            .map_err(|e| Error::Escrow(format!("public key: {e}")))?;
        self.keys
            .insert(slot, base64::engine::general_purpose::STANDARD.encode(der));
        Ok(())
    }

    /// Forget a finished slot.
    pub fn clear_slot(&mut self, slot: Slot) {
        self.keys.remove(&slot);
        self.requested.remove(&slot);
        self.issued.remove(&slot);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.requested.is_empty() && self.issued.is_empty()
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, serial: u32) -> PathBuf {
        self.dir.join(format!("{serial}.json"))
    }

    /// `Err(InDoubt)` when `entry` says a request for `slot` was sent and its answer lost:
    /// Vault may have issued, so the slot is never requested again automatically (the one
    /// check every slot policy makes first).
    pub fn check_not_in_doubt(&self, serial: u32, entry: &Entry, slot: Slot) -> Result<(), Error> {
        match entry.requested.get(&slot) {
            Some(since) => Err(Error::InDoubt {
                slot,
                since: since.clone(),
                journal: self.path(serial),
            }),
            None => Ok(()),
        }
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::Io {
            what: format!("journal {}", self.dir.display()),
            source: e,
        }
    }

    /// The token's entry (empty when there is none). An unreadable journal is an error:
    /// reading it as empty would repeat work it records.
    pub fn load(&self, serial: u32) -> Result<Entry, Error> {
        let mut e: Entry = match std::fs::read(self.path(serial)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Io {
                what: format!("journal {}", self.path(serial).display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Entry::default(),
            Err(e) => return Err(self.io(e)),
        };
        // pivault 0.1's renew kept one DER file per slot.
        for slot in Slot::all() {
            let old = self.dir.join(format!("renew-{serial}-{slot}.der"));
            if let Ok(der) = std::fs::read(&old) {
                if SubjectPublicKeyInfoOwned::from_der(&der).is_ok() {
                    use base64::Engine;
                    e.keys
                        .entry(slot)
                        .or_insert_with(|| base64::engine::general_purpose::STANDARD.encode(&der));
                }
            }
        }
        Ok(e)
    }

    /// Write the entry durably; an empty entry removes the file.
    pub fn save(&self, serial: u32, e: &Entry) -> Result<(), Error> {
        let path = self.path(serial);
        if e.is_empty() {
            return self.clear(serial);
        }
        let bytes = serde_json::to_vec(e).map_err(|e| self.io(e.into()))?;
        self.ensure_dir()?;
        let tmp = path.with_extension("tmp");
        let mut f = owner_only().open(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.io(e))?;
        self.sync_dir()
    }

    /// Remove the token's entry (its work is finished).
    pub fn clear(&self, serial: u32) -> Result<(), Error> {
        let mut gone = false;
        for p in std::iter::once(self.path(serial))
            .chain(Slot::all().map(|slot| self.dir.join(format!("renew-{serial}-{slot}.der"))))
        {
            match std::fs::remove_file(&p) {
                Ok(()) => gone = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        if gone {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn ensure_dir(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(e))
    }

    fn sync_dir(&self) -> Result<(), Error> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }
}

fn owner_only() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(0o600);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reload_and_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let j = Journal::new(&dir.path().join("j"));
        assert!(j.load(7).expect("empty").is_empty());
        let mut e = Entry::default();
        e.requested
            .insert(Slot::AUTHENTICATION, "2026-12-01T00:00:00Z".into());
        j.save(7, &e).expect("save");
        assert_eq!(j.load(7).expect("load"), e);
        let mode = std::fs::metadata(dir.path().join("j/7.json"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        j.clear(7).expect("clear");
        assert!(j.load(7).expect("gone").is_empty());
        std::fs::write(dir.path().join("j/8.json"), b"{not json").expect("write");
        assert!(j.load(8).is_err(), "a damaged journal is not an empty one");
    }
}
