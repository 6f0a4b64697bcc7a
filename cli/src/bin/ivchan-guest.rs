//! `ivchan-guest`: list the VM's ivshmem devices and inspect ivchan regions.
//!
//! `list` only reads: it does not enable disabled devices. `inspect` maps
//! BAR2 (enabling the device if needed, as an agent would) and only reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ivchan_cli::generate::{self, Shell};
use ivchan_cli::logging::Verbosity;
use ivchan_cli::{json, say};
use ivchan_guest::discovery::DEFAULT_SYSFS;
use ivchan_guest::{
    discover, product_uuid, select, GuestError, IvshmemDevice, MapOptions, MappedBar, Selector,
    VmUuid,
};
use ivchan_protocol::report::{describe, human_size, summary};

/// The name in error messages, for [`say!`].
const PROGRAM: &str = "ivchan-guest";

#[derive(Parser)]
#[command(
    name = "ivchan-guest",
    version,
    about = "Find and inspect ivchan ivshmem devices in this VM"
)]
struct Cli {
    /// sysfs mount point.
    #[arg(long, global = true, default_value = DEFAULT_SYSFS)]
    sysfs: PathBuf,
    #[command(flatten)]
    verbosity: Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List ivshmem devices and the region header each one carries.
    List {
        /// Print JSON (schema: `ivchan_cli::json`, README "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Print a region's header, rings and sides.
    Inspect {
        /// PCI address (e.g. 0000:00:1f.0); default: the device whose header
        /// carries this VM's UUID.
        #[arg(long)]
        address: Option<String>,
        /// Print JSON (schema: `ivchan_cli::json`, README "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Print the man page (roff; `ivchan-guest man | man -l -`), or write the
    /// pages of ivchan-guest and its subcommands into DIR.
    Man {
        /// Directory to write `ivchan-guest.1` and `ivchan-guest-<subcommand>.1` into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init();
    let result = match cli.command {
        Command::List { json } => list(&cli.sysfs, json),
        Command::Inspect { address, json } => inspect(&cli.sysfs, address, json),
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
            eprintln!("ivchan-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(sysfs: &Path, as_json: bool) -> Result<(), GuestError> {
    let devices = discover(sysfs)?;
    if devices.is_empty() {
        return Err(GuestError::NoDevice {
            root: sysfs.to_path_buf(),
        });
    }
    let this_vm = product_uuid(sysfs);
    if as_json {
        let (this_vm, this_vm_error) = match this_vm {
            Ok(vm) => (Some(vm), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let devices = devices
            .into_iter()
            .map(|device| read_header(device, this_vm.as_ref()).1)
            .collect();
        json::print(
            PROGRAM,
            &json::DeviceList {
                this_vm: this_vm.map(|vm| vm.to_string()),
                this_vm_error,
                devices,
            },
        );
        return Ok(());
    }
    match &this_vm {
        Ok(vm) => say!("this VM   {vm}"),
        Err(e) => say!("this VM   unknown ({e})"),
    }
    for device in devices {
        print_device(&device);
        say!(
            "  header    {}",
            read_header(device, this_vm.as_ref().ok()).0
        );
    }
    Ok(())
}

fn print_device(d: &IvshmemDevice) {
    say!("{}", d.address);
    say!(
        "  device    {:04x}:{:04x} {} {} (subsystem {:04x}:{:04x}, revision {})",
        ivchan_guest::discovery::IVSHMEM_VENDOR,
        ivchan_guest::discovery::IVSHMEM_DEVICE,
        d.vendor_name(),
        d.device_name(),
        d.subsystem_vendor,
        d.subsystem_device,
        d.revision
    );
    say!(
        "  kind      {}  BAR2 {}  enabled {}  memory decoding {}",
        d.kind.as_str(),
        human_size(d.bar2_size),
        if d.enabled { "yes" } else { "no" },
        match d.memory_decoding {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        }
    );
}

/// The header line of `list`, and the device as `--json` reports it; reads
/// BAR2 without enabling the device.
fn read_header(device: IvshmemDevice, this_vm: Option<&VmUuid>) -> (String, json::DeviceReport) {
    let report = json::DeviceReport::new(&device);
    let not_read = |why: String| {
        let report = json::DeviceReport {
            header_error: Some(why.clone()),
            ..report.clone()
        };
        (why, report)
    };
    if !device.readable() {
        return not_read("not read (memory decoding off; `inspect` enables the device)".to_owned());
    }
    let options = MapOptions {
        enable: false,
        ..MapOptions::default()
    };
    let bar = match MappedBar::map(device, &options) {
        Ok(bar) => bar,
        Err(e) => return not_read(format!("not read: {e}")),
    };
    match bar.header() {
        Ok(header) => {
            let report = report.clone().with_header(&header, this_vm);
            let verdict = match report.identity {
                Some("this-vm") => "matches this VM",
                Some("another-vm") => "ANOTHER VM",
                _ => "identity unknown",
            };
            (format!("{}  [{verdict}]", summary(&header)), report)
        }
        Err(e) => not_read(e.to_string()),
    }
}

fn inspect(sysfs: &Path, address: Option<String>, as_json: bool) -> Result<(), GuestError> {
    let selector = address.map_or(Selector::Identity, Selector::Address);
    let bar = select(sysfs, &selector, &MapOptions::default())?;
    if as_json {
        let header = bar.header()?;
        let this_vm = product_uuid(sysfs).ok();
        let report = json::DeviceReport::new(bar.device()).with_header(&header, this_vm.as_ref());
        json::print(PROGRAM, &report);
        return Ok(());
    }
    print_device(bar.device());
    let (wake, why) = ivchan_guest::wake::likely_source(bar.device());
    say!("wakes by  {wake} ({why})");
    let header = bar.header()?;
    match product_uuid(sysfs) {
        Ok(vm) => match bar.check_identity(&header, &vm) {
            Ok(()) => say!("identity  matches this VM ({vm})"),
            Err(e) => say!("identity  MISMATCH: {e}"),
        },
        Err(e) => say!("identity  unknown ({e})"),
    }
    ivchan_cli::emit(PROGRAM, format_args!("{}", describe(&header)));
    Ok(())
}
