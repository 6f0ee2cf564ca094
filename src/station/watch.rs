//! Watching the readers: one thread per inserted token, a summary at the end.

use super::report::TokenLine;
use super::Station;
use crate::error::Error;
use crate::piv::yubikey::{Selector, YubiKeyToken};
use crate::piv::PivToken;
use crate::readers::{ReaderEvent, Watcher};
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
pub fn run(
    st: &Station<'_>,
    opts: &RunOptions,
    stop: &AtomicBool,
    on_event: &(dyn Fn(&str) + Sync),
    on_line: &mut dyn FnMut(&TokenLine),
) -> Result<Summary, Error> {
    let mut watcher = Watcher::new()?;
    let mut summary = Summary::default();
    std::thread::scope(|s| -> Result<(), Error> {
        let (tx, rx) = std::sync::mpsc::channel::<(String, TokenLine)>();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut last_activity = Instant::now();
        loop {
            let done = stop.load(Ordering::SeqCst)
                || opts
                    .max_tokens
                    .is_some_and(|m| summary.tokens + busy.len() >= m)
                || (busy.is_empty()
                    && opts.idle_exit.is_some_and(|d| last_activity.elapsed() >= d));
            if done {
                break;
            }
            let mine = |r: &str| opts.readers.is_empty() || opts.readers.iter().any(|x| x == r);
            for ev in watcher.poll(Duration::from_millis(250))? {
                match ev {
                    ReaderEvent::Inserted(r) | ReaderEvent::Removed(r) if !mine(&r) => {}
                    ReaderEvent::Inserted(reader) if !busy.contains(&reader) => {
                        last_activity = Instant::now();
                        on_event(&format!("{reader}: token inserted"));
                        busy.insert(reader.clone());
                        let tx = tx.clone();
                        s.spawn(move || {
                            let line = match YubiKeyToken::open(&Selector {
                                serial: None,
                                reader: Some(reader.clone()),
                            }) {
                                Ok(mut t) => {
                                    let serial = t.info().serial;
                                    on_event(&format!("{reader}: serial {serial} working"));
                                    let t0 = Instant::now();
                                    loop {
                                        let line = st.process(&mut t);
                                        // Vault away: the token waits in its reader and the
                                        // work resumes (journal + record) when it is back.
                                        if !line.vault_unavailable
                                            || stop.load(Ordering::SeqCst)
                                            || t0.elapsed() >= opts.vault_wait
                                        {
                                            break line;
                                        }
                                        on_event(&format!(
                                            "{reader}: serial {serial} waiting for Vault: {}",
                                            line.error.as_deref().unwrap_or("unavailable")
                                        ));
                                        std::thread::sleep(Duration::from_secs(2));
                                    }
                                }
                                Err(e) => {
                                    let mut l = TokenLine::new(None, &reader);
                                    l.error = Some(e.to_string());
                                    l
                                }
                            };
                            let _ = tx.send((reader, line));
                        });
                    }
                    ReaderEvent::Removed(reader) => {
                        last_activity = Instant::now();
                        on_event(&format!("{reader}: token removed"));
                    }
                    ReaderEvent::Inserted(_) => {}
                }
            }
            while let Ok((reader, line)) = rx.try_recv() {
                busy.remove(&reader);
                last_activity = Instant::now();
                summary.count(&line);
                on_line(&line);
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
        Ok(())
    })?;
    Ok(summary)
}

impl Summary {
    fn count(&mut self, l: &TokenLine) {
        self.tokens += 1;
        match l.result.as_str() {
            "enrolled" | "resumed" => self.enrolled += 1,
            "already-enrolled" => self.already_enrolled += 1,
            _ => self.failed += 1,
        }
    }
}
