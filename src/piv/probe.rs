//! Looking at readers without waiting on anyone (for `pivault doctor`): pcscd's answer,
//! each reader's state, and which token a reader holds, each step bounded in time.
//!
//! Why bounded: a program that holds a card in a PC/SC transaction (SCardBeginTransaction,
//! as scdaemon or a PKCS#11 module do for the length of an operation) makes every other
//! client's SCardBeginTransaction wait, and pcsc-lite's client library waits without a
//! limit. A program that connected with SCARD_SHARE_EXCLUSIVE makes other connects fail
//! with SCARD_E_SHARING_VIOLATION at once, and pcscd flags the reader
//! SCARD_STATE_EXCLUSIVE (pcsc-lite `winscard.c`, PC/SC Workgroup spec part 5, 3.1.3).

use super::{FirmwareVersion, TokenError, TokenInfo};
use std::sync::mpsc;
use std::time::Duration;

/// One reader as pcscd reports it (SCardGetStatusChange, no waiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderState {
    pub name: String,
    /// A card is in the reader and powered (not mute).
    pub card: bool,
    /// Another client connected to it with SCARD_SHARE_EXCLUSIVE.
    pub exclusive: bool,
    /// Some client is connected to it (shared).
    pub in_use: bool,
}

/// What a reader's card turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardProbe {
    /// A YubiKey PIV application answered.
    Token(TokenInfo),
    /// The connect was refused: another program holds the reader exclusively.
    Exclusive,
    /// No answer within the time allowed: another program holds the card (a transaction).
    Busy,
    /// A card without a YubiKey PIV application, or one that failed to answer.
    Other(String),
}

fn pcsc_err(e: pcsc::Error) -> TokenError {
    match e {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::CommError => {
            TokenError::Pcsc(format!("the PC/SC service (pcscd) is not reachable: {e}"))
        }
        e => TokenError::Pcsc(e.to_string()),
    }
}

/// Ask pcscd for its readers and their state. Fails when pcscd cannot be reached (not
/// running, or its socket, `$PCSCLITE_CSOCK_NAME` or the default, refuses us).
pub fn readers() -> Result<Vec<ReaderState>, TokenError> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(pcsc_err)?;
    let names = match ctx.list_readers_owned() {
        Ok(r) => r,
        Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
        Err(e) => return Err(pcsc_err(e)),
    };
    let mut states: Vec<pcsc::ReaderState> = names
        .into_iter()
        .map(|n| pcsc::ReaderState::new(n, pcsc::State::UNAWARE))
        .collect();
    match ctx.get_status_change(Duration::ZERO, &mut states) {
        // UNAWARE states come back at once; a reader unplugged meanwhile is just absent.
        Ok(()) | Err(pcsc::Error::Timeout) | Err(pcsc::Error::UnknownReader) => {}
        Err(e) => return Err(pcsc_err(e)),
    }
    Ok(states
        .iter()
        .map(|st| {
            let ev = st.event_state();
            ReaderState {
                name: st.name().to_string_lossy().into_owned(),
                card: ev.contains(pcsc::State::PRESENT) && !ev.contains(pcsc::State::MUTE),
                exclusive: ev.contains(pcsc::State::EXCLUSIVE),
                in_use: ev.contains(pcsc::State::INUSE),
            }
        })
        .collect())
}

/// Open `reader` as a YubiKey (SELECT of the PIV application, version and serial), within
/// `timeout`. The card is left as it was (no reset). On timeout the probe thread is left
/// waiting on pcscd; it ends when the other program lets go, or with the process.
///
/// Selecting the PIV application ends another program's PIN session on that card: probe
/// only the readers asked for.
pub fn probe_card(reader: &str, timeout: Duration) -> CardProbe {
    probe_cards(&[reader.to_string()], timeout)
        .pop()
        .unwrap_or(CardProbe::Busy)
}

/// [`probe_card`] for several readers at once (one thread each), all within `timeout`:
/// a station with eight readers, one of them held, answers in `timeout`, not eight times
/// it. One result per reader, in order.
pub fn probe_cards(readers: &[String], timeout: Duration) -> Vec<CardProbe> {
    let deadline = std::time::Instant::now() + timeout;
    let pending: Vec<Result<mpsc::Receiver<CardProbe>, String>> = readers
        .iter()
        .map(|reader| {
            let (tx, rx) = mpsc::channel();
            let name = reader.clone();
            std::thread::Builder::new()
                .name("pivault-probe".into())
                .spawn(move || {
                    let _ = tx.send(open_one(&name));
                })
                .map(|_| rx)
                .map_err(|e| format!("cannot start the probe: {e}"))
        })
        .collect();
    pending
        .into_iter()
        .map(|p| match p {
            Ok(rx) => rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or(CardProbe::Busy),
            Err(e) => CardProbe::Other(e),
        })
        .collect()
}

fn open_one(reader: &str) -> CardProbe {
    let mut ctx = match yubikey::reader::Context::open() {
        Ok(c) => c,
        Err(e) => return CardProbe::Other(e.to_string()),
    };
    let readers = match ctx.iter() {
        Ok(r) => r,
        Err(e) => return CardProbe::Other(e.to_string()),
    };
    let Some(r) = readers.into_iter().find(|r| r.name() == reader) else {
        return CardProbe::Other("the reader is gone".into());
    };
    match r.open() {
        Ok(yk) => {
            let v = yk.version();
            let info = TokenInfo {
                serial: yk.serial().0,
                version: FirmwareVersion::new(v.major, v.minor, v.patch),
                reader: reader.to_string(),
            };
            let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
            CardProbe::Token(info)
        }
        Err(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::SharingViolation),
        }) => CardProbe::Exclusive,
        Err(e) => CardProbe::Other(e.to_string()),
    }
}
