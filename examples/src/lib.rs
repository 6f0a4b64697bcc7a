//! The example agents' shared code: the agents' conversation
//! ([`agent`]), test traffic ([`traffic`]) and a checksum.
//!
//! Binaries: `ivchan-host-agent` (serves one VM), `ivchan-guest-agent`
//! (runs in the guest, or against a region file to simulate one) and
//! `ivchan-demo` (both as two processes over one `/dev/shm` region).

#![warn(missing_docs)]

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use ivchan_protocol::{
    poll_until, CancelToken, Channel, ChannelError, ChannelOptions, Header, LayoutError, Mapping,
    OwnedChannel, Side, WaitStrategy,
};

pub mod agent;

/// Test traffic, shared with ivchan's tests: see [`ivchan_testkit::traffic`].
pub use ivchan_testkit::traffic;

/// The checksum of file transfers and traffic: see [`ivchan_testkit::checksum`].
pub use ivchan_testkit::checksum::{checksum, Checksum};

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// A progress bar for moving `len` bytes, labelled `what`, on stderr. It is
/// drawn only when stderr is a terminal: piped, redirected or under systemd
/// it stays hidden and costs nothing.
pub fn transfer_progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Exit status of an agent stopped by a signal (128 + SIGINT, as shells
/// report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A token that SIGINT, SIGTERM and SIGHUP cancel: channels that carry it
/// ([`OwnedChannel::set_cancel`]) end their blocking calls with
/// `Cancelled`, and the agent unwinds: its channel is dropped (its side
/// marked closed), what it created is removed, its children are stopped. A
/// second signal ends the process at once.
pub fn cancel_on_signals() -> Result<CancelToken, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let token = CancelToken::new();
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees the flag as the previous signal left
        // it: set means this is the second one.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(EXIT_INTERRUPTED),
            token.flag().clone(),
        )
        .and_then(|_| signal_hook::flag::register(signal, token.flag().clone()))
        .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    Ok(token)
}

/// Maps a host region file shared, the way a guest maps BAR2, and attaches
/// as the guest once the host has written the header.
pub fn attach_region_file(
    path: &Path,
    options: ChannelOptions,
    wait: Duration,
) -> Result<OwnedChannel<Mapping>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // A symlink planted at the path is refused, not followed.
        .custom_flags(o_nofollow())
        .open(path)
        .map_err(|e| fail(&e))?;
    let len = file.metadata().map_err(|e| fail(&e))?.len();
    let len = usize::try_from(len).map_err(|e| fail(&e))?;
    let mapping = Mapping::shared(&file, len).map_err(|e| fail(&e))?;
    let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(50));
    OwnedChannel::new(mapping, |region| {
        let header = poll_until(strategy, Some(wait), || match Header::open(region) {
            Ok(header) => Ok(Some(header)),
            Err(LayoutError::NotInitialized) => Ok(None),
            Err(e) => Err(ChannelError::Layout(e)),
        })?
        .ok_or(ChannelError::Timeout { waited: wait })?;
        Channel::attach(header, Side::Guest, options)
    })
    .map_err(|e| fail(&e))
}

fn o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
