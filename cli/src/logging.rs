//! `-v`/`-q` for every tool: how much the tool and the ivchan libraries log
//! on stderr, through the `log` facade and `env_logger`.
//!
//! By default only warnings and errors; `-v` adds what the tools and
//! libraries do (regions created, headers written, devices enabled), `-vv`
//! each decision (every device passed over and why), `-vvv` everything.
//! `-q` keeps errors only and drops confirmation lines. `RUST_LOG`
//! (env_logger's syntax, e.g. `ivchan_guest=debug`) overrides both.

use clap::{ArgAction, Args};
use log::LevelFilter;

/// `-v` (repeatable) and `-q`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// Log more on stderr: -v what is done, -vv each decision, -vvv
    /// everything (RUST_LOG overrides).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log errors only, and print no confirmation lines (`init`, `reset`).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Verbosity {
    /// The log level these flags ask for.
    pub fn level(&self) -> LevelFilter {
        if self.quiet {
            return LevelFilter::Error;
        }
        match self.verbose {
            0 => LevelFilter::Warn,
            1 => LevelFilter::Info,
            2 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    }

    /// Installs the logger: records go to stderr as
    /// `[<time> <LEVEL> <module>] <message>`.
    pub fn init(&self) {
        let mut builder = env_logger::Builder::new();
        builder.filter_level(self.level());
        if let Ok(spec) = std::env::var("RUST_LOG") {
            builder.parse_filters(&spec);
        }
        // A second init (tests) keeps the first logger.
        let _ = builder.try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        verbosity: Verbosity,
    }

    fn level(args: &[&str]) -> Result<LevelFilter, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|c| c.verbosity.level())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(level(&[]), Ok(LevelFilter::Warn));
        assert_eq!(level(&["-v"]), Ok(LevelFilter::Info));
        assert_eq!(level(&["-vv"]), Ok(LevelFilter::Debug));
        assert_eq!(level(&["-v", "-v", "-v", "-v"]), Ok(LevelFilter::Trace));
        assert_eq!(level(&["-q"]), Ok(LevelFilter::Error));
        let err = level(&["-q", "-v"]).unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
    }
}
