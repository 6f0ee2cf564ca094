//! The card half of the test rig: virtual YubiKeys (`pivault-vcard`) in the virtual readers
//! of the real `pcscd`, so every client — pivault, the `yubikey` crate, yubico-piv-tool,
//! ykman, OpenSC — reaches them through PC/SC exactly as it would a real token.
//!
//! ```ignore
//! let card = Card::start();                     // fresh card, unique serial, own reader
//! run_piv_tool(&["-r", &card.reader, "-a", "status"]);
//! YubiKey::open_by_serial(card.serial.into());
//! let card = Card::start_with(CardOptions { serial: Some(12345678),
//!                                           version: Some("5.7.4".into()), ..Default::default() });
//! card.remove();  card.insert();                // pull and re-plug: same reader, same state
//! card.apdu_count();                            // APDUs served so far (this process run)
//! ```
//!
//! API:
//! - [`ensure_pcscd`]: configures the virtual readers (`fixtures/pcsc/setup-readers.sh 4
//!   --start`; that script restarts pcscd only when it had to change the configuration)
//!   and waits until PC/SC lists them. Returns the port → reader mapping.
//! - [`Card::start`] / [`Card::start_with`]: takes a free reader, starts the card on it and
//!   returns once the card printed its ready line *and* PC/SC reports it present.
//!   `Card { serial, reader, port, state }` are public fields.
//! - [`Card::remove`] / [`Card::insert`]: stop the card process and wait until the reader
//!   is empty / start it again on the same reader with the same state file.
//! - [`Card::apdu_count`]: APDUs served by the running card process (SIGUSR1).
//! - `Drop`: SIGTERM (then SIGKILL after 10 s), frees the reader, removes the temporary
//!   state directory.
//! - [`default_version`]: the firmware of cards started without one, `$PIVAULT_VCARD_VERSION`
//!   or 5.2.7 (run the suite on 5.7.4 with `PIVAULT_VCARD_VERSION=5.7.4`).
//! - `CardOptions::args`: more card flags (`--touch`, `--fault`, `--timing`); with
//!   [`Card::wait_line`], [`Card::resume`] and [`Card::exit_code`] for `--fault` tests.
//! - [`vcard_bin`]: `$PIVAULT_VCARD` if set, else `cargo build -p pivault-vcard --locked`
//!   once per process, from `<target dir>/debug/pivault-vcard`.
//!
//! Sharing: readers are shared by all test processes on the machine (cargo test runs
//! threads, nextest runs processes). A reader belongs to whoever holds
//! `/tmp/pivault-rig/reader-<port>.lock` (`File::try_lock`); a test waits up to 120 s for
//! one. A locked reader that still shows a card (someone else's, started by hand) is
//! skipped. Serials are unique per process (pid) and per card (counter).
//!
//! Cleanup: every card runs with `--exit-with-stdin` on a pipe held by this process, so
//! cards never outlive the test process, however it ends.
//!
//! Failures are loud: a missing pcscd, a vcard that does not build or start, a reader that
//! never shows the card — each is a panic that says what is missing, never a skip.
//!
//! Timing (2-core machine, debug build): start ≈ 0.3–0.6 s (pcscd polls a reader every
//! 400 ms), remove ≈ 0.4 s.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Readers the rig asks setup-readers.sh for.
const READERS_WANTED: usize = 4;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PCSC_TIMEOUT: Duration = Duration::from_secs(15);
const READER_WAIT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a card. `Default` gives a fresh card with a unique serial, firmware 5.2.7.
#[derive(Debug, Clone, Default)]
pub struct CardOptions {
    pub serial: Option<u32>,
    /// Firmware version the card reports, e.g. "5.2.7".
    pub version: Option<String>,
    /// State file to use (and keep); default: a new file in a temporary directory.
    pub state: Option<PathBuf>,
    /// More pivault-vcard flags (`--touch timeout`, `--fault pause-after@5`, ...).
    pub args: Vec<String>,
}

/// Firmware of cards started without `CardOptions::version`: `$PIVAULT_VCARD_VERSION`,
/// else 5.2.7 (pivault's tests run the whole suite on another profile with it).
pub fn default_version() -> String {
    std::env::var("PIVAULT_VCARD_VERSION").unwrap_or_else(|_| "5.2.7".into())
}

/// A virtual YubiKey in a virtual reader.
pub struct Card {
    pub serial: u32,
    /// PC/SC reader name, e.g. "Yubico YubiKey CCID vpcd 35963 00 01" (setup-readers.sh).
    pub reader: String,
    /// vpcd TCP port of that reader.
    pub port: u16,
    /// The card's state file (keys, certificates, PIN, objects).
    pub state: PathBuf,
    version: String,
    args: Vec<String>,
    process: Option<CardProcess>,
    _reader_lock: File,
    _state_dir: Option<tempfile::TempDir>,
}

/// One run of the `pivault-vcard` process.
struct CardProcess {
    child: Child,
    /// Held open: the card exits when it closes (`--exit-with-stdin`).
    _stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Card {
    /// The card's TEST attestation chain (root + intermediates) as PEM in `dir`, written
    /// by the card binary from a copy of this card's state (the copy cannot reach vpcd on
    /// port 1 and exits 3): the `--attestation-roots` file for pivault and the tests.
    pub fn export_attestation_chain(&self, dir: &Path) -> PathBuf {
        let state = dir.join(format!("state-{}", self.serial));
        fs::copy(&self.state, &state).expect("copy the card's state");
        let chain = dir.join(format!("chain-{}.pem", self.serial));
        let out = Command::new(vcard_bin())
            .arg("--state")
            .arg(&state)
            .args([
                "--serial",
                &self.serial.to_string(),
                "--version",
                &self.version,
            ])
            .arg("--export-attestation-chain")
            .arg(&chain)
            .args(["--port", "1", "--connect-timeout", "0"])
            .output()
            .expect("run pivault-vcard");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        chain
    }

    pub fn start() -> Card {
        Card::start_with(CardOptions::default())
    }

    pub fn start_with(opts: CardOptions) -> Card {
        let readers = ensure_pcscd();
        let bin = vcard_bin();
        let (port, reader, lock) = claim_reader(readers);
        let (state, state_dir) = match opts.state {
            Some(path) => (path, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("pivault-vcard-")
                    .tempdir()
                    .expect("temporary directory for the card state");
                (dir.path().join("card.state"), Some(dir))
            }
        };
        let mut card = Card {
            serial: opts.serial.unwrap_or_else(unique_serial),
            reader,
            port,
            state,
            version: opts.version.unwrap_or_else(default_version),
            args: opts.args,
            process: None,
            _reader_lock: lock,
            _state_dir: state_dir,
        };
        card.spawn(&bin);
        card
    }

    /// "Pull the token": stop the card process, wait until PC/SC shows the reader empty.
    /// The reader stays reserved for [`Card::insert`].
    pub fn remove(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(self.port);
        }
        wait_for_reader(&self.reader, false, PCSC_TIMEOUT).unwrap_or_else(|why| {
            panic!("card {} stopped but {}: {why}", self.serial, self.reader)
        });
    }

    /// Plug the token back in: same reader, same state; returns once PC/SC sees it.
    pub fn insert(&mut self) {
        assert!(
            self.process.is_none(),
            "card {} is already inserted",
            self.serial
        );
        self.spawn(&vcard_bin());
    }

    /// The next stdout line of the card that starts with `prefix` (e.g. "paused apdu="),
    /// waiting up to `timeout`; `None` if none came (or the card exited).
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let process = self.process.as_ref()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// SIGUSR2: a card paused by `--fault pause-…@N` goes on.
    pub fn resume(&self) {
        if let Some(process) = &self.process {
            signal(process.child.id(), "USR2");
        }
    }

    /// The card process's exit code once it has exited (waits up to `timeout`), e.g. 5
    /// after `--fault vanish@N`; the card then counts as removed.
    pub fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let process = self.process.as_mut()?;
            if let Ok(Some(status)) = process.child.try_wait() {
                self.process = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// APDUs served by the running card process (counts restart at 0 on `insert`).
    pub fn apdu_count(&self) -> u64 {
        self.apdu_counts().0
    }

    /// APDUs served so far, in total and per instruction byte (the card's `ins=` line).
    pub fn apdu_counts(&self) -> (u64, std::collections::BTreeMap<u8, u64>) {
        let process = self
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("card {} is removed", self.serial));
        while process.lines.try_recv().is_ok() {}
        signal(process.child.id(), "USR1");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut by_ins = std::collections::BTreeMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(list) = line.strip_prefix("ins=") {
                        by_ins = list
                            .split_whitespace()
                            .filter_map(|p| {
                                let (i, n) = p.split_once(':')?;
                                Some((u8::from_str_radix(i, 16).ok()?, n.parse().ok()?))
                            })
                            .collect();
                    } else if let Some(n) = line.strip_prefix("apdus=") {
                        return (n.trim().parse().expect("apdus=N"), by_ins);
                    }
                }
                Err(_) => panic!(
                    "card {} did not report its APDU count; stderr:\n{}",
                    self.serial,
                    process.stderr()
                ),
            }
        }
    }

    fn spawn(&mut self, bin: &Path) {
        self.spawn_attempt(bin, 1);
    }

    fn spawn_attempt(&mut self, bin: &Path, attempt: u32) {
        let mut child = Command::new(bin)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--serial")
            .arg(self.serial.to_string())
            .arg("--version")
            .arg(&self.version)
            .arg("--state")
            .arg(&self.state)
            .args(["--connect-timeout", "10", "--exit-with-stdin"])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut process = CardProcess {
            child,
            _stdin: stdin,
            lines,
            stderr,
        };

        // 1. The card connected to vpcd.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match process
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.starts_with("pivault-vcard ready") => break,
                Ok(_) => continue,
                Err(err) => {
                    let status = process.child.try_wait().ok().flatten();
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                    panic!(
                        "pivault-vcard for {} (port {}) never got ready ({}; exit status: {:?}); stderr:\n{}",
                        self.reader,
                        self.port,
                        match err {
                            RecvTimeoutError::Timeout => "timed out",
                            RecvTimeoutError::Disconnected => "stdout closed",
                        },
                        status,
                        process.stderr()
                    );
                }
            }
        }
        // 2. pcscd noticed it.
        if let Err(why) = wait_for_reader(&self.reader, true, PCSC_TIMEOUT) {
            let stderr = process.stderr();
            process.stop(self.port);
            // Seen rarely under load: vpcd accepts the card's connection but pcscd never
            // powers it. A real user re-plugs the token; the rig does the same, once.
            if attempt < 2 {
                eprintln!(
                    "pivault-vcard (serial {}) on port {}: PC/SC shows no card ({why}); \
                     re-plugging it once",
                    self.serial, self.port
                );
                return self.spawn_attempt(bin, attempt + 1);
            }
            panic!(
                "pivault-vcard (serial {}) is connected to port {} but PC/SC never showed a card \
                 in {:?}: {why}; card stderr:\n{stderr}",
                self.serial, self.port, self.reader
            );
        }
        self.process = Some(process);
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(self.port);
        }
    }
}

impl CardProcess {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, wait (bounded), SIGKILL if need be.
    fn stop(mut self, port: u16) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    eprintln!("card on port {port} ignored SIGTERM; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    // std has no kill(2); the `kill` utility keeps this file free of unsafe code.
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn unique_serial() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // 10 digits, unique among live processes (pid) and cards of this process (counter).
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
    1_000_000_000 + (std::process::id() % 1_000_000) * 1000 + n
}

fn rig_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("pivault-rig");
    fs::create_dir_all(&dir).expect("create the rig's lock directory");
    dir
}

/// Takes a free reader: its lock file, and PC/SC showing it empty.
fn claim_reader(readers: &[(u16, String)]) -> (u16, String, File) {
    let deadline = Instant::now() + READER_WAIT;
    loop {
        for (port, name) in readers {
            let path = rig_dir().join(format!("reader-{port}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            if file.try_lock().is_err() {
                continue;
            }
            // Ours now, but someone may have put a card there by hand: leave that one be.
            if wait_for_reader(name, false, Duration::from_millis(1500)).is_ok() {
                return (*port, name.clone(), file);
            }
            eprintln!("reader {name:?} is not empty although nobody holds its lock; skipping it");
        }
        assert!(
            Instant::now() < deadline,
            "no free virtual reader in {READER_WAIT:?} (all {} busy: {:?})",
            readers.len(),
            readers
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Configures the virtual readers and makes sure pcscd runs; returns (port, reader name)
/// for every virtual reader. Once per process.
pub fn ensure_pcscd() -> &'static [(u16, String)] {
    static READERS: OnceLock<Vec<(u16, String)>> = OnceLock::new();
    READERS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pcsc/setup-readers.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(READERS_WANTED.to_string())
            .arg("--start")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}\n(the card rig needs pcscd and vsmartcard-vpcd: \
             apt-get install pcscd vsmartcard-vpcd)",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let readers: Vec<(u16, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (port, name) = line.split_once('\t')?;
                Some((port.parse().ok()?, name.to_string()))
            })
            .collect();
        assert!(
            readers.len() >= READERS_WANTED,
            "setup-readers.sh gave {} readers, want {READERS_WANTED}: {readers:?}",
            readers.len()
        );
        // pcscd may have just (re)started: wait until it lists every reader.
        let deadline = Instant::now() + PCSC_TIMEOUT;
        loop {
            let listed = list_readers();
            let missing: Vec<&String> = readers
                .iter()
                .map(|(_, name)| name)
                .filter(|name| !listed.iter().any(|l| l == *name))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pcscd does not list the virtual readers {missing:?} (it lists {listed:?}); \
                 is pcscd running? `pgrep -a pcscd`, `{} {READERS_WANTED} --start`",
                script.display()
            );
            thread::sleep(Duration::from_millis(100));
        }
        readers
    })
}

fn list_readers() -> Vec<String> {
    let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) else {
        return Vec::new();
    };
    ctx.list_readers_owned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.to_string_lossy().into_owned())
        .collect()
}

/// Waits until PC/SC reports a card in `reader` (`present`) or the reader empty.
fn wait_for_reader(reader: &str, present: bool, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let ctx = pcsc::Context::establish(pcsc::Scope::User)
        .map_err(|e| format!("no PC/SC context ({e}): is pcscd running?"))?;
    let name = CString::new(reader).expect("reader name without NUL");
    let mut states = [pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ctx.get_status_change(left.min(Duration::from_millis(500)), &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => return Err(format!("SCardGetStatusChange failed: {e}")),
        }
        let state = states[0].event_state();
        if state.contains(pcsc::State::UNKNOWN) {
            return Err("PC/SC does not know this reader".into());
        }
        let has_card = state.contains(pcsc::State::PRESENT) && !state.contains(pcsc::State::MUTE);
        if has_card == present && !state.contains(pcsc::State::UNAVAILABLE) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("reader state after {timeout:?}: {state:?}"));
        }
        states[0].sync_current_state();
    }
}

/// The `pivault-vcard` binary: `$PIVAULT_VCARD`, or built once per process with
/// `cargo build -p pivault-vcard --locked` into the workspace's target directory.
pub fn vcard_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PIVAULT_VCARD") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "PIVAULT_VCARD={} is not a file",
                bin.display()
            );
            return bin;
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args(["build", "-p", "pivault-vcard", "--locked"])
            .current_dir(workspace)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo to build pivault-vcard: {e}"));
        assert!(
            out.status.success(),
            "`cargo build -p pivault-vcard --locked` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => workspace.join(dir), // join keeps an absolute dir as is
            None => workspace.join("target"),
        };
        let bin = target.join("debug").join("pivault-vcard");
        assert!(
            bin.is_file(),
            "built pivault-vcard but {} does not exist",
            bin.display()
        );
        bin
    })
    .clone()
}
