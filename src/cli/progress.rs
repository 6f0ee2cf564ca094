//! Progress of slow steps (RSA key generation on the token, waits for Vault): on a
//! terminal a spinner with the step and its elapsed time (indicatif, on stderr); otherwise
//! one plain line per step, which journald and CI logs keep. Nothing in `--json` mode:
//! stdout then carries the one document and stderr stays for errors.

use indicatif::{ProgressBar, ProgressStyle};
use pivault::enroll::{Observer, Step};
use pivault::piv::Slot;
use std::time::Duration;

pub enum Progress {
    Off,
    Lines,
    Spinner(Option<ProgressBar>),
}

impl Progress {
    /// `json`: no progress at all. Otherwise a spinner when stderr is a terminal.
    pub fn new(json: bool) -> Progress {
        if json {
            Progress::Off
        } else if super::progress_on_terminal() {
            Progress::Spinner(None)
        } else {
            Progress::Lines
        }
    }

    /// Start a step that is not a slot's (e.g. a wait for Vault).
    pub fn begin(&mut self, what: &str) {
        match self {
            Progress::Off => {}
            Progress::Lines => eprintln!("  {what}…"),
            Progress::Spinner(bar) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let b = ProgressBar::new_spinner();
                // "{elapsed}" restarts with each step: how long *this* step has taken.
                if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} ({elapsed})") {
                    b.set_style(style);
                }
                b.set_message(what.to_string());
                b.enable_steady_tick(Duration::from_millis(120));
                *bar = Some(b);
            }
        }
    }

    /// The last step is over: clear the spinner before the report is printed.
    pub fn done(&mut self) {
        if let Progress::Spinner(bar) = self {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

impl Observer for Progress {
    fn step(&mut self, slot: Slot, step: Step) {
        self.begin(&format!("slot {slot}: {step}"));
    }
}
