//! Watching PC/SC readers: which hold a card now, and what changed since the last look
//! (cards inserted or removed, readers plugged in or out), through SCardGetStatusChange.

use super::TokenError;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::time::Duration;

/// Something that happened on a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    Inserted(String),
    Removed(String),
}

/// A reader watcher. Readers added later are picked up through PnP notification.
pub struct Watcher {
    ctx: pcsc::Context,
    /// One state per known reader, then the PnP pseudo-reader last; kept across calls so
    /// pcsc-lite's event counters carry over (otherwise every call returns at once).
    states: Vec<pcsc::ReaderState>,
    present: BTreeMap<String, bool>,
}

fn pcsc_err(e: pcsc::Error) -> TokenError {
    match e {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped => {
            TokenError::Pcsc("the PC/SC service (pcscd) is not running".into())
        }
        // What a client of pcsc-lite sees when pcscd dies under it: the call in progress
        // fails with SCARD_F_COMM_ERROR (measured: pcscd SIGKILLed during
        // SCardGetStatusChange), later calls on the old context with an invalid handle.
        pcsc::Error::CommError | pcsc::Error::InvalidHandle => TokenError::Pcsc(format!(
            "the PC/SC service (pcscd) stopped or restarted ({e})"
        )),
        e => TokenError::Pcsc(e.to_string()),
    }
}

impl Watcher {
    pub fn new() -> Result<Watcher, TokenError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(pcsc_err)?;
        Ok(Watcher {
            ctx,
            states: vec![pcsc::ReaderState::new(
                pcsc::PNP_NOTIFICATION(),
                pcsc::State::UNAWARE,
            )],
            present: BTreeMap::new(),
        })
    }

    /// A new PC/SC context after pcscd went away (the old one is dead for good), and a
    /// fresh start: cards present at the next poll count as inserted.
    pub fn reconnect(&mut self) -> Result<(), TokenError> {
        *self = Watcher::new()?;
        Ok(())
    }

    fn reader_names(&self) -> Result<Vec<CString>, TokenError> {
        match self.ctx.list_readers_owned() {
            Ok(r) => Ok(r),
            Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
            Err(e) => Err(pcsc_err(e)),
        }
    }

    /// Keep one state per current reader (new ones UNAWARE), PnP last.
    fn refresh_readers(&mut self) -> Result<(), TokenError> {
        let names = self.reader_names()?;
        let pnp = self.states.pop();
        self.states
            .retain(|s| names.iter().any(|n| n.as_c_str() == s.name()));
        for n in names {
            if !self.states.iter().any(|s| s.name() == n.as_c_str()) {
                self.states
                    .push(pcsc::ReaderState::new(n, pcsc::State::UNAWARE));
            }
        }
        self.states.extend(pnp);
        Ok(())
    }

    /// Whether the last poll saw a card in `reader`.
    pub fn present(&self, reader: &str) -> bool {
        self.present.get(reader).copied().unwrap_or(false)
    }

    /// Wait up to `timeout` for changes and return them (cards present at the first call
    /// count as inserted).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ReaderEvent>, TokenError> {
        self.refresh_readers()?;
        match self.ctx.get_status_change(timeout, &mut self.states) {
            Ok(()) | Err(pcsc::Error::Timeout) | Err(pcsc::Error::UnknownReader) => {}
            Err(e) => return Err(pcsc_err(e)),
        }
        let mut events = Vec::new();
        let mut seen = BTreeMap::new();
        for st in self.states.iter_mut() {
            st.sync_current_state();
            if st.name() == pcsc::PNP_NOTIFICATION() {
                continue;
            }
            let name = st.name().to_string_lossy().into_owned();
            let ev = st.event_state();
            let now = ev.contains(pcsc::State::PRESENT) && !ev.contains(pcsc::State::MUTE);
            let before = self.present.get(&name).copied().unwrap_or(false);
            if now && !before {
                events.push(ReaderEvent::Inserted(name.clone()));
            } else if !now && before {
                events.push(ReaderEvent::Removed(name.clone()));
            }
            seen.insert(name, now);
        }
        for (name, was) in &self.present {
            if *was && !seen.contains_key(name) {
                events.push(ReaderEvent::Removed(name.clone()));
            }
        }
        self.present = seen;
        Ok(events)
    }
}
