//! Shell completions and man pages, generated from a tool's clap
//! definitions (`clap_complete`, `clap_mangen`), so they never drift from
//! the options the tool parses.
//!
//! Each tool offers them as `completions SHELL` and `man` subcommands; `cargo
//! xtask cli-assets` writes them all under `target/assets/` for packaging.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
pub use clap_complete::Shell;

/// Writes `T`'s completion script for `shell` to stdout. The script
/// completes the binary named `program`.
pub fn completions<T: CommandFactory>(program: &str, shell: Shell) {
    let mut command = T::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, program, &mut out);
    write_all(program, &out);
}

/// Writes `T`'s man page (roff, section 1) to stdout, or, with `dir`, the
/// pages of the tool and of each subcommand (`ivchan.1`, `ivchan-list.1`,
/// ...) into `dir`, which must exist.
pub fn man<T: CommandFactory>(program: &str, dir: Option<&Path>) {
    let command = T::command();
    let result = match dir {
        Some(dir) => clap_mangen::generate_to(command, dir),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .map(|()| write_all(program, &out))
        }
    };
    if let Err(e) = result {
        eprintln!("{program}: cannot write the man pages: {e}");
        std::process::exit(1);
    }
}

fn write_all(program: &str, bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("{program}: cannot write output: {e}");
        std::process::exit(1);
    }
}
