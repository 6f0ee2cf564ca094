//! Reading secrets at the CLI edge: an environment variable, a file readable only by its
//! owner (or `-` for standard input), or a prompt without echo on a terminal. Never argv.

use pivault::Error;
use std::io::{BufRead, IsTerminal};
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

/// Refuse a secret file others can read (or write): the contract asks for owner-only.
#[cfg(unix)]
fn check_owner_only(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_: &std::path::Path) -> Result<(), Error> {
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
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
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::Config(format!("reading the {} from stdin: {e}", src.what)))?;
        return Ok(Some(Zeroizing::new(first_line(&line))));
    }
    check_owner_only(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        Error::Config(format!(
            "cannot read the {} from {}: {e}",
            src.what,
            path.display()
        ))
    })?);
    let v = first_line(&text);
    if v.is_empty() {
        return Err(Error::Config(format!("{} is empty", path.display())));
    }
    Ok(Some(Zeroizing::new(v)))
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
