//! `ivchan-provision`: give libvirt/QEMU VMs the ivchan ivshmem device.
//!
//! See `provision/README.md` for the operator's guide.

// The doc comments below are the CLI's --help text, where element names
// such as <shmem> must read literally, not as HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ivchan_cli::generate::{self, Shell};
use ivchan_provision::hook::{self, HookConfig, OnRelease, Owner, DEFAULT_CHANNEL_NAME};
use ivchan_provision::qmp::{self, Qmp, VirshMonitor};
use ivchan_provision::spec::{default_region, parse_bus, parse_size, parse_slot, parse_uuid};
use ivchan_provision::virsh::{self, Virsh, DEFAULT_URI};
use ivchan_provision::{fsutil, inject, ArgForm, Error, Model, Result, Role, Route, Spec};

#[derive(Parser)]
#[command(
    name = "ivchan-provision",
    version,
    about = "Give libvirt/QEMU VMs the ivchan ivshmem device, by every route operators use"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add the device to a domain XML file (in place, atomically). Idempotent.
    Inject {
        /// Domain XML file; `-` reads stdin and writes stdout.
        file: PathBuf,
        #[command(flatten)]
        dev: DeviceOpts,
        #[command(flatten)]
        out: OutOpts,
    },
    /// Remove exactly what `inject` added; the original bytes come back.
    Undo {
        /// Domain XML file; `-` reads stdin and writes stdout.
        file: PathBuf,
        #[command(flatten)]
        dev: DeviceOpts,
        #[command(flatten)]
        out: OutOpts,
    },
    /// XML filter for orchestrators: domain XML on stdin, changed XML on stdout.
    Filter {
        /// Remove the device instead of adding it.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Report which routes are in place for a domain XML and whether it is tainted.
    Status {
        /// Domain XML file, or `-` for stdin.
        file: PathBuf,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Change a defined domain through libvirt: dumpxml -> inject -> define (next start).
    Apply {
        /// Domain name, UUID or id.
        domain: String,
        /// Remove the device instead of adding it.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        conn: ConnOpts,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Hotplug the <shmem> device into a running domain (virsh attach-device --live).
    Hotplug {
        /// Domain name, UUID or id.
        domain: String,
        /// Also add it to the persistent definition (--config).
        #[arg(long)]
        config: bool,
        #[command(flatten)]
        conn: ConnOpts,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Hot-add through a QEMU QMP socket (object-add + device_add, confirmed by query-pci).
    Qmp {
        /// The QMP UNIX socket (QEMU's `-qmp unix:PATH,server=on,wait=off`).
        socket: PathBuf,
        /// The VM's UUID (names the region file).
        #[arg(long)]
        uuid: String,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Hot-add through `virsh qemu-monitor-command` (taints the domain: "custom-monitor").
    Monitor {
        /// Domain name, UUID or id.
        domain: String,
        #[command(flatten)]
        conn: ConnOpts,
        #[command(flatten)]
        dev: DeviceOpts,
    },
    /// Run as the libvirt qemu hook (`NAME OP SUBOP EXTRA`, domain XML on stdin).
    Hook {
        #[command(flatten)]
        hook: HookOpts,
        /// Arguments from libvirt: NAME OP SUBOP [EXTRA].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the hook as /etc/libvirt/hooks/qemu.d/ivchan (or .../qemu with --legacy).
    InstallHook {
        #[command(flatten)]
        place: HookPlace,
        /// Replace a hook that was not written by this tool (keeps a .bak).
        #[arg(long)]
        force: bool,
        /// The ivchan-provision binary the hook runs (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        #[command(flatten)]
        hook: HookOpts,
    },
    /// Remove the hook installed by install-hook.
    UninstallHook {
        #[command(flatten)]
        place: HookPlace,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish,
    /// elvish, powershell).
    Completions { shell: Shell },
    /// Print the man page (roff), or write the pages of ivchan-provision
    /// and its subcommands into DIR.
    Man {
        /// Directory to write `ivchan-provision.1` and
        /// `ivchan-provision-<subcommand>.1` into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct DeviceOpts {
    /// Route for XML edits (default: shmem; for undo: whichever route added the device).
    #[arg(long, value_enum)]
    route: Option<RouteArg>,
    /// Device model: ivshmem-plain or ivshmem-doorbell.
    #[arg(long, default_value = "ivshmem-plain")]
    model: String,
    /// master (default): QEMU migrates the region with the guest, so the VM
    /// can be live-migrated; peer: the region stays host-local and QEMU
    /// refuses to migrate the VM.
    #[arg(long, default_value = "master")]
    role: String,
    /// ivshmem server socket (ivshmem-doorbell only).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Interrupt vectors (ivshmem-doorbell only; default 1).
    #[arg(long)]
    vectors: Option<u32>,
    /// Region size, a power of two from 1M to 16G (e.g. 8M, 16M).
    #[arg(long, default_value = "8M")]
    size: String,
    /// PCI bus (default: 0 on i440fx; on q35 a free pcie-root-port, added if none is free).
    #[arg(long)]
    bus: Option<String>,
    /// PCI slot (default: 0x1f on i440fx; slot 0 of the port on q35).
    #[arg(long)]
    slot: Option<String>,
    /// If the slot is taken, pick a free one instead of refusing.
    #[arg(long)]
    pick_free_slot: bool,
    /// Region path; {uuid} is replaced by the domain UUID.
    #[arg(long, default_value_t = default_region())]
    region: String,
    /// Write -object/-device in legacy key=value form instead of JSON.
    #[arg(long)]
    legacy_args: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RouteArg {
    /// libvirt's <shmem> device (recommended).
    Shmem,
    /// <qemu:commandline> passthrough (taints the domain).
    Cmdline,
}

impl DeviceOpts {
    fn spec(&self) -> Result<Spec> {
        let spec = Spec {
            model: Model::parse(&self.model, self.server.clone(), self.vectors)?,
            role: Role::parse(&self.role)?,
            size: parse_size(&self.size)?,
            bus: self.bus.as_deref().map(parse_bus).transpose()?,
            slot: self.slot.as_deref().map(parse_slot).transpose()?,
            pick_free_slot: self.pick_free_slot,
            region: self.region.clone(),
            arg_form: if self.legacy_args {
                ArgForm::Legacy
            } else {
                ArgForm::Json
            },
        };
        spec.validate()?;
        if let Some(w) = spec.role.warning() {
            warn(w);
        }
        Ok(spec)
    }

    /// The route asked for, if any.
    fn route_opt(&self) -> Option<Route> {
        self.route.map(|r| match r {
            RouteArg::Shmem => Route::Shmem,
            RouteArg::Cmdline => Route::Cmdline,
        })
    }

    /// The route to add the device by (default `<shmem>`).
    fn route(&self) -> Route {
        self.route_opt().unwrap_or(Route::Shmem)
    }
}

#[derive(Args, Clone)]
struct OutOpts {
    /// Print the result on stdout instead of rewriting the file.
    #[arg(long)]
    stdout: bool,
    /// Keep the previous content as FILE.bak.
    #[arg(long)]
    backup: bool,
    /// Rewrite the file even if it is read-only (no write permission bits).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Clone)]
struct ConnOpts {
    /// libvirt connection URI.
    #[arg(short = 'c', long = "connect", default_value = DEFAULT_URI)]
    uri: String,
}

#[derive(Args, Clone)]
struct HookPlace {
    /// libvirt's hook directory.
    #[arg(long, default_value = "/etc/libvirt/hooks")]
    hooks_dir: PathBuf,
    /// Use the single /etc/libvirt/hooks/qemu file (libvirt < 6.5) instead of qemu.d/.
    #[arg(long)]
    legacy: bool,
}

#[derive(Args, Clone)]
struct HookOpts {
    /// Region path; its file name must end in {uuid}, replaced by the domain UUID.
    #[arg(long, default_value_t = default_region())]
    region: String,
    /// Region size, a power of two from 1M to 16G.
    #[arg(long, default_value = "8M")]
    size: String,
    /// File mode (octal).
    #[arg(long, default_value = "0660")]
    mode: String,
    /// Owner USER[:GROUP] (names or numbers); default: libvirt-qemu if that user exists.
    #[arg(long)]
    owner: Option<String>,
    /// Channel name written into a new region's header (at most 32 bytes).
    #[arg(long, default_value = DEFAULT_CHANNEL_NAME)]
    name: String,
    /// On `release end`: keep or remove the region file.
    #[arg(long, value_enum, default_value_t = ReleaseArg::Keep)]
    on_release: ReleaseArg,
    /// Let the VM start even when the hook fails (it only logs). By
    /// default the hook fails closed: an unexpected region file (owner,
    /// type, mode, size) or any other error stops the VM's start.
    #[arg(long)]
    fail_open: bool,
    /// Accepted for compatibility: failing closed is the default.
    #[arg(long, hide = true, conflicts_with = "fail_open")]
    strict: bool,
    /// Leave a new region's memory unallocated until the rings touch it. By
    /// default `prepare` allocates the whole region on /dev/shm at once.
    #[arg(long)]
    lazy: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReleaseArg {
    Keep,
    Remove,
}

impl HookOpts {
    fn config(&self) -> Result<HookConfig> {
        let mode = u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                Error::Hook(format!(
                    "invalid mode {:?} (expected octal, e.g. 0660)",
                    self.mode
                ))
            })?;
        let owner = match &self.owner {
            Some(o) => Owner::parse(o)?,
            None => Owner::parse("libvirt-qemu").unwrap_or_default(),
        };
        let spec = Spec {
            size: parse_size(&self.size)?,
            region: self.region.clone(),
            ..Spec::default()
        };
        let cfg = HookConfig {
            spec,
            mode,
            owner,
            name: self.name.clone(),
            on_release: match self.on_release {
                ReleaseArg::Keep => OnRelease::Keep,
                ReleaseArg::Remove => OnRelease::Remove,
            },
            strict: !self.fail_open,
            lazy: self.lazy,
        };
        cfg.region_options()?;
        Ok(cfg)
    }

    /// The same options as command-line words, for the installed script.
    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--region".into(),
            self.region.clone(),
            "--size".into(),
            self.size.clone(),
            "--mode".into(),
            self.mode.clone(),
            "--name".into(),
            self.name.clone(),
            "--on-release".into(),
            match self.on_release {
                ReleaseArg::Keep => "keep".into(),
                ReleaseArg::Remove => "remove".into(),
            },
        ];
        if let Some(o) = &self.owner {
            a.push("--owner".into());
            a.push(o.clone());
        }
        if self.fail_open {
            a.push("--fail-open".into());
        }
        if self.lazy {
            a.push("--lazy".into());
        }
        a
    }
}

fn warn(w: &str) {
    eprintln!("ivchan-provision: warning: {w}");
}

fn read_input(file: &Path) -> Result<String> {
    let mut s = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(Error::io("reading stdin"))?;
    } else {
        s = std::fs::read_to_string(file)
            .map_err(Error::io(format!("reading {}", file.display())))?;
    }
    Ok(s)
}

fn print_stdout(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())
        .and_then(|()| o.flush())
        .map_err(Error::io("writing stdout"))
}

fn edit(file: &Path, dev: &DeviceOpts, out: &OutOpts, undo: bool) -> Result<()> {
    let spec = dev.spec()?;
    let text = read_input(file)?;
    let o = match (undo, dev.route_opt()) {
        (true, Some(route)) => inject::undo(&text, &spec, route)?,
        (true, None) => inject::undo_any(&text, &spec)?,
        (false, _) => inject::inject(&text, &spec, dev.route())?,
    };
    o.warnings.iter().for_each(|w| warn(w));
    let place = o
        .placement
        .as_ref()
        .map(|p| format!(" at {}", p.describe()))
        .unwrap_or_default();
    if file == Path::new("-") || out.stdout {
        if o.changed && !undo && !place.is_empty() {
            eprintln!("ivchan-provision: device{place}");
        }
        return print_stdout(&o.xml);
    }
    if o.changed {
        fsutil::write_atomic_opts(file, o.xml.as_bytes(), out.backup, out.force)?;
        let what = if undo {
            "removed the device from".to_string()
        } else {
            format!("added {}{place} to", dev.route().name())
        };
        eprintln!("ivchan-provision: {what} {}", file.display());
    } else {
        eprintln!("ivchan-provision: {}: nothing to change", file.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Inject { file, dev, out } => edit(&file, &dev, &out, false)?,
        Cmd::Undo { file, dev, out } => edit(&file, &dev, &out, true)?,
        Cmd::Filter { undo, dev } => {
            let out = OutOpts {
                stdout: true,
                backup: false,
                force: false,
            };
            edit(Path::new("-"), &dev, &out, undo)?;
        }
        Cmd::Status { file, dev } => {
            let st = inject::status(&read_input(&file)?, &dev.spec()?)?;
            print_stdout(&st.to_string())?;
        }
        Cmd::Apply {
            domain,
            undo,
            conn,
            dev,
        } => {
            let spec = dev.spec()?;
            let o = virsh::apply(
                &Virsh::new(&conn.uri),
                &domain,
                &spec,
                dev.route_opt(),
                undo,
            )?;
            o.warnings.iter().for_each(|w| warn(w));
            if o.changed {
                let place = o
                    .placement
                    .as_ref()
                    .map(|p| format!(" at {}", p.describe()))
                    .unwrap_or_default();
                if undo {
                    eprintln!("ivchan-provision: removed the device from domain {domain}; it takes effect at the next start");
                } else {
                    eprintln!(
                        "ivchan-provision: defined domain {domain} with {}{place}; it takes effect at the next start (or use `hotplug`)",
                        dev.route().name()
                    );
                }
            } else {
                eprintln!("ivchan-provision: domain {domain}: nothing to change");
            }
        }
        Cmd::Hotplug {
            domain,
            config,
            conn,
            dev,
        } => match virsh::hotplug(&Virsh::new(&conn.uri), &domain, &dev.spec()?, config)? {
            Some(d) => {
                d.warnings.iter().for_each(|w| warn(w));
                eprintln!(
                    "ivchan-provision: attached to {domain} at {}:\n{}",
                    d.placement.describe(),
                    d.xml
                )
            }
            None => eprintln!("ivchan-provision: {domain} already has the device"),
        },
        Cmd::Qmp { socket, uuid, dev } => {
            let spec = dev.spec()?;
            let uuid = parse_uuid(&uuid)?;
            let mut q = Qmp::connect(&socket)?;
            report_hot_add(qmp::hot_add(&mut q, &spec, &uuid)?, &spec);
        }
        Cmd::Monitor { domain, conn, dev } => {
            let spec = dev.spec()?;
            let v = Virsh::new(&conn.uri);
            let uuid = parse_uuid(&v.run(&["domuuid", "--domain", &domain])?)?;
            warn(qmp::TAINT_MONITOR_WARNING);
            let mut m = VirshMonitor { virsh: &v, domain };
            report_hot_add(qmp::hot_add(&mut m, &spec, &uuid)?, &spec);
        }
        Cmd::Hook { hook, args } => return Ok(run_hook(&hook, &args)),
        Cmd::InstallHook {
            place,
            force,
            binary,
            hook,
        } => {
            hook.config()?;
            let bin = match binary {
                Some(b) => b,
                None => {
                    std::env::current_exe().map_err(Error::io("finding this program's path"))?
                }
            };
            let p = hook::install(
                &place.hooks_dir,
                place.legacy,
                force,
                &hook::script(&bin, &hook.to_args()),
            )?;
            eprintln!("ivchan-provision: installed {}; restart libvirtd (or virtqemud) so it sees new hooks", p.display());
        }
        Cmd::UninstallHook { place } => match hook::uninstall(&place.hooks_dir, place.legacy)? {
            Some(p) => eprintln!("ivchan-provision: removed {}", p.display()),
            None => eprintln!("ivchan-provision: no hook installed"),
        },
        Cmd::Completions { shell } => generate::completions::<Cli>("ivchan-provision", shell),
        Cmd::Man { dir } => generate::man::<Cli>("ivchan-provision", dir.as_deref()),
    }
    Ok(ExitCode::SUCCESS)
}

fn report_hot_add(r: qmp::HotAdd, spec: &Spec) {
    let d = &r.device;
    if !r.already_present && d.bus != 0 {
        if let Some(w) = inject::port_window_warning(spec.size) {
            warn(&w);
        }
    }
    if r.already_present {
        eprintln!("ivchan-provision: an ivshmem device is already present at bus {} slot 0x{:02x}; nothing added", d.bus, d.slot);
    } else {
        eprintln!("ivchan-provision: added ivshmem device {} at bus {} slot 0x{:02x} (confirmed by query-pci)", d.qdev_id, d.bus, d.slot);
    }
}

/// The hook fails closed: any error on `prepare` (an unexpected region
/// file, a bad configuration, unreadable XML) exits non-zero with one line
/// on stderr, which libvirt puts in the start's error message; unless
/// `--fail-open`, which only logs.
fn run_hook(opts: &HookOpts, args: &[String]) -> ExitCode {
    // Always drain stdin: libvirt writes the domain XML there.
    let mut xml = String::new();
    let read = std::io::stdin().read_to_string(&mut xml);
    let strict = !opts.fail_open;
    let result = read
        .map_err(Error::io("reading the domain XML from stdin"))
        .and_then(|_| opts.config())
        .and_then(|cfg| hook::run(args, &xml, &cfg));
    match result {
        Ok(Some(msg)) => {
            eprintln!("ivchan-provision hook: {msg}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            if strict {
                eprintln!("ivchan-provision hook: refusing to start the VM: {e}");
                ExitCode::FAILURE
            } else {
                eprintln!(
                    "ivchan-provision hook: error (ignored: --fail-open lets the VM start): {e}"
                );
                ExitCode::SUCCESS
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ivchan-provision: error: {e}");
            ExitCode::FAILURE
        }
    }
}
