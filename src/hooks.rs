//! Crash points for the kill tests: with the cargo feature `test-hooks`, the process aborts
//! right after the step named in `PIVAULT_TEST_ABORT_AFTER`, as a power cut would. Without
//! the feature (every release build) [`checkpoint`] is empty and reads nothing; this is the
//! one place where the library looks at the environment, and only in test builds.

/// Abort here if a test asked for it (feature `test-hooks` only).
#[cfg(feature = "test-hooks")]
pub fn checkpoint(step: &str) {
    if std::env::var("PIVAULT_TEST_ABORT_AFTER").as_deref() == Ok(step) {
        log::warn!("test hook: aborting after '{step}'");
        std::process::abort();
    }
}

/// Abort here if a test asked for it (feature `test-hooks` only).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn checkpoint(_step: &str) {}
