//! Reading secrets at the CLI edge: an environment variable, a file readable only by its
//! owner (or `-` for standard input), or a prompt without echo on a terminal. Never argv.
//! Files are opened once and checked on the open handle; files and stdin are read up to
//! [`MAX_SECRET_BYTES`] only.

use pivault::Error;
use std::io::{BufRead, IsTerminal, Read};
use zeroize::Zeroizing;

/// Where a secret may come from, in order of preference.
pub struct Source<'a> {
    /// What to call it in messages ("PIN", "management key").
    pub what: &'a str,
    /// Environment variable holding the value.
    pub env: &'a str,
    /// File path from a flag, the config file or `<ENV>_FILE`.
    pub file: Option<std::path::PathBuf>,
}

/// Longest secret file or stdin line taken, in bytes. A PIN is at most 8 bytes, a
/// management key 64 hex digits, a secret_id 36: anything near this is a mistake (a
/// certificate, a log, `/dev/zero`) and is refused instead of read.
pub const MAX_SECRET_BYTES: usize = 4096;

/// Open a secret file the way the contract asks — a regular file, owned by this user, with
/// no access for group or others — checked on the open handle, so nothing can be swapped
/// in between the check and the read:
/// - `O_NOFOLLOW`: a symbolic link as the last component is refused (`ELOOP`) instead of
///   followed to wherever it points;
/// - `O_NONBLOCK`: opening a FIFO does not wait for a writer (it is then refused as not a
///   regular file); no effect on reading a regular file;
/// - `fstat` of the handle for type, owner, mode and size.
#[cfg(unix)]
fn open_owner_only(path: &std::path::Path) -> Result<std::fs::File, Error> {
    use rustix::fs::{FileType, Mode, OFlags};
    let shown = path.display();
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Error::Config(if e == rustix::io::Errno::LOOP {
            format!("{shown} is a symbolic link; give the file itself")
        } else {
            format!("cannot open {shown}: {}", std::io::Error::from(e))
        })
    })?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Error::Config(format!("cannot stat {shown}: {}", std::io::Error::from(e))))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Error::Config(format!(
            "{shown} is not a regular file ({:?})",
            FileType::from_raw_mode(st.st_mode)
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(Error::Config(format!(
            "{shown} is owned by uid {}, not by this user (uid {me}); a secret file must be \
             its reader's own",
            st.st_uid
        )));
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{shown} is open to group or others (mode {mode:o}); run `chmod 600 {shown}`"
        )));
    }
    if st.st_size < 0 || st.st_size as u64 > MAX_SECRET_BYTES as u64 {
        return Err(Error::Config(format!(
            "{shown} is {} bytes; a secret file holds one short line (at most \
             {MAX_SECRET_BYTES} bytes)",
            st.st_size
        )));
    }
    Ok(std::fs::File::from(fd))
}

#[cfg(not(unix))]
fn open_owner_only(path: &std::path::Path) -> Result<std::fs::File, Error> {
    std::fs::File::open(path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))
}

/// The first line of `r`, reading at most [`MAX_SECRET_BYTES`] + 1 bytes of it. Refused
/// when longer, or not UTF-8. Every buffer is zeroized.
fn first_line_bounded(
    r: &mut dyn BufRead,
    what: &str,
    from: &str,
) -> Result<Zeroizing<String>, Error> {
    // Allocated once at full size, so that no copy of the secret is left behind by growth.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES + 64));
    r.take(MAX_SECRET_BYTES as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| Error::Config(format!("reading the {what} from {from}: {e}")))?;
    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if line.len() > MAX_SECRET_BYTES {
        return Err(Error::Config(format!(
            "the {what} from {from} is longer than {MAX_SECRET_BYTES} bytes; give one short line"
        )));
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| Error::Config(format!("the {what} from {from} is not UTF-8 text")))?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// Read a secret from env, file or stdin; `None` when none is configured.
pub fn read(src: &Source<'_>) -> Result<Option<Zeroizing<String>>, Error> {
    if let Ok(v) = std::env::var(src.env) {
        let v = Zeroizing::new(v);
        if !v.trim().is_empty() {
            return Ok(Some(Zeroizing::new(v.trim().to_string())));
        }
    }
    let file = src
        .file
        .clone()
        .or_else(|| std::env::var_os(format!("{}_FILE", src.env)).map(std::path::PathBuf::from));
    let Some(path) = file else { return Ok(None) };
    if path.as_os_str() == "-" {
        let v = first_line_bounded(&mut std::io::stdin().lock(), src.what, "stdin")?;
        return Ok(Some(v));
    }
    let f = open_owner_only(&path)?;
    let v = first_line_bounded(
        &mut std::io::BufReader::new(f),
        src.what,
        &path.display().to_string(),
    )?;
    if v.is_empty() {
        return Err(Error::Config(format!("{} is empty", path.display())));
    }
    Ok(Some(v))
}

/// Whether prompting is possible (a person at a terminal).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Prompt without echo.
pub fn prompt(label: &str) -> Result<Zeroizing<String>, Error> {
    rpassword::prompt_password(label)
        .map(Zeroizing::new)
        .map_err(|e| Error::Config(format!("cannot prompt: {e}")))
}

/// Read from the configured sources, else prompt on a terminal, else fail with how to
/// provide it.
pub fn require(src: &Source<'_>) -> Result<Zeroizing<String>, Error> {
    if let Some(v) = read(src)? {
        return Ok(v);
    }
    if interactive() {
        return prompt(&format!("{}: ", src.what));
    }
    Err(Error::Usage(format!(
        "the {} is needed: set {} or {}_FILE (a file only its owner can read), or run on a terminal to be asked",
        src.what, src.env, src.env
    )))
}

#[cfg(all(test, unix))]
mod tests {
    //! On the real file system and a real pipe: symlinks, FIFOs, other owners, huge files.
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn src(file: &Path) -> Source<'static> {
        Source {
            what: "PIN",
            // Never set: the file is the source.
            env: "PIVAULT_TEST_NEVER_SET",
            file: Some(file.to_path_buf()),
        }
    }

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    /// `read` on another thread, so that a read that blocks fails the test instead of
    /// hanging it.
    fn read_within(file: PathBuf, limit: Duration) -> Result<Option<String>, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = read(&src(&file))
                .map(|v| v.map(|s| s.to_string()))
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| Err("BLOCKED: the read did not return".into()))
    }

    #[test]
    fn an_owner_only_file_is_read() {
        let d = tempfile::tempdir().expect("tmp");
        let p = secret_file(d.path(), "pin", "123456\nignored\n", 0o600);
        assert_eq!(
            read_within(p, Duration::from_secs(5)),
            Ok(Some("123456".into()))
        );
    }

    #[test]
    fn a_symlink_is_refused_even_to_an_owner_only_file() {
        let d = tempfile::tempdir().expect("tmp");
        let target = secret_file(d.path(), "pin", "123456\n", 0o600);
        let link = d.path().join("link");
        symlink(&target, &link).expect("symlink");
        let r = read_within(link, Duration::from_secs(5));
        assert!(
            r.as_ref().is_err_and(|e| e.contains("symbolic link")),
            "{r:?}"
        );
    }

    #[test]
    fn group_or_other_access_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        for mode in [0o640, 0o604, 0o620, 0o660] {
            let p = secret_file(d.path(), &format!("pin{mode:o}"), "123456\n", mode);
            let r = read_within(p, Duration::from_secs(5));
            assert!(r.as_ref().is_err_and(|e| e.contains("chmod 600")), "{r:?}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("fifo");
        let o = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&p)
            .output()
            .expect("mkfifo");
        assert!(o.status.success());
        let r = read_within(p, Duration::from_secs(3));
        assert!(
            r.as_ref().is_err_and(|e| e.contains("not a regular file")),
            "{r:?}"
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let r = read_within(d.path().to_path_buf(), Duration::from_secs(3));
        assert!(
            r.as_ref().is_err_and(|e| e.contains("not a regular file")),
            "{r:?}"
        );
    }

    #[test]
    fn a_large_file_is_refused_unread() {
        let d = tempfile::tempdir().expect("tmp");
        let p = secret_file(d.path(), "big", "123456\n", 0o600);
        // 1 GiB, sparse: reading it whole would take a second and a gigabyte.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        f.set_len(1 << 30).expect("grow");
        let r = read_within(p, Duration::from_secs(5));
        assert!(r.as_ref().is_err_and(|e| e.contains("bytes")), "{r:?}");
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let p = secret_file(d.path(), "pin", "123456\n", 0o600);
        let me = std::fs::metadata(d.path()).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        // Give the file to another user: possible as root (the rig runs as root); as
        // anyone else, chown fails and the case cannot be set up.
        let other = if me.is_ok_and(|u| u == 0) { 65534 } else { 0 };
        if std::os::unix::fs::chown(&p, Some(other), None).is_err() {
            eprintln!("cannot chown as this user: owner check not exercised");
            return;
        }
        let r = read_within(p, Duration::from_secs(5));
        assert!(r.as_ref().is_err_and(|e| e.contains("owned by")), "{r:?}");
    }

    /// Child half of `stdin_is_read_bounded`: reads the PIN from its real stdin.
    #[test]
    #[ignore = "run by stdin_is_read_bounded in a child process"]
    fn stdin_child() {
        if std::env::var_os("PIVAULT_TEST_STDIN_CHILD").is_none() {
            return;
        }
        match read(&src(Path::new("-"))) {
            Ok(v) => println!("CHILD-OK {}", v.map(|s| s.len()).unwrap_or(0)),
            Err(e) => println!("CHILD-ERR {e}"),
        }
    }

    #[test]
    fn stdin_is_read_bounded() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--ignored",
                "--exact",
                "cli::secrets::tests::stdin_child",
                "--nocapture",
            ])
            .env("PIVAULT_TEST_STDIN_CHILD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        // 64 MiB without a newline; the writer stops when the child closes the pipe.
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'7'; 1 << 16];
            for _ in 0..1024 {
                if stdin.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let out = child.wait_with_output().expect("child");
        let _ = writer.join();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("CHILD-ERR") && text.contains("bytes"),
            "a 64 MiB line was accepted: {}",
            text.lines().find(|l| l.contains("CHILD")).unwrap_or("")
        );
    }
}
