//! Watching the readers: one thread per inserted token, a summary at the end.

use super::report::{TokenLine, TokenResult};
use super::Station;
use crate::error::Error;
use crate::piv::readers::{ReaderEvent, Watcher};
use crate::piv::yubikey::{Selector, YubiKeyToken};
use crate::piv::{PivToken, TokenError};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// When a station run ends by itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many token reports.
    pub max_tokens: Option<usize>,
    /// Stop when no token is in flight and nothing happened for this long.
    pub idle_exit: Option<Duration>,
    /// Watch only these readers (exact PC/SC names); all when empty.
    pub readers: Vec<String>,
    /// How long a token waits in its reader for an unavailable Vault before it is reported
    /// failed.
    pub vault_wait: Duration,
}

/// Counts for the closing summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tokens: usize,
    pub enrolled: usize,
    pub already_enrolled: usize,
    pub failed: usize,
}

/// Watch the readers and enroll tokens in parallel (one thread per reader) until `stop`
/// is set (SIGINT/SIGTERM) or an option ends the run; tokens in flight are finished first.
///
/// When pcscd goes away (stopped, or restarted as on a package upgrade) the watcher
/// reconnects for up to [`PCSCD_WAIT`]: a token in flight has lost its card connection
/// and is reported failed, and every token still in a reader once pcscd answers again is
/// worked on again, as a freshly started station would (the workflow resumes from its
/// journal and escrow record; an enrolled token is reported already enrolled). If pcscd
/// stays away, the run ends with the watcher's error once the tokens in flight are
/// reported; so does a run stopped (signal, `--idle-exit`) while pcscd is away.
pub fn run(
    st: &Station<'_>,
    opts: &RunOptions,
    stop: &AtomicBool,
    on_event: &(dyn Fn(&str) + Sync),
    on_line: &mut dyn FnMut(&TokenLine),
) -> Result<Summary, Error> {
    let mut watcher = Watcher::new()?;
    let mut summary = Summary::default();
    let mut failure = None;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<(String, TokenLine)>();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        // Readers that saw a new insertion while their previous token was worked on.
        let mut again: BTreeSet<String> = BTreeSet::new();
        let mut last_activity = Instant::now();
        // Since when the watcher has failed, and why (pcscd stopped or restarting).
        let mut down: Option<(Instant, TokenError)> = None;
        let spawn = |reader: String, busy: &mut BTreeSet<String>| {
            on_event(&format!("{reader}: token inserted"));
            busy.insert(reader.clone());
            let tx = tx.clone();
            s.spawn(move || {
                let line = work_on(st, opts, stop, on_event, &reader);
                let _ = tx.send((reader, line));
            });
        };
        loop {
            let complete = opts
                .max_tokens
                .is_some_and(|m| summary.tokens + busy.len() >= m);
            let done = complete
                || stop.load(Ordering::SeqCst)
                || (busy.is_empty()
                    && opts.idle_exit.is_some_and(|d| last_activity.elapsed() >= d));
            if done {
                // Stopped or idle while pcscd is away is no success: tokens may be waiting
                // in readers nobody watched. A batch complete to --max-tokens is reported
                // in full.
                if !complete {
                    failure = down.take().map(|(_, e)| e);
                }
                break;
            }
            let mine = |r: &str| opts.readers.is_empty() || opts.readers.iter().any(|x| x == r);
            let polled = match down {
                // pcscd went away: its context is dead; a new one finds it back.
                Some(_) => watcher
                    .reconnect()
                    .and_then(|()| watcher.poll(Duration::from_millis(250))),
                None => watcher.poll(Duration::from_millis(250)),
            };
            let events = match polled {
                Ok(ev) => {
                    if let Some((since, _)) = down.take() {
                        on_event(&format!(
                            "reader watcher: pcscd answers again after {} ms; tokens in the \
                             readers are worked on again",
                            since.elapsed().as_millis()
                        ));
                    }
                    ev
                }
                Err(e) => {
                    let since = match &down {
                        Some((since, _)) => *since,
                        None => {
                            on_event(&format!(
                                "reader watcher: {e}; waiting up to {} s for pcscd",
                                PCSCD_WAIT.as_secs()
                            ));
                            Instant::now()
                        }
                    };
                    if since.elapsed() >= PCSCD_WAIT {
                        // The tokens in flight are still finished and reported below.
                        on_event(&format!(
                            "reader watcher: pcscd did not come back in {} s; finishing the \
                             {} token(s) in flight, then stopping",
                            PCSCD_WAIT.as_secs(),
                            busy.len()
                        ));
                        failure = Some(e);
                        break;
                    }
                    down = Some((since, e));
                    std::thread::sleep(Duration::from_millis(500));
                    Vec::new()
                }
            };
            for ev in events {
                match ev {
                    ReaderEvent::Inserted(r) | ReaderEvent::Removed(r) if !mine(&r) => {}
                    ReaderEvent::Inserted(reader) if busy.contains(&reader) => {
                        // Pulled and another (or the same) token inserted while the worker
                        // still holds the reader: work on it once the worker is done.
                        again.insert(reader);
                    }
                    ReaderEvent::Inserted(reader) => {
                        last_activity = Instant::now();
                        spawn(reader, &mut busy);
                    }
                    ReaderEvent::Removed(reader) => {
                        last_activity = Instant::now();
                        on_event(&format!("{reader}: token removed"));
                    }
                }
            }
            while let Ok((reader, line)) = rx.try_recv() {
                busy.remove(&reader);
                last_activity = Instant::now();
                summary.count(&line);
                on_line(&line);
                if again.remove(&reader) && watcher.present(&reader) {
                    spawn(reader, &mut busy);
                }
            }
        }
        // Finish the tokens in flight.
        drop(tx);
        while !busy.is_empty() {
            match rx.recv() {
                Ok((reader, line)) => {
                    busy.remove(&reader);
                    summary.count(&line);
                    on_line(&line);
                }
                Err(_) => break,
            }
        }
    });
    match failure {
        Some(e) => Err(watcher_failed(e, summary.tokens)),
        None => Ok(summary),
    }
}

/// The run's error when the reader watcher failed (pcscd stopped or restarted under the
/// station): says so, and that the tokens in flight were still reported.
fn watcher_failed(e: TokenError, reported: usize) -> Error {
    let why = match e {
        TokenError::Pcsc(why) => why,
        other => other.to_string(),
    };
    TokenError::WatcherFailed { why, reported }.into()
}

/// Open the token just inserted in `reader` and work on it. Opening is retried for a few
/// seconds: right after an insertion (or after another PC/SC client died mid-transaction)
/// the reader can refuse for a moment.
fn work_on(
    st: &Station<'_>,
    opts: &RunOptions,
    stop: &AtomicBool,
    on_event: &(dyn Fn(&str) + Sync),
    reader: &str,
) -> TokenLine {
    let sel = Selector {
        serial: None,
        reader: Some(reader.to_string()),
    };
    let t0 = Instant::now();
    let mut token = loop {
        match YubiKeyToken::open(&sel) {
            Ok(t) => break t,
            Err(e) if t0.elapsed() < OPEN_RETRY && !stop.load(Ordering::SeqCst) => {
                log::info!("{reader}: cannot open the token yet ({e}); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                let mut l = TokenLine::new(None, reader);
                l.error = Some(e.to_string());
                return l;
            }
        }
    };
    let serial = token.info().serial;
    on_event(&format!("{reader}: serial {serial} working"));
    let t0 = Instant::now();
    let mut waited = false;
    let mut moved = 0;
    loop {
        let line = st.process(&mut token);
        if line.record_moved && moved < MAX_RECORD_MOVED && !stop.load(Ordering::SeqCst) {
            // Read the record again and resume from it (the credentials step probes the
            // token, so nothing is applied twice); another station really working on this
            // token keeps failing and is reported after a few passes.
            moved += 1;
            on_event(&format!(
                "{reader}: serial {serial}: {}; reading the record again",
                line.error.as_deref().unwrap_or("escrow record moved")
            ));
            std::thread::sleep(Duration::from_millis(500 * moved));
            continue;
        }
        // Vault away (or an escrow write left in doubt by a leader change): the token
        // waits in its reader and the work resumes (journal + record, a pending credential
        // change first) when it is back. A sign whose answer was lost is not retried here:
        // it is "in doubt", reported by `process`.
        if !line.vault_unavailable || stop.load(Ordering::SeqCst) || t0.elapsed() >= opts.vault_wait
        {
            if waited {
                on_event(&format!(
                    "{reader}: serial {serial} waited {} s for Vault; {}",
                    t0.elapsed().as_secs(),
                    if line.vault_unavailable {
                        "gave up (--vault-wait)"
                    } else {
                        "resumed"
                    }
                ));
            }
            return line;
        }
        waited = true;
        on_event(&format!(
            "{reader}: serial {serial} waiting for Vault: {}",
            line.error.as_deref().unwrap_or("unavailable")
        ));
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// How long the reader watcher waits for pcscd to come back before the run fails: a
/// restart (`systemctl restart pcscd`, a package upgrade; socket activation starts it on
/// the next connection) takes about a second.
pub const PCSCD_WAIT: Duration = Duration::from_secs(15);

/// How many times a token is worked on again after its escrow record moved under it.
const MAX_RECORD_MOVED: u64 = 3;

/// How long a just-inserted token may refuse to open before it is reported failed.
const OPEN_RETRY: Duration = Duration::from_secs(5);

impl Summary {
    fn count(&mut self, l: &TokenLine) {
        self.tokens += 1;
        match l.result {
            TokenResult::Enrolled | TokenResult::Resumed => self.enrolled += 1,
            TokenResult::AlreadyEnrolled => self.already_enrolled += 1,
            _ => self.failed += 1,
        }
    }
}
