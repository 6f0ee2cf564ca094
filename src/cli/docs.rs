//! Shell completions and manual pages, generated from the clap definitions so they never
//! drift from the real flags. `pivault completions SHELL` prints a completion script;
//! the hidden `pivault manpages DIR` writes `pivault.1` and one `pivault-<sub>.1` per
//! subcommand (what `scripts/package-deb` ships), skipping hidden ones and `help`.

use super::args::{Cli, CompletionShell};
use clap::CommandFactory;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: CompletionShell) -> io::Result<()> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "pivault", &mut out);
    io::stdout().write_all(&out)
}

/// Writes `pivault.1` and `pivault-<subcommand>.1` (hidden subcommands excluded) into `dir`.
pub fn manpages(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    write_page(dir, "pivault", &cmd)?;
    // clap's own `help` subcommand gets no page: `pivault.1` covers it.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // The page's NAME section and synopsis show "pivault-enroll", as git's do. clap
        // takes names as &'static str (its `string` feature is off): leaking a few bytes
        // in a one-shot generator costs less than the feature.
        let name: &'static str = Box::leak(format!("pivault-{}", sub.get_name()).into_boxed_str());
        let page = sub.clone().name(name).display_name(name);
        write_page(dir, name, &page)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: &clap::Command) -> io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("pivault {}", env!("CARGO_PKG_VERSION")))
        .manual("pivault manual")
        .render(&mut buf)?;
    fs::write(dir.join(format!("{name}.1")), buf)
}
