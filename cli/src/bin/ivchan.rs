//! `ivchan`: look at the region files of this host's VMs, or prepare one.
//!
//! `list` and `inspect` are read-only: regions are opened `O_RDONLY` and
//! mapped private, without the host agent's lock, so running them next to a
//! live agent is safe. `init` creates a region (or adopts an all-zero one)
//! and writes its header, so QEMU can be started on it before any agent.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ivchan_cli::say;
use ivchan_host::region_file::{DEFAULT_DIR, DEFAULT_PREFIX};
use ivchan_host::{list_regions, InspectedRegion, RegionError, RegionOptions, VmUuid};
use ivchan_protocol::report::{describe, human_size, summary};
use ivchan_protocol::{Header, LayoutError};

/// The name in error messages, for [`say!`].
const PROGRAM: &str = "ivchan";

#[derive(Parser)]
#[command(
    name = "ivchan",
    version,
    about = "Inspect ivchan shared-memory regions on the host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List region files with size, owner and header summary.
    List {
        /// Directory holding region files.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// File-name prefix before the VM UUID.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Print one region's header, rings and sides.
    Inspect {
        /// `fg_<uuid>`, a bare UUID, or a path (anything with a `/`).
        region: String,
        /// Directory for `fg_<uuid>` and UUID arguments.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// File-name prefix before the VM UUID.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Create a VM's region file (or adopt one QEMU made) and write its
    /// header; an existing header is kept.
    Init {
        /// The VM's UUID.
        uuid: VmUuid,
        /// Channel name written into a new header.
        #[arg(long, default_value = "ivchan")]
        name: String,
        /// Size in bytes (a power of two, at least 1 MiB).
        #[arg(long, default_value_t = 8 << 20)]
        size: u64,
        /// Permission bits of a new file (octal).
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        mode: u32,
        /// Group of a new file (numeric gid), e.g. QEMU's.
        #[arg(long)]
        group: Option<u32>,
        /// Directory holding region files.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// File-name prefix before the VM UUID.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 600 or 660"))
}

fn init(
    uuid: &VmUuid,
    name: &str,
    size: u64,
    mode: u32,
    group: Option<u32>,
    dir: &Path,
    prefix: &str,
) -> Result<(), RegionError> {
    let mut options = RegionOptions::new()
        .dir(dir)
        .prefix(prefix)
        .size(size)
        .mode(mode);
    if let Some(gid) = group {
        options = options.group(gid);
    }
    let file = options.open_or_create(uuid)?;
    let header = file.attach_or_init(name)?;
    say!("{}  {}", file.path().display(), summary(&header));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { dir, prefix } => list(&dir, &prefix),
        Command::Inspect {
            region,
            dir,
            prefix,
        } => resolve(&region, &dir, &prefix).and_then(|path| inspect(&path)),
        Command::Init {
            uuid,
            name,
            size,
            mode,
            group,
            dir,
            prefix,
        } => init(&uuid, &name, size, mode, group, &dir, &prefix),
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
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{}({uid})", user.name),
        _ => uid.to_string(),
    }
}

fn header_line(view: &InspectedRegion) -> String {
    match Header::open(view.region()) {
        Ok(header) => {
            let uuid = VmUuid::from_bytes(header.layout().uuid);
            let mut line = summary(&header);
            if !view.path().to_string_lossy().ends_with(&uuid.to_string()) {
                line.push_str("  [header UUID differs from file name]");
            }
            line
        }
        Err(LayoutError::NotInitialized) => "no header yet (all zeros)".to_owned(),
        Err(e) => format!("invalid header: {e}"),
    }
}

fn list(dir: &Path, prefix: &str) -> Result<(), RegionError> {
    let regions = list_regions(dir, prefix)?;
    if regions.is_empty() {
        say!("no {prefix}<uuid> region files in {}", dir.display());
        return Ok(());
    }
    for (_, path) in regions {
        say!("{}", path.display());
        match InspectedRegion::open(&path) {
            Ok(view) => {
                let meta = view.metadata();
                say!(
                    "  {}  owner {}  mode {:04o}",
                    human_size(meta.len()),
                    owner_name(meta.uid()),
                    meta.mode() & 0o7777
                );
                say!("  {}", header_line(&view));
            }
            Err(e) => say!("  cannot open: {e}"),
        }
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<(), RegionError> {
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
    Ok(())
}
