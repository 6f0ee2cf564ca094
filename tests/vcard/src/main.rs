//! `pivault-vcard`: a virtual YubiKey (PIV and management applets) for tests and CI.
//!
//! Our own PIV applet (`piv*.rs`, SP 800-73-4 plus Yubico's extensions) behind the
//! YubiKey USB ATR; the card attaches to vsmartcard's `vpcd` reader driver inside `pcscd`
//! over TCP, so every PC/SC client (ykman, yubico-piv-tool, OpenSC, the `yubikey` crate,
//! pivault) sees a YubiKey in that reader. `--version` picks the firmware it behaves as
//! (`firmware.rs`).
//!
//! Output contract (the test rig relies on it):
//! - one line `pivault-vcard ready serial=… port=… version=…` on stdout once connected;
//! - `apdus=N` on stdout on SIGUSR1 (at once) and on SIGTERM/SIGINT (then exit 0), after
//!   `busy_us=N` (microseconds spent on APDUs, command in to answer out) and
//!   `ins=A4:1 20:5 …` (APDUs per instruction byte, hex);
//! - with `--fault`: `paused apdu=N ins=XX` (SIGUSR2 resumes), `vanished apdu=N ins=XX`, `reselected apdu=N ins=XX`;
//! - diagnostics on stderr (`RUST_LOG=debug` shows APDUs, secrets redacted).
//!
//! Exit codes: 0 stopped by a signal, 1 vpcd closed the connection (pcscd stopped) or an
//! I/O error, 2 usage, 3 could not connect to vpcd, 4 state file or attestation CA
//! unusable, 5 vanished (`--fault vanish@N`).
#![forbid(unsafe_code)]

mod apdu;
mod attest;
mod faults;
mod firmware;
mod keys;
mod mgmt;
mod piv;
mod piv_auth;
mod piv_keys;
mod piv_mgmt;
mod state;
mod timing;
mod tlv;
mod transport;

use std::{
    fmt, fs,
    io::{self, Write as _},
    net::{Shutdown, TcpStream},
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use signal_hook::{
    consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2},
    iterator::Signals,
};
use socket2::SockRef;

use faults::{Fault, Pauser};
use firmware::{DeviceIdentity, Firmware, FORM_FACTOR_USB_A_KEYCHAIN};
use piv::{Piv, Touch};
use state::{CardState, StateError};
use timing::Timing;

#[derive(Parser, Debug)]
#[command(
    about = "A virtual YubiKey (PIV, management) attached to vsmartcard's vpcd",
    after_help = "Output: one line `pivault-vcard ready serial=N port=N version=X.Y.Z ...` once \
                  connected; `apdus=N` on SIGUSR1 and on SIGTERM/SIGINT.\n\
                  Exit codes: 0 stopped by a signal (or --exit-with-stdin), 1 vpcd closed the \
                  connection (pcscd stopped) or I/O error, 2 usage, 3 cannot connect to vpcd, \
                  4 state file or attestation CA unusable, 5 vanished (--fault vanish@N)."
)]
struct Args {
    /// vpcd host (pcscd with the vpcd driver listens there).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// vpcd port: CHANNELID in /etc/reader.conf.d picks it (fixtures/pcsc/setup-readers.sh).
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Serial number the card reports [default: the one in --state, else 10000001].
    #[arg(long)]
    serial: Option<u32>,
    /// Firmware the card behaves as: 4.3.7, 5.2.7, 5.4.3, 5.7.2, 5.7.4 (any 4.x.y/5.x.y is
    /// accepted; features follow the same thresholds).
    #[arg(long, default_value = "5.7.4", value_parser = firmware::parse_version)]
    version: [u8; 3],
    /// Keep the card's state (keys, certificates, PIN, objects) in FILE across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Keep trying to reach vpcd for this many seconds (0: try once).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    connect_timeout: f64,
    /// Stop (as on SIGTERM) when stdin reaches end of file.
    #[arg(long)]
    exit_with_stdin: bool,
    /// Don't re-arm TCP_QUICKACK (to measure the delayed-ACK stall).
    #[arg(long, hide = true)]
    no_quickack: bool,
    /// What a touch-required operation does: ok (touched at once), timeout (6985), or a
    /// delay in milliseconds before the touch.
    #[arg(long, default_value = "ok", value_parser = parse_touch)]
    touch: Touch,
    /// `yubikey5`: on-card operations take about as long as on a YubiKey 5 (timing.rs).
    #[arg(long, default_value = "none", value_parser = Timing::parse)]
    timing: Timing,
    /// Refuse trivial PINs and PUKs, as a 5.7+ YubiKey with PIN complexity enabled (the
    /// management applet's device info says so).
    #[arg(long)]
    pin_complexity: bool,
    /// Crash-test hook: vanish@N, pause-before@N, pause-after@N, reselect-after-ins@XX,
    /// metadata-answer@HEX (faults.rs).
    #[arg(long, value_parser = Fault::parse)]
    fault: Option<Fault>,
    /// Test attestation CA (PEM with keys, from a previous --export or attest.rs) to sign
    /// the f9 certificate with [default: the one in --state, else a new one].
    #[arg(long, value_name = "FILE")]
    attestation_ca: Option<PathBuf>,
    /// Write the test attestation chain (certificates, PEM) to FILE at start.
    #[arg(long, value_name = "FILE")]
    export_attestation_chain: Option<PathBuf>,
    /// TEST ONLY, never a YubiKey's behaviour: ATTEST answers a forgery, for verifier
    /// tests: other-key (certifies a fresh key, not the slot's), other-serial (F9 and
    /// attestation issued for serial+1), tampered-policy (PIN policy byte changed after
    /// signing).
    #[arg(long, value_parser = attest::Forge::parse)]
    forge_attestation: Option<attest::Forge>,
}

fn parse_touch(s: &str) -> Result<Touch, String> {
    match s {
        "ok" => Ok(Touch::Ok),
        "timeout" => Ok(Touch::Timeout),
        ms => ms
            .parse::<u64>()
            .map(|ms| Touch::Delay(Duration::from_millis(ms)))
            .map_err(|_| format!("{s:?}: expected ok, timeout or a delay in milliseconds")),
    }
}

enum Failure {
    Connect(String, io::Error),
    Disconnected(io::Error),
    Io(&'static str, io::Error),
    State(StateError),
    Attestation(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Disconnected(_) | Self::Io(..) => 1,
            Self::Connect(..) => 3,
            Self::State(_) | Self::Attestation(_) => 4,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(addr, err) => write!(
                f,
                "cannot connect to vpcd at {addr}: {err}; is pcscd running with a vpcd reader \
                 on that port? (fixtures/pcsc/setup-readers.sh, then start pcscd)"
            ),
            Self::Disconnected(err) => {
                if err.kind() == io::ErrorKind::UnexpectedEof {
                    f.write_str("vpcd closed the connection")?;
                } else {
                    write!(f, "lost the connection to vpcd ({err})")?;
                }
                f.write_str(": pcscd stopped or restarted; start the card again once pcscd runs")
            }
            Self::Io(what, err) => write!(f, "{what}: {err}"),
            Self::State(err) => err.fmt(f),
            Self::Attestation(why) => write!(f, "attestation CA: {why}"),
        }
    }
}

fn main() -> ExitCode {
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        logger.parse_filters(&spec);
    }
    logger.init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("pivault-vcard: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    // Nothing sensible to do if stdout is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn print_apdu_count(apdus: &AtomicU64) {
    // Busy time and per instruction first: a reader waiting for `apdus=` has all three
    // lines by then.
    print_line(&format!("busy_us={}", transport::busy_us()));
    print_line(&format!("ins={}", transport::ins_summary()));
    print_line(&format!("apdus={}", apdus.load(Ordering::SeqCst)));
}

/// Loads the state, sets up identity and attestation: the card, ready to connect.
fn build_card(
    args: &Args,
    apdus: Arc<AtomicU64>,
    pauser: Pauser,
) -> Result<transport::Card, Failure> {
    let firmware = Firmware::new(args.version);
    let mut state = match &args.state {
        Some(path) => CardState::load(path, &firmware).map_err(Failure::State)?,
        None => CardState::fresh(&firmware),
    };
    let serial = args.serial.or(state.serial).unwrap_or(10_000_001);
    state.serial = Some(serial);
    let device = DeviceIdentity {
        serial,
        version: args.version,
        form_factor: FORM_FACTOR_USB_A_KEYCHAIN,
        fips: false,
    };

    // The test attestation CA: from --attestation-ca, else the state's, else a new one.
    let (ca, ca_changed) = match (&args.attestation_ca, &state.attestation_ca) {
        (Some(path), previous) => {
            let pem = fs::read_to_string(path)
                .map_err(|e| Failure::Attestation(format!("{}: {e}", path.display())))?;
            let ca = attest::TestCa::from_pem(&pem).map_err(Failure::Attestation)?;
            let changed = previous.as_deref() != Some(ca.to_pem().as_str());
            (ca, changed)
        }
        (None, Some(pem)) => (
            attest::TestCa::from_pem(pem).map_err(Failure::Attestation)?,
            false,
        ),
        (None, None) => (attest::TestCa::generate(), true),
    };
    if ca_changed {
        state.attestation_ca = Some(ca.to_pem());
    }
    if let Some(path) = &args.export_attestation_chain {
        fs::write(path, ca.chain_pem())
            .map_err(|e| Failure::Io("writing the attestation chain", e))?;
    }

    // `--forge-attestation other-serial`: the F9 certificate and the attestations speak
    // for serial+1 while GET SERIAL answers the card's own.
    let attest_device = match args.forge_attestation {
        Some(attest::Forge::OtherSerial) => DeviceIdentity {
            serial: serial.wrapping_add(1),
            ..device.clone()
        },
        _ => device.clone(),
    };
    let mut piv = Piv::new(firmware, device.clone(), &state, args.touch, args.timing);
    piv.forge = args.forge_attestation;
    piv.attest_device = attest_device.clone();
    // PIN complexity came with 5.7 (docs.yubico.com "PIN complexity policy").
    piv.pin_complexity = args.pin_complexity && firmware.features().new_key_types;
    // f9 holds the attestation key like any other key; a new CA or a card without one gets
    // a fresh key and certificate. A key the user imported into f9 stays.
    if firmware.features().attestation
        && (ca_changed || args.forge_attestation.is_some() || !piv.state.slots.contains_key("f9"))
    {
        let (key, cert) = ca.issue_f9(&attest_device);
        piv.install_attestation(&key, &cert)
            .map_err(Failure::Attestation)?;
    }
    let mut mgmt = mgmt::Management::new(&device);
    // Device info tag 16 tells clients the PIV applet refuses trivial PINs.
    mgmt.pin_complexity = piv.pin_complexity;
    let mut card = transport::Card::new(
        piv,
        mgmt,
        state,
        args.state.clone(),
        apdus,
        args.fault,
        pauser,
    );
    // Write the state once now: a fresh card's keys, and an early failure if the file is
    // not writable.
    card.persist(true).map_err(Failure::State)?;
    Ok(card)
}

fn run(args: &Args) -> Result<(), Failure> {
    // Two cards on one state file would overwrite each other's writes: hold a lock on
    // FILE.lock for as long as this process runs.
    let _state_lock = match &args.state {
        Some(path) => Some(state::lock(path).map_err(Failure::State)?),
        None => None,
    };
    let apdus = Arc::new(AtomicU64::new(0));
    let pauser = Pauser::default();
    let mut card = build_card(args, Arc::clone(&apdus), pauser.clone())?;

    let stop = Arc::new(AtomicBool::new(false));
    let socket: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    let stopper = Stopper {
        apdus: Arc::clone(&apdus),
        stop: Arc::clone(&stop),
        socket: Arc::clone(&socket),
    };
    spawn_signal_thread(stopper.clone(), pauser)?;
    if args.exit_with_stdin {
        spawn_stdin_watch(stopper)?;
    }

    let addr = format!("{}:{}", args.host, args.port);
    let stream = connect(
        &addr,
        Duration::from_secs_f64(args.connect_timeout.max(0.0)),
    )
    .map_err(|err| Failure::Connect(addr.clone(), err))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::Io("TCP_NODELAY", e))?;
    let ack_handle = stream
        .try_clone()
        .map_err(|e| Failure::Io("cloning the socket", e))?;
    *socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(
        stream
            .try_clone()
            .map_err(|e| Failure::Io("cloning the socket", e))?,
    );
    let quickack = !args.no_quickack;
    let rearm = || {
        if quickack {
            // Delayed ACKs on loopback cost ~40 ms per APDU; Linux leaves quick-ACK mode on
            // its own, so re-arm it after every exchange.
            let _ = SockRef::from(&ack_handle).set_tcp_quickack(true);
        }
    };
    rearm();

    let [major, minor, patch] = args.version;
    print_line(&format!(
        "pivault-vcard ready serial={} port={} version={major}.{minor}.{patch} host={}",
        card.piv.device.serial, args.port, args.host
    ));

    let mut connection = vpicc::Connection::from(stream);
    loop {
        let polled = connection.poll(&mut card);
        if let Some(err) = card.fatal.take() {
            return Err(Failure::State(err));
        }
        match polled {
            Ok(()) => rearm(),
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(err) => return Err(Failure::Disconnected(err)),
        }
    }
    print_apdu_count(&apdus);
    Ok(())
}

fn connect(addr: &str, patience: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + patience;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Stops the card from another thread: the main thread, woken by the socket shutdown,
/// finishes the APDU in hand (state is saved before a response goes out), reports the
/// APDU count and exits 0.
#[derive(Clone)]
struct Stopper {
    apdus: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    socket: Arc<Mutex<Option<TcpStream>>>,
}

impl Stopper {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        match &*self.socket.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(stream) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            None => {
                // Not connected yet: nothing in flight, nothing to save.
                print_apdu_count(&self.apdus);
                std::process::exit(0);
            }
        }
    }
}

/// SIGUSR1: report the APDU count. SIGUSR2: resume a paused card. SIGTERM/SIGINT: stop.
fn spawn_signal_thread(stopper: Stopper, pauser: Pauser) -> Result<(), Failure> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2])
        .map_err(|e| Failure::Io("installing signal handlers", e))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGUSR1 => print_apdu_count(&stopper.apdus),
                    SIGUSR2 => pauser.resume(),
                    _ => {
                        // A paused card must not hold up the stop.
                        pauser.resume();
                        stopper.stop();
                    }
                }
            }
        })
        .map_err(|e| Failure::Io("starting the signal thread", e))?;
    Ok(())
}

/// `--exit-with-stdin`: stop once stdin is closed.
fn spawn_stdin_watch(stopper: Stopper) -> Result<(), Failure> {
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            log::info!("stdin closed: stopping");
            stopper.stop();
        })
        .map_err(|e| Failure::Io("starting the stdin thread", e))?;
    Ok(())
}
