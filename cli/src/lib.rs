//! What the operator tools and agents share: the region-file options
//! ([`args`]), the `--json` reports ([`json`]), shell completions and man
//! pages ([`generate`]), `-v`/`-q` ([`logging`]) and writing reports to
//! stdout.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod args;
pub mod generate;
pub mod json;
pub mod logging;

use std::fmt;
use std::io::Write as _;

/// Writes `text` to stdout; a closed pipe (`| head`) ends the program
/// quietly (exit 0), any other write error ends it with
/// `<program>: cannot write output: <error>` on stderr and exit 1.
pub fn emit(program: &str, text: fmt::Arguments<'_>) {
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("{program}: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`], naming the program with the binary's
/// `PROGRAM` constant, which must be in scope.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::emit(PROGRAM, format_args!("{}\n", format_args!($($arg)*)))
    };
}
