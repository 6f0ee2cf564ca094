//! `pivault-vcard`: a virtual YubiKey 5 (PIV only) for tests and CI.
//!
//! Nitrokey's `piv-authenticator` applet runs on an in-process trussed service
//! (`platform.rs`); `bridge.rs` makes it answer like a YubiKey; the card attaches to
//! vsmartcard's `vpcd` reader driver inside `pcscd` over TCP, so every PC/SC client
//! (yubico-piv-tool, ykman, OpenSC, the `yubikey` crate, pivault) sees a card in the
//! reader "Virtual PCD 00 0x".
//!
//! Output contract (the test rig relies on it):
//! - one line `pivault-vcard ready serial=… port=… version=…` on stdout once connected;
//! - `apdus=N` on stdout on SIGUSR1 (at once) and on SIGTERM/SIGINT (then exit 0);
//! - diagnostics on stderr (`RUST_LOG=debug` shows control messages and APDUs).
//!
//! Exit codes: 0 stopped by a signal, 1 vpcd closed the connection (pcscd stopped) or an
//! I/O error, 2 usage, 3 could not connect to vpcd, 4 state file unusable.
#![forbid(unsafe_code)]

mod bridge;
mod platform;
mod state;

use std::{
    fmt,
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
use heapless::VecView;
use iso7816::{command::CommandView, Status};
use piv_authenticator::{Authenticator, Options};
use signal_hook::{
    consts::{SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};
use socket2::SockRef;

use bridge::{Bridge, Identity, PivApplet};
use state::{CardState, StateError};

/// ATR of a YubiKey 5 over USB (CCID): T=1, historical bytes "\x80\x73\xC0\x21\xC0WYubiKey@".
/// ykman reads "USB transport" from TA1 = 0xFD... (ISO 7816-3 §8.2; TCK checked).
const YUBIKEY_ATR: &[u8] = &[
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// trussed client id of the PIV application (names its directory in the filesystems).
const CLIENT_ID: &str = "piv";

#[derive(Parser, Debug)]
#[command(
    about = "A virtual YubiKey 5 (PIV) attached to vsmartcard's vpcd",
    after_help = "Output: one line `pivault-vcard ready serial=N port=N version=X.Y.Z ...` once \
                  connected; `apdus=N` on SIGUSR1 and on SIGTERM/SIGINT.\n\
                  Exit codes: 0 stopped by a signal (or --exit-with-stdin), 1 vpcd closed the \
                  connection (pcscd stopped) or I/O error, 2 usage, 3 cannot connect to vpcd, \
                  4 state file unusable."
)]
struct Args {
    /// vpcd host (pcscd with the vpcd driver listens there).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// vpcd port: CHANNELID in /etc/reader.conf.d picks it; 35963 is "Virtual PCD 00 00",
    /// 35964 is "Virtual PCD 00 01" (see fixtures/pcsc/setup-readers.sh).
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Serial number the card reports [default: the one in --state, else 10000001].
    #[arg(long)]
    serial: Option<u32>,
    /// Firmware version the card reports. 5.2.7 suits every client: from 5.3 ykman asks for
    /// metadata the emulator lacks; from 5.7 clients expect an AES-192 management key.
    #[arg(long, default_value = "5.2.7", value_parser = parse_version)]
    version: [u8; 3],
    /// Keep the card's state (keys, certificates, PIN, objects) in FILE across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Keep trying to reach vpcd for this many seconds (0: try once).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    connect_timeout: f64,
    /// Stop (as on SIGTERM) when stdin reaches end of file. A test rig gives the card a pipe
    /// as stdin: if the rig dies without cleaning up, its cards go with it.
    #[arg(long)]
    exit_with_stdin: bool,
    /// Don't re-arm TCP_QUICKACK (to measure the delayed-ACK stall).
    #[arg(long, hide = true)]
    no_quickack: bool,
}

fn parse_version(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a version like 5.2.7"))?;
    parts
        .try_into()
        .map_err(|_| format!("{s:?} is not a version like 5.2.7"))
}

enum Failure {
    Connect(String, io::Error),
    Disconnected(io::Error),
    Io(&'static str, io::Error),
    Rng(rand_core::Error),
    State(StateError),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Disconnected(_) | Self::Io(..) | Self::Rng(_) => 1,
            Self::Connect(..) => 3,
            Self::State(_) => 4,
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
            Self::Rng(err) => write!(f, "cannot seed the RNG from the OS: {err}"),
            Self::State(err) => err.fmt(f),
        }
    }
}

fn main() -> ExitCode {
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Warn);
    // The applet logs every parsed command, PINs included, at info level: keep it at warn
    // unless RUST_LOG names it explicitly.
    logger.filter_module("piv_authenticator", log::LevelFilter::Warn);
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

fn print_apdu_count(apdus: &AtomicU64) {
    let mut out = io::stdout().lock();
    // Nothing sensible to do if stdout is gone.
    let _ = writeln!(out, "apdus={}", apdus.load(Ordering::SeqCst));
    let _ = out.flush();
}

fn run(args: &Args) -> Result<(), Failure> {
    // Two cards on one state file would overwrite each other's writes: hold a lock on
    // FILE.lock for as long as this process runs.
    let _state_lock = match &args.state {
        Some(path) => Some(state::lock(path).map_err(Failure::State)?),
        None => None,
    };
    let mut state = match &args.state {
        Some(path) => CardState::load(path).map_err(Failure::State)?,
        None => CardState::fresh(),
    };
    let serial = args.serial.or(state.serial).unwrap_or(10_000_001);
    state.serial = Some(serial);
    let identity = Identity {
        serial,
        version: args.version,
    };

    let apdus = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let socket: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    let stopper = Stopper {
        apdus: Arc::clone(&apdus),
        stop: Arc::clone(&stop),
        socket: Arc::clone(&socket),
    };
    spawn_signal_thread(stopper.clone())?;
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
    *socket.lock().expect("socket slot") = Some(
        stream
            .try_clone()
            .map_err(|e| Failure::Io("cloning the socket", e))?,
    );
    let quickack = !args.no_quickack;
    let rearm = || {
        if quickack {
            // Linux leaves quick-ACK mode on its own; re-arm it after every exchange.
            let _ = SockRef::from(&ack_handle).set_tcp_quickack(true);
        }
    };
    rearm();

    let mut store_config = state.store_config();
    let served = store_config.with_store(|store| {
        platform::with_client(store, CLIENT_ID, |client| {
            let applet = Emulator::new(client);
            let objects = state.bridge.clone();
            let mut card = VirtualCard {
                bridge: Bridge::new(applet, identity, objects),
                state: &mut state,
                state_path: args.state.clone(),
                apdus: &apdus,
                fatal: None,
            };
            // Write the state once now: a fresh card's formatted flash, and an early
            // failure if the file is not writable.
            card.persist().map_err(Failure::State)?;

            {
                let mut out = io::stdout().lock();
                let [major, minor, patch] = args.version;
                let _ = writeln!(
                    out,
                    "pivault-vcard ready serial={serial} port={} version={major}.{minor}.{patch} host={}",
                    args.port, args.host
                );
                let _ = out.flush();
            }

            let mut connection = vpicc::Connection::from(stream);
            loop {
                let polled = connection.poll(&mut card);
                if let Some(err) = card.fatal.take() {
                    return Err(Failure::State(err));
                }
                match polled {
                    Ok(()) => rearm(),
                    Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
                    Err(err) => return Err(Failure::Disconnected(err)),
                }
            }
        })
        .map_err(Failure::Rng)?
    });
    if served.is_ok() {
        print_apdu_count(&apdus);
    }
    served
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
        match &*self.socket.lock().expect("socket slot") {
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

/// SIGUSR1: report the APDU count. SIGTERM/SIGINT: stop.
fn spawn_signal_thread(stopper: Stopper) -> Result<(), Failure> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| Failure::Io("installing signal handlers", e))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 {
                    print_apdu_count(&stopper.apdus);
                } else {
                    stopper.stop();
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

/// `piv-authenticator` as the bridge's applet.
struct Emulator<C: piv_authenticator::Client + Clone> {
    client: C,
    authenticator: Authenticator<C>,
}

impl<C: piv_authenticator::Client + Clone> Emulator<C> {
    fn new(client: C) -> Self {
        Self {
            authenticator: Authenticator::new(client.clone(), Options::default()),
            client,
        }
    }
}

impl<C: piv_authenticator::Client + Clone> PivApplet for Emulator<C> {
    fn respond(&mut self, command: CommandView<'_>, reply: &mut VecView<u8>) -> Result<(), Status> {
        self.authenticator.respond(command, reply)
    }

    fn reset(&mut self) {
        // VERIFY with P1 = FF resets the PIN's security status (SP 800-73-4 Part 2 §3.2.1)
        // and makes the applet delete the PIN-derived key it keeps in volatile storage.
        const LOGOUT: [u8; 4] = [0x00, 0x20, 0xFF, 0x80];
        let logout = CommandView::try_from(LOGOUT.as_slice()).expect("valid APDU");
        let mut scratch = heapless::Vec::<u8, 16>::new();
        let _ = self.authenticator.respond(logout, scratch.as_mut_view());
        // The applet has no way to clear "management key authenticated": start afresh. Its
        // persistent state is reloaded from the filesystem on the next command.
        self.authenticator = Authenticator::new(self.client.clone(), Options::default());
    }
}

/// The card as vpicc sees it.
struct VirtualCard<'s, A> {
    bridge: Bridge<A>,
    state: &'s mut CardState,
    state_path: Option<PathBuf>,
    apdus: &'s AtomicU64,
    /// A state file write failed: the main loop stops with this error.
    fatal: Option<StateError>,
}

impl<A: PivApplet> VirtualCard<'_, A> {
    /// vpcd's power off / power on / reset all end the card session.
    fn control(&mut self, what: &str) {
        log::debug!("{what}");
        self.bridge.power_cycle();
        if let Err(err) = self.persist() {
            self.fatal = Some(err);
        }
    }

    /// Saves the state if the flash or the bridge objects changed.
    fn persist(&mut self) -> Result<(), StateError> {
        // Always take both flags so neither stays set for the next round.
        let flash = self.state.internal.take_dirty() | self.state.external.take_dirty();
        let objects = self.bridge.take_objects_dirty();
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        if flash || objects {
            self.state.bridge = self.bridge.objects().clone();
            self.state.save(path)?;
        }
        Ok(())
    }
}

impl<A: PivApplet> vpicc::VSmartCard for VirtualCard<'_, A> {
    fn atr(&self) -> &[u8] {
        YUBIKEY_ATR
    }

    fn power_on(&mut self) {
        self.control("power on");
    }

    fn power_off(&mut self) {
        self.control("power off");
    }

    fn reset(&mut self) {
        self.control("reset");
    }

    fn execute(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.apdus.fetch_add(1, Ordering::SeqCst);
        // Don't log VERIFY / CHANGE REFERENCE / RESET RETRY data: PINs and PUKs.
        let secret = matches!(apdu.get(1), Some(0x20 | 0x24 | 0x2C));
        if secret {
            log::debug!("> {:02x?} [data redacted]", &apdu[..apdu.len().min(4)]);
        } else {
            log::debug!("> {apdu:02x?}");
        }
        let response = self.bridge.execute(apdu);
        log::debug!("< {response:02x?}");
        match self.persist() {
            Ok(()) => response,
            Err(err) => {
                self.fatal = Some(err);
                // 6581: memory failure (ISO 7816-4 §5.6).
                vec![0x65, 0x81]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The real applet behind the bridge, in process (no pcscd needed).
    use super::*;

    /// Runs `f` on a card whose flash is `state`'s.
    fn with_card<R>(
        state: &CardState,
        f: impl FnOnce(&mut dyn FnMut(&[u8]) -> Vec<u8>, &mut dyn FnMut()) -> R,
    ) -> R {
        let mut config = state.store_config();
        config.with_store(|store| {
            platform::with_client(store, CLIENT_ID, |client| {
                let identity = Identity {
                    serial: 42,
                    version: [5, 2, 7],
                };
                let bridge = std::cell::RefCell::new(Bridge::new(
                    Emulator::new(client),
                    identity,
                    state.bridge.clone(),
                ));
                f(&mut |apdu| bridge.borrow_mut().execute(apdu), &mut || {
                    bridge.borrow_mut().power_cycle()
                })
            })
            .expect("OS RNG")
        })
    }

    const SELECT: &[u8] = &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
    const PIN_STATUS: &[u8] = &[0x00, 0x20, 0x00, 0x80];
    const VERIFY_DEFAULT: &[u8] = &[
        0x00, 0x20, 0x00, 0x80, 0x08, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
    ];
    const GET_CHUID: &[u8] = &[
        0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x02, 0x00,
    ];

    fn sw(response: &[u8]) -> [u8; 2] {
        [response[response.len() - 2], response[response.len() - 1]]
    }

    #[test]
    fn power_cycle_forgets_the_verified_pin() {
        with_card(&CardState::fresh(), |apdu, power_cycle| {
            assert_eq!(sw(&apdu(SELECT)), [0x90, 0x00]);
            assert_eq!(apdu(PIN_STATUS), [0x63, 0xC3]);
            assert_eq!(apdu(VERIFY_DEFAULT), [0x90, 0x00]);
            assert_eq!(apdu(PIN_STATUS), [0x90, 0x00]);
            power_cycle();
            assert_eq!(sw(&apdu(SELECT)), [0x90, 0x00]);
            assert_eq!(apdu(PIN_STATUS), [0x63, 0xC3]);
        });
    }

    #[test]
    fn pin_change_survives_a_reload_of_the_flash() {
        let state = CardState::fresh();
        with_card(&state, |apdu, _| {
            assert_eq!(sw(&apdu(SELECT)), [0x90, 0x00]);
            let mut change = vec![0x00, 0x24, 0x00, 0x80, 0x10];
            change.extend_from_slice(b"123456\xFF\xFF654321\xFF\xFF");
            assert_eq!(apdu(&change), [0x90, 0x00]);
        });
        let reloaded = CardState::decode(&state.encode()).expect("decode");
        with_card(&reloaded, |apdu, _| {
            assert_eq!(sw(&apdu(SELECT)), [0x90, 0x00]);
            assert_eq!(apdu(VERIFY_DEFAULT), [0x63, 0xC2]);
            let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x08];
            verify.extend_from_slice(b"654321\xFF\xFF");
            assert_eq!(apdu(&verify), [0x90, 0x00]);
        });
    }

    #[test]
    fn fresh_cards_draw_different_randomness() {
        // The CHUID's GUID comes from the card's RNG at first use: with trussed's constant
        // seed every card would have the same one.
        let chuid = || {
            with_card(&CardState::fresh(), |apdu, _| {
                apdu(SELECT);
                let response = apdu(GET_CHUID);
                assert_eq!(sw(&response), [0x90, 0x00]);
                response
            })
        };
        assert_ne!(chuid(), chuid());
    }
}
