//! `ivchan`: look at the region files of this host's VMs, or prepare one.
//!
//! `list` and `inspect` are read-only: regions are opened `O_RDONLY` and
//! mapped private, without the host agent's lock, so running them next to a
//! live agent is safe. They watch each side's heartbeat for a moment, so a
//! side whose agent died (`ready`, heartbeat still) shows as stale. `init`
//! creates a region (or adopts an all-zero one) and writes its header, so
//! QEMU can be started on it before any agent. `reset` writes a fresh
//! header over a region whose agents died, without recreating the file
//! (QEMU keeps its mapping).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ivchan_cli::args::{RegionArgs, RegionDirArgs};
use ivchan_cli::say;
use ivchan_host::region_file::user_name;
use ivchan_host::{list_regions, InspectedRegion, RegionError, VmUuid};
use ivchan_protocol::layout::{PeerState, SideStatus};
use ivchan_protocol::report::{describe, human_size, summary};
use ivchan_protocol::{Header, LayoutError, Side};

/// The name in error messages, for [`say!`].
const PROGRAM: &str = "ivchan";

/// How long `list`, `inspect` and `reset` watch the heartbeats: a live
/// agent beats every 100 ms by default, even while it sleeps.
const WATCH: Duration = Duration::from_millis(300);

#[derive(Parser)]
#[command(
    name = "ivchan",
    version,
    about = "Inspect, prepare and reset ivchan shared-memory regions on the host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List region files with size, owner, header and side liveness; exits
    /// non-zero if any could not be read.
    List {
        #[command(flatten)]
        place: RegionDirArgs,
    },
    /// Print one region's header, rings and sides (with heartbeat liveness).
    Inspect {
        /// `fg_<uuid>`, a bare UUID, or a path (anything with a `/`).
        region: String,
        #[command(flatten)]
        place: RegionDirArgs,
    },
    /// Create a VM's region file (or adopt one QEMU made) and write its
    /// header; an existing header is kept. A failure leaves no file behind.
    Init {
        /// The VM's UUID.
        uuid: VmUuid,
        /// Channel name written into a new header.
        #[arg(long, default_value = "ivchan")]
        name: String,
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Write a fresh header (empty rings, both sides absent) over a VM's
    /// region, keeping the file: recovers a region whose agents died or
    /// whose header is damaged. Refused while a host agent holds the region,
    /// or while the guest side's heartbeat moves (unless --force).
    Reset {
        /// The VM's UUID.
        uuid: VmUuid,
        /// Channel name for the new header (default: the old header's, else
        /// "ivchan").
        #[arg(long)]
        name: Option<String>,
        /// Reset even though the guest agent is alive.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        region: RegionArgs,
    },
}

/// A failure of one command, for the exit status.
#[derive(Debug)]
enum Failure {
    Region(RegionError),
    Message(String),
}

impl From<RegionError> for Failure {
    fn from(e: RegionError) -> Self {
        Self::Region(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Region(e) => write!(f, "{e}"),
            Self::Message(m) => write!(f, "{m}"),
        }
    }
}

fn init(uuid: &VmUuid, name: &str, region: &RegionArgs) -> Result<(), Failure> {
    let options = region.options();
    let (file, created) = match options.create(uuid) {
        Ok(file) => (file, true),
        Err(RegionError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            (options.open(uuid)?, false)
        }
        Err(e) => return Err(e.into()),
    };
    match file.attach_or_init(name) {
        Ok(header) => {
            say!("{}  {}", file.path().display(), summary(&header));
            Ok(())
        }
        Err(e) => {
            // Nothing half-made stays behind.
            if created {
                let _ = file.remove();
            }
            Err(e.into())
        }
    }
}

fn reset(
    uuid: &VmUuid,
    name: Option<&str>,
    force: bool,
    region: &RegionArgs,
) -> Result<(), Failure> {
    let file = region.options().open(uuid)?;
    let old_name = Header::open(file.region())
        .ok()
        .and_then(|h| h.layout().name_str().map(str::to_owned));
    if !force {
        let before = Header::open(file.region()).ok().map(|h| sides(&h));
        std::thread::sleep(WATCH);
        let after = Header::open(file.region()).ok().map(|h| sides(&h));
        if let (Some(before), Some(after)) = (before, after) {
            if let Liveness::Alive = liveness(before[1], after[1]) {
                return Err(Failure::Message(format!(
                    "{}: the guest agent is alive (its heartbeat moves); stop it first, \
                     or pass --force to reset under it",
                    file.path().display()
                )));
            }
        }
    }
    let name = name.or(old_name.as_deref()).unwrap_or("ivchan");
    let header = file.reset(name)?;
    say!("{}  reset: {}", file.path().display(), summary(&header));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { place } => list(&place.dir, &place.prefix),
        Command::Inspect { region, place } => resolve(&region, &place.dir, &place.prefix)
            .map_err(Failure::from)
            .and_then(|path| inspect(&path)),
        Command::Init { uuid, name, region } => init(&uuid, &name, &region),
        Command::Reset {
            uuid,
            name,
            force,
            region,
        } => reset(&uuid, name.as_deref(), force, &region),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Turns the `inspect` argument into a path; a name must carry a valid UUID.
fn resolve(arg: &str, dir: &Path, prefix: &str) -> Result<PathBuf, RegionError> {
    if arg.contains('/') {
        return Ok(PathBuf::from(arg));
    }
    let uuid: VmUuid = arg.strip_prefix(prefix).unwrap_or(arg).parse()?;
    Ok(dir.join(format!("{prefix}{uuid}")))
}

fn owner_name(uid: u32) -> String {
    user_name(uid).to_string()
}

/// What two looks at a side block, [`WATCH`] apart, say about its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Not attached (absent or closed).
    Detached,
    /// `ready`, and the heartbeat or epoch moved.
    Alive,
    /// `ready`, and nothing moved: its agent died, hangs, or does not call
    /// in (a new agent takes the side over).
    Stale,
    /// The block is invalid.
    Invalid,
}

fn sides(header: &Header<'_>) -> [Option<SideStatus>; 2] {
    [Side::Host, Side::Guest].map(|side| header.status(side).ok())
}

fn liveness(before: Option<SideStatus>, after: Option<SideStatus>) -> Liveness {
    match (before, after) {
        (Some(b), Some(a)) if a.state == PeerState::Ready => {
            if a.heartbeat != b.heartbeat || a.epoch != b.epoch {
                Liveness::Alive
            } else {
                Liveness::Stale
            }
        }
        (_, Some(_)) => Liveness::Detached,
        _ => Liveness::Invalid,
    }
}

fn liveness_line(label: &str, status: Option<SideStatus>, live: Liveness) -> String {
    let watched = WATCH.as_secs_f64();
    let what = match live {
        Liveness::Alive => format!("alive (heartbeat moved within {watched:.1} s)"),
        Liveness::Stale => format!(
            "stale: ready, but no heartbeat for {watched:.1} s (its agent died or hangs; \
             a new agent takes over)"
        ),
        Liveness::Detached => match status.map(|s| s.state) {
            Some(PeerState::Closed) => "closed".to_owned(),
            _ => "absent".to_owned(),
        },
        Liveness::Invalid => "invalid side block".to_owned(),
    };
    format!("  {label:<5}  {what}")
}

/// The header line and, when there is a header, the side blocks' first look.
fn first_look(view: &InspectedRegion) -> (String, Option<[Option<SideStatus>; 2]>, bool) {
    match Header::open(view.region()) {
        Ok(header) => {
            let uuid = VmUuid::from_bytes(header.layout().uuid);
            let mut line = summary(&header);
            if !view.path().to_string_lossy().ends_with(&uuid.to_string()) {
                line.push_str("  [header UUID differs from file name]");
            }
            (line, Some(sides(&header)), true)
        }
        Err(LayoutError::NotInitialized) => ("no header yet (all zeros)".to_owned(), None, true),
        Err(e) => (format!("invalid header: {e}"), None, false),
    }
}

/// A second look at the side blocks, through a fresh private mapping.
fn second_look(path: &Path) -> Option<[Option<SideStatus>; 2]> {
    let view = InspectedRegion::open(path).ok()?;
    let header = Header::open(view.region()).ok()?;
    Some(sides(&header))
}

fn list(dir: &Path, prefix: &str) -> Result<(), Failure> {
    let regions = list_regions(dir, prefix)?;
    if regions.is_empty() {
        say!("no {prefix}<uuid> region files in {}", dir.display());
        return Ok(());
    }
    // One look at every region, one wait, a second look: liveness for all.
    let mut looks = Vec::new();
    let mut unreadable = 0usize;
    for (_, path) in &regions {
        match InspectedRegion::open(path) {
            Ok(view) => {
                let meta = view.metadata();
                let facts = format!(
                    "  {}  owner {}  mode {:04o}",
                    human_size(meta.len()),
                    owner_name(meta.uid()),
                    meta.mode() & 0o7777
                );
                let (line, first, readable) = first_look(&view);
                if !readable {
                    unreadable += 1;
                }
                looks.push((path, Ok((facts, line, first))));
            }
            Err(e) => {
                unreadable += 1;
                looks.push((path, Err(e)));
            }
        }
    }
    if looks.iter().any(|(_, l)| matches!(l, Ok((_, _, Some(_))))) {
        std::thread::sleep(WATCH);
    }
    for (path, look) in looks {
        say!("{}", path.display());
        match look {
            Ok((facts, line, first)) => {
                say!("{facts}");
                say!("  {line}");
                if let Some(first) = first {
                    let second = second_look(path).unwrap_or([None, None]);
                    for (i, label) in ["host", "guest"].iter().enumerate() {
                        say!(
                            "  {}",
                            liveness_line(label, second[i], liveness(first[i], second[i]))
                        );
                    }
                }
            }
            Err(e) => say!("  cannot open: {e}"),
        }
    }
    if unreadable > 0 {
        return Err(Failure::Message(format!(
            "{unreadable} of {} region files could not be read",
            regions.len()
        )));
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<(), Failure> {
    let view = InspectedRegion::open(path)?;
    let meta = view.metadata();
    say!("file      {}", path.display());
    say!(
        "owner     {}  mode {:04o}",
        owner_name(meta.uid()),
        meta.mode() & 0o7777
    );
    let header = Header::open(view.region()).map_err(|source| RegionError::Layout {
        path: path.to_path_buf(),
        source,
    })?;
    ivchan_cli::emit(PROGRAM, format_args!("{}", describe(&header)));
    let first = sides(&header);
    std::thread::sleep(WATCH);
    let second = second_look(path).unwrap_or([None, None]);
    say!("liveness");
    for (i, label) in ["host", "guest"].iter().enumerate() {
        say!(
            "{}",
            liveness_line(label, second[i], liveness(first[i], second[i]))
        );
    }
    Ok(())
}
