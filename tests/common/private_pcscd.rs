//! A pcscd of one test's own, for tests that must stop or kill pcscd (the shared rig's
//! pcscd serves every other test and is never touched), with virtual cards in its two
//! vpcd readers.
//!
//! ```ignore
//! let mut pcscd = PrivatePcscd::start();        // own mount namespace, own vpcd ports
//! let mut card = pcscd.card(0, CardOptions::default());
//! let mut c = pivault(&env);  c.env(PCSC_SOCKET_ENV, pcscd.socket());   // or pcscd.tool(..)
//! card.freeze();  pcscd.kill();  card.thaw();    // pcscd dies while the card holds an APDU
//! pcscd.restart();  card.restart(&pcscd);        // same readers, same card state
//! ```
//!
//! How (found on this machine, pcsc-lite 1.9.9, Debian 12):
//! - The pcsc-lite *client* library honours `PCSCLITE_CSOCK_NAME` (read once per process,
//!   then cached), but pcscd 1.9.9 does not: its socket and pid file are fixed at
//!   /run/pcscd/pcscd.comm and /run/pcscd/pcscd.pid, and a second pcscd started there would
//!   refuse (the shared one is alive) or, after a kill, delete the shared one's files. So
//!   pcscd runs in a mount namespace of its own (`unshare -m`, as root or through
//!   `sudo -n`) where a temporary directory is bind-mounted over /run/pcscd: the socket
//!   appears in that directory on the host, and clients reach it with
//!   `PCSCLITE_CSOCK_NAME`. Nothing of the shared pcscd is touched.
//! - The in-process `pcsc` crate cannot be pointed at it (the socket name is cached per
//!   process and this process talks to the shared pcscd), so everything that talks to this
//!   pcscd is a child process: pivault, yubico-piv-tool, opensc-tool.
//! - One vpcd entry with CHANNELID P gives readers "<name> 00 00" on TCP port P and
//!   "<name> 00 01" on P+1 (see fixtures/pcsc/setup-readers.sh). P is a free pair of ports
//!   from the kernel; vpcd binds with address reuse, so a restarted pcscd gets the same
//!   ports back at once (measured: TIME-WAIT connections from the killed one do not
//!   matter).
//! - pcscd runs in the foreground under a supervising `sh` that reads a pipe this process
//!   holds: when the test process ends, however it ends, the pipe closes and the `sh`
//!   kills its pcscd. The `sh` prints pcscd's pid, so a test can SIGKILL pcscd alone.
//! - That pcscd sees no USB driver (an empty directory is mounted over
//!   /usr/lib/pcsc/drivers, its usbdropdir in Debian's build), so it never claims a real
//!   USB reader from the machine's pcscd; its vpcd driver is a copy in its directory.
//! - A card sees EOF when its pcscd dies and exits (code 1): [`PrivateCard::restart`]
//!   starts it again with the same state file once pcscd is back.

use super::card::{default_version, vcard_bin, CardOptions};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The variable that points pcsc-lite clients at another pcscd socket.
pub const PCSC_SOCKET_ENV: &str = "PCSCLITE_CSOCK_NAME";

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A pcscd of this test's own with two vpcd readers.
pub struct PrivatePcscd {
    dir: tempfile::TempDir,
    /// vpcd TCP port of reader 0 (reader 1 is on `port + 1`).
    pub port: u16,
    /// The two PC/SC reader names.
    pub readers: [String; 2],
    daemon: Option<Daemon>,
}

/// One run of pcscd under its supervising shell.
struct Daemon {
    shell: Child,
    /// Held open: the shell kills pcscd when it closes.
    stdin: ChildStdin,
    pid: u32,
}

impl Daemon {
    /// Close the pipe: the shell kills pcscd (if still alive), reaps it and exits.
    fn end(self) {
        let Daemon {
            mut shell, stdin, ..
        } = self;
        drop(stdin);
        let _ = shell.wait();
    }
}

impl PrivatePcscd {
    /// Start pcscd in its own mount namespace; returns once it lists both readers.
    pub fn start() -> PrivatePcscd {
        let dir = tempfile::Builder::new()
            .prefix("pivault-pcscd-")
            .tempdir()
            .expect("temporary directory for a private pcscd");
        std::fs::create_dir(dir.path().join("run")).expect("run directory");
        std::fs::create_dir(dir.path().join("reader.conf.d")).expect("configuration directory");
        std::fs::create_dir(dir.path().join("no-usb-drivers")).expect("empty driver directory");
        // pcscd loads a driver file once per path; a copy of our own, outside the USB
        // driver directory that the namespace hides.
        let driver = dir.path().join("libifdvpcd.so");
        std::fs::copy(vpcd_driver(), &driver).expect("copy the vpcd driver");
        let port = free_port_pair();
        let name = format!("Yubico YubiKey CCID vpcd {port}");
        std::fs::write(
            dir.path().join("reader.conf.d/vpcd"),
            format!(
                "# A private pcscd of tests/common/private_pcscd.rs\n\
                 FRIENDLYNAME \"{name}\"\nDEVICENAME   /dev/null:{port}\n\
                 LIBPATH      {}\nCHANNELID    {port}\n",
                driver.display()
            ),
        )
        .expect("reader configuration");
        let mut p = PrivatePcscd {
            dir,
            port,
            readers: [format!("{name} 00 00"), format!("{name} 00 01")],
            daemon: None,
        };
        p.spawn();
        p
    }

    /// The socket clients reach this pcscd through (`PCSCLITE_CSOCK_NAME`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/pcscd.comm")
    }

    /// A third-party client (yubico-piv-tool, opensc-tool, pkcs11-tool) talking to this
    /// pcscd.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = super::run::tool(name);
        c.env(PCSC_SOCKET_ENV, self.socket());
        c
    }

    /// pcscd's own output (foreground log) of the current and earlier runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// SIGKILL pcscd (not its supervisor) and wait until it is gone (the supervising shell
    /// reaps it and exits).
    pub fn kill(&mut self) {
        let Some(d) = self.daemon.take() else {
            return;
        };
        let status = as_root("kill")
            .args(["-KILL", &d.pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "cannot SIGKILL pcscd {}", d.pid);
        d.end();
    }

    /// Start pcscd again after [`PrivatePcscd::kill`]: same readers, same ports.
    pub fn restart(&mut self) {
        self.kill();
        // A killed pcscd leaves its socket and pid file behind.
        for f in ["pcscd.comm", "pcscd.pid"] {
            let _ = std::fs::remove_file(self.dir.path().join("run").join(f));
        }
        self.spawn();
    }

    /// Readers as this pcscd lists them, with whether a card is present (opensc-tool -l).
    pub fn list(&self) -> Vec<(String, bool)> {
        let mut c = self.tool("opensc-tool");
        c.arg("-l").stdin(Stdio::null());
        let Ok(o) = c.output() else {
            return Vec::new();
        };
        // "Nr.  Card  Features  Name" then "0    Yes             <name>".
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.next()?.parse::<u32>().ok()?;
                let card = it.next()?;
                let name = self.readers.iter().find(|r| l.ends_with(r.as_str()))?;
                Some((name.clone(), card == "Yes"))
            })
            .collect()
    }

    /// Wait until reader `n` shows a card (`present`) or none.
    pub fn wait_reader(&self, n: usize, present: bool, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.list();
            if list
                .iter()
                .any(|(r, p)| *r == self.readers[n] && *p == present)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "reader {:?} never showed {} (opensc-tool lists {list:?}); pcscd log:\n{}",
                    self.readers[n],
                    if present { "a card" } else { "no card" },
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A virtual YubiKey in reader `n` (0 or 1) of this pcscd; returns once pcscd shows it.
    pub fn card(&self, n: usize, opts: CardOptions) -> PrivateCard {
        let state_dir = tempfile::Builder::new()
            .prefix("pivault-vcard-")
            .tempdir()
            .expect("temporary directory for the card state");
        let serial = opts.serial.unwrap_or_else(private_serial);
        let mut card = PrivateCard {
            serial,
            reader: self.readers[n].clone(),
            port: self.port + n as u16,
            state: opts
                .state
                .unwrap_or_else(|| state_dir.path().join("card.state")),
            version: opts.version.unwrap_or_else(default_version),
            args: opts.args,
            process: None,
            _state_dir: state_dir,
        };
        card.spawn(self);
        card
    }

    fn spawn(&mut self) {
        let run = self.dir.path().join("run");
        let conf = self.dir.path().join("reader.conf.d");
        let log = self.dir.path().join("pcscd.log");
        // In the new namespace: /run/pcscd becomes our directory (private propagation, so
        // the host never sees the mount), and the USB driver directory (pcscd's
        // usbdropdir) an empty one, so this pcscd never claims a real USB reader that the
        // machine's pcscd serves; pcscd starts in the foreground, its pid goes to stdout,
        // and the shell waits for its stdin to close, then kills and reaps pcscd.
        let script = r#"set -e
mount --bind "$1" /run/pcscd
if [ -d /usr/lib/pcsc/drivers ]; then mount --bind "$4" /usr/lib/pcsc/drivers; fi
pcscd --foreground --config "$2" </dev/null >>"$3" 2>&1 &
pid=$!
echo "$pid"
read -r _ || true
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
"#;
        let mut shell = as_root("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&run)
            .arg(&conf)
            .arg(&log)
            .arg(self.dir.path().join("no-usb-drivers"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run unshare (util-linux)");
        let stdin = shell.stdin.take().expect("piped stdin");
        let mut first = String::new();
        BufReader::new(shell.stdout.take().expect("piped stdout"))
            .read_line(&mut first)
            .expect("read pcscd's pid");
        let pid: u32 = first.trim().parse().unwrap_or_else(|_| {
            let _ = shell.kill();
            panic!(
                "no pid from the private pcscd's shell ({first:?}); pcscd log:\n{}",
                self.log()
            )
        });
        self.daemon = Some(Daemon { shell, stdin, pid });
        let deadline = Instant::now() + START_TIMEOUT;
        while self.list().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the private pcscd (pid {pid}) does not list its readers {:?}; log:\n{}",
                self.readers,
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivatePcscd {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.end();
        }
    }
}

/// A virtual YubiKey in a reader of a [`PrivatePcscd`].
pub struct PrivateCard {
    pub serial: u32,
    pub reader: String,
    pub port: u16,
    pub state: PathBuf,
    version: String,
    args: Vec<String>,
    process: Option<CardRun>,
    _state_dir: tempfile::TempDir,
}

struct CardRun {
    child: Child,
    _stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl PrivateCard {
    /// SIGSTOP: the card stops answering; the APDU pcscd sends it next (or holds now) waits,
    /// and so does the client that sent it.
    pub fn freeze(&self) {
        if let Some(p) = &self.process {
            signal(p.child.id(), "STOP");
        }
    }

    /// SIGCONT after [`PrivateCard::freeze`].
    pub fn thaw(&self) {
        if let Some(p) = &self.process {
            signal(p.child.id(), "CONT");
        }
    }

    /// The card process's exit code once it has exited (waits up to `timeout`).
    pub fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.process.as_mut()?;
            if let Ok(Some(st)) = p.child.try_wait() {
                self.process = None;
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the card printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.stderr.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Start the card again (same state file) in `pcscd` (after it was restarted): the
    /// old process is stopped first if it still runs.
    pub fn restart(&mut self, pcscd: &PrivatePcscd) {
        self.stop();
        self.spawn(pcscd);
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn spawn(&mut self, pcscd: &PrivatePcscd) {
        let mut child = Command::new(vcard_bin())
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
            .expect("start pivault-vcard");
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
        let run = CardRun {
            child,
            _stdin: stdin,
            lines,
            stderr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match run
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.starts_with("pivault-vcard ready") => break,
                Ok(_) => continue,
                Err(e) => panic!(
                    "pivault-vcard on private port {} never got ready ({e}); stderr:\n{}",
                    self.port,
                    run.stderr.lock().unwrap()
                ),
            }
        }
        self.process = Some(run);
        let n = usize::from(self.port != pcscd.port);
        if let Err(why) = pcscd.wait_reader(n, true, START_TIMEOUT) {
            panic!(
                "card {}: {why}; card stderr:\n{}",
                self.serial,
                self.stderr()
            );
        }
    }
}

impl Drop for PrivateCard {
    fn drop(&mut self) {
        if let Some(p) = &self.process {
            // A frozen card ignores everything but SIGKILL and SIGCONT.
            signal(p.child.id(), "CONT");
        }
        self.stop();
    }
}

/// `program` as root: directly when this process is root, else through `sudo -n` (as
/// fixtures/pcsc/setup-readers.sh does); a mount namespace and a bind mount need root.
fn as_root(program: &str) -> Command {
    let id = Command::new("id").arg("-u").output().expect("run id -u");
    if String::from_utf8_lossy(&id.stdout).trim() == "0" {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

/// A card serial unique among live test processes (pid) and this process's cards, in a
/// range of its own (card.rs's cards are 1_xxx_xxx_xxx): for an allow-list written before
/// the card starts (`CardOptions::serial`).
pub fn private_serial() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    2_000_000_000
        + (std::process::id() % 1_000_000) * 100
        + COUNTER.fetch_add(1, Ordering::Relaxed) % 100
}

/// Two consecutive free TCP ports (vpcd listens on both), as the kernel hands them out.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = a.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind(("0.0.0.0", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free TCP ports");
}

fn vpcd_driver() -> String {
    for lib in [
        "/usr/lib/pcsc/drivers/serial/libifdvpcd.so",
        "/usr/lib64/pcsc/drivers/serial/libifdvpcd.so",
        "/usr/local/lib/pcsc/drivers/serial/libifdvpcd.so",
    ] {
        if Path::new(lib).exists() {
            return lib.to_string();
        }
    }
    panic!("vpcd driver (libifdvpcd.so) not found: apt-get install vsmartcard-vpcd");
}

fn signal(pid: u32, name: &str) {
    // std has no kill(2); the `kill` utility keeps the rig free of unsafe code.
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}
