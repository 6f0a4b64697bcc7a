//! `ivchan-guest`: list the VM's ivshmem devices and inspect ivchan regions.
//!
//! `list` only reads: it does not enable disabled devices. `inspect` maps
//! BAR2 (enabling the device if needed, as an agent would) and only reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ivchan_cli::say;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List ivshmem devices and the region header each one carries.
    List,
    /// Print a region's header, rings and sides.
    Inspect {
        /// PCI address (e.g. 0000:00:1f.0); default: the device whose header
        /// carries this VM's UUID.
        #[arg(long)]
        address: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => list(&cli.sysfs),
        Command::Inspect { address } => inspect(&cli.sysfs, address),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(sysfs: &Path) -> Result<(), GuestError> {
    let devices = discover(sysfs)?;
    if devices.is_empty() {
        return Err(GuestError::NoDevice {
            root: sysfs.to_path_buf(),
        });
    }
    let this_vm = product_uuid(sysfs);
    match &this_vm {
        Ok(vm) => say!("this VM   {vm}"),
        Err(e) => say!("this VM   unknown ({e})"),
    }
    for device in devices {
        print_device(&device);
        say!("  header    {}", header_line(device, this_vm.as_ref().ok()));
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

fn header_line(device: IvshmemDevice, this_vm: Option<&VmUuid>) -> String {
    if !device.readable() {
        return "not read (memory decoding off; `inspect` enables the device)".to_owned();
    }
    let options = MapOptions {
        enable: false,
        ..MapOptions::default()
    };
    let bar = match MappedBar::map(device, &options) {
        Ok(bar) => bar,
        Err(e) => return format!("not read: {e}"),
    };
    match bar.header() {
        Ok(header) => {
            let found = VmUuid::from_bytes(header.layout().uuid);
            let verdict = match this_vm {
                Some(vm) if *vm == found => "matches this VM",
                Some(_) => "ANOTHER VM",
                None => "identity unknown",
            };
            format!("{}  [{verdict}]", summary(&header))
        }
        Err(e) => e.to_string(),
    }
}

fn inspect(sysfs: &Path, address: Option<String>) -> Result<(), GuestError> {
    let selector = address.map_or(Selector::Identity, Selector::Address);
    let bar = select(sysfs, &selector, &MapOptions::default())?;
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
