//! `ivchan-qemu-wrapper`: stands in for `qemu-system-x86_64`, adds the
//! ivchan ivshmem device to VM starts and execs the real QEMU (argv, no shell).
//!
//! Configuration: see `ivchan_provision::wrapper` (IVCHAN_REAL_QEMU etc.).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use ivchan_provision::wrapper::{plan, PassReason, Plan, WrapperConfig};
use ivchan_provision::Spec;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (arg0, args) = match argv.split_first() {
        Some((a0, rest)) => (a0.clone(), rest.to_vec()),
        None => (OsString::from("qemu-system-x86_64"), Vec::new()),
    };
    // A configuration problem must not stop the VM: fall back to passing through.
    let (cfg, valid) = match WrapperConfig::load() {
        Ok(c) => (c, true),
        Err(e) => {
            eprintln!("ivchan-qemu-wrapper: {e}; passing the arguments through unchanged");
            let real_qemu = std::env::var_os("IVCHAN_REAL_QEMU").map(Into::into);
            (
                WrapperConfig {
                    real_qemu,
                    spec: Spec::default(),
                },
                false,
            )
        }
    };
    let real = match cfg.resolve_real_qemu(std::env::current_exe().ok().as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ivchan-qemu-wrapper: {e}");
            return ExitCode::from(127);
        }
    };
    let final_args = if valid {
        match plan(&args, &cfg.spec) {
            Plan::Add(a) => {
                if let Some(w) = cfg.spec.role.warning() {
                    eprintln!("ivchan-qemu-wrapper: {w}");
                }
                a
            }
            Plan::PassThrough(PassReason::NoFreeSlot) => {
                eprintln!("ivchan-qemu-wrapper: every slot of pcie.0 is taken on this q35 machine; set IVCHAN_BUS/IVCHAN_SLOT; passing the arguments through unchanged");
                args
            }
            Plan::PassThrough(_) => args,
        }
    } else {
        args
    };
    let err = Command::new(&real).arg0(arg0).args(final_args).exec();
    eprintln!("ivchan-qemu-wrapper: cannot exec {}: {err}", real.display());
    ExitCode::from(127)
}
