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
use ivchan_cli::generate::{self, Shell};
use ivchan_cli::logging::Verbosity;
use ivchan_cli::{json, say};
use ivchan_host::region_file::{user_name, IdName};
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
    #[command(flatten)]
    verbosity: Verbosity,
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
        /// Print JSON (schema: `ivchan_cli::json`, README "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Print one region's header, rings and sides (with heartbeat liveness).
    Inspect {
        /// `fg_<uuid>`, a bare UUID, or a path (anything with a `/`).
        region: String,
        #[command(flatten)]
        place: RegionDirArgs,
        /// Print JSON (schema: `ivchan_cli::json`, README "JSON output").
        #[arg(long)]
        json: bool,
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
    /// Print the shell completion script for SHELL (e.g. `ivchan completions
    /// bash > /usr/share/bash-completion/completions/ivchan`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Print the man page (roff; `ivchan man | man -l -`), or write the
    /// pages of ivchan and its subcommands into DIR.
    Man {
        /// Directory to write `ivchan.1` and `ivchan-<subcommand>.1` into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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

fn init(uuid: &VmUuid, name: &str, region: &RegionArgs, quiet: bool) -> Result<(), Failure> {
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
            if !quiet {
                say!("{}  {}", file.path().display(), summary(&header));
            }
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
    quiet: bool,
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
    if !quiet {
        say!("{}  reset: {}", file.path().display(), summary(&header));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init();
    let quiet = cli.verbosity.quiet;
    let result = match cli.command {
        Command::List { place, json } => list(&place.dir, &place.prefix, json),
        Command::Inspect {
            region,
            place,
            json,
        } => resolve(&region, &place.dir, &place.prefix)
            .map_err(Failure::from)
            .and_then(|path| inspect(&path, json)),
        Command::Init { uuid, name, region } => init(&uuid, &name, &region, quiet),
        Command::Reset {
            uuid,
            name,
            force,
            region,
        } => reset(&uuid, name.as_deref(), force, &region, quiet),
        Command::Completions { shell } => {
            generate::completions::<Cli>(PROGRAM, shell);
            Ok(())
        }
        Command::Man { dir } => {
            generate::man::<Cli>(PROGRAM, dir.as_deref());
            Ok(())
        }
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

impl Liveness {
    /// The `--json` name: `alive`, `stale`, `absent`, `closed`, `invalid`.
    fn name(self, status: Option<SideStatus>) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Stale => "stale",
            Self::Detached => match status.map(|s| s.state) {
                Some(PeerState::Closed) => "closed",
                _ => "absent",
            },
            Self::Invalid => "invalid",
        }
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
        Liveness::Detached => live.name(status).to_owned(),
        Liveness::Invalid => "invalid side block".to_owned(),
    };
    format!("  {label:<5}  {what}")
}

/// A first look at a region: its file and header, and the side blocks to
/// compare with a second look.
struct Look {
    /// Size, owner and mode (`Err`: the file could not be opened).
    file: Result<json::FileReport, RegionError>,
    /// The header's one-line summary, or why there is none.
    line: String,
    /// The header as data.
    header: Option<json::HeaderReport>,
    /// Why there is no header.
    header_error: Option<String>,
    /// The side blocks, when there is a header.
    sides: Option<[Option<SideStatus>; 2]>,
    /// False when the file or its header could not be read.
    readable: bool,
}

impl Look {
    fn take(path: &Path) -> Self {
        let view = match InspectedRegion::open(path) {
            Ok(view) => view,
            Err(e) => {
                return Self {
                    file: Err(e),
                    line: String::new(),
                    header: None,
                    header_error: None,
                    sides: None,
                    readable: false,
                }
            }
        };
        let meta = view.metadata();
        let owner = user_name(meta.uid());
        let file = Ok(json::FileReport {
            size: meta.len(),
            uid: owner.id,
            owner: owner.name,
            mode: format!("{:04o}", meta.mode() & 0o7777),
        });
        match Header::open(view.region()) {
            Ok(header) => {
                let uuid = VmUuid::from_bytes(header.layout().uuid);
                let mut line = summary(&header);
                if !path.to_string_lossy().ends_with(&uuid.to_string()) {
                    line.push_str("  [header UUID differs from file name]");
                }
                Self {
                    file,
                    line,
                    header: Some(json::HeaderReport::new(&header)),
                    header_error: None,
                    sides: Some(sides(&header)),
                    readable: true,
                }
            }
            Err(LayoutError::NotInitialized) => Self {
                file,
                line: "no header yet (all zeros)".to_owned(),
                header: None,
                header_error: Some("no header yet (all zeros)".to_owned()),
                sides: None,
                readable: true,
            },
            Err(e) => Self {
                file,
                line: format!("invalid header: {e}"),
                header: None,
                header_error: Some(e.to_string()),
                sides: None,
                readable: false,
            },
        }
    }

    /// The region as `--json` reports it, given the second look's side blocks.
    fn report(self, path: &Path, second: [Option<SideStatus>; 2]) -> json::RegionReport {
        let liveness = self.sides.map(|first| {
            let name = |i: usize| liveness(first[i], second[i]).name(second[i]);
            json::Sides {
                host: name(0),
                guest: name(1),
            }
        });
        let (file, error) = match self.file {
            Ok(file) => (Some(file), None),
            Err(e) => (None, Some(e.to_string())),
        };
        json::RegionReport {
            path: path.display().to_string(),
            file,
            error,
            header: self.header,
            header_error: self.header_error,
            liveness,
        }
    }
}

/// A second look at the side blocks, through a fresh private mapping.
fn second_look(path: &Path) -> [Option<SideStatus>; 2] {
    InspectedRegion::open(path)
        .ok()
        .and_then(|view| Header::open(view.region()).ok().map(|h| sides(&h)))
        .unwrap_or([None, None])
}

fn list(dir: &Path, prefix: &str, as_json: bool) -> Result<(), Failure> {
    let regions = list_regions(dir, prefix)?;
    // One look at every region, one wait, a second look: liveness for all.
    let looks: Vec<(PathBuf, Look)> = regions
        .into_iter()
        .map(|(_, path)| {
            let look = Look::take(&path);
            (path, look)
        })
        .collect();
    let unreadable = looks.iter().filter(|(_, l)| !l.readable).count();
    let total = looks.len();
    if looks.iter().any(|(_, l)| l.sides.is_some()) {
        log::debug!("watching the heartbeats for {WATCH:?}");
        std::thread::sleep(WATCH);
    }
    if as_json {
        let regions = looks
            .into_iter()
            .map(|(path, look)| {
                let second = second_look(&path);
                look.report(&path, second)
            })
            .collect();
        json::print(
            PROGRAM,
            &json::RegionList {
                dir: dir.display().to_string(),
                prefix: prefix.to_owned(),
                regions,
            },
        );
    } else if looks.is_empty() {
        say!("no {prefix}<uuid> region files in {}", dir.display());
    } else {
        for (path, look) in looks {
            say!("{}", path.display());
            match &look.file {
                Ok(file) => {
                    let owner = IdName {
                        id: file.uid,
                        name: file.owner.clone(),
                    };
                    say!(
                        "  {}  owner {owner}  mode {}",
                        human_size(file.size),
                        file.mode
                    );
                    say!("  {}", look.line);
                    if let Some(first) = look.sides {
                        let second = second_look(&path);
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
    }
    if unreadable > 0 {
        return Err(Failure::Message(format!(
            "{unreadable} of {total} region files could not be read"
        )));
    }
    Ok(())
}

fn inspect(path: &Path, as_json: bool) -> Result<(), Failure> {
    let view = InspectedRegion::open(path)?;
    let meta = view.metadata();
    let header = Header::open(view.region()).map_err(|source| RegionError::Layout {
        path: path.to_path_buf(),
        source,
    })?;
    if as_json {
        let look = Look::take(path);
        std::thread::sleep(WATCH);
        json::print(PROGRAM, &look.report(path, second_look(path)));
        return Ok(());
    }
    say!("file      {}", path.display());
    say!(
        "owner     {}  mode {:04o}",
        user_name(meta.uid()),
        meta.mode() & 0o7777
    );
    ivchan_cli::emit(PROGRAM, format_args!("{}", describe(&header)));
    let first = sides(&header);
    std::thread::sleep(WATCH);
    let second = second_look(path);
    say!("liveness");
    for (i, label) in ["host", "guest"].iter().enumerate() {
        say!(
            "{}",
            liveness_line(label, second[i], liveness(first[i], second[i]))
        );
    }
    Ok(())
}
