//! Give QEMU/libvirt VMs the ivchan ivshmem device, by every route operators use.
//!
//! The library behind the `ivchan-provision` CLI and the `ivchan-qemu-wrapper`
//! binary. The XML routes are pure functions over the document text:
//!
//! ```
//! use ivchan_provision::{inject, undo, Route, Spec};
//!
//! let xml = "<domain type='kvm'>\n  <uuid>6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b</uuid>\n  <devices>\n  </devices>\n</domain>\n";
//! let spec = Spec::default(); // ivshmem-plain, 8 MiB, bus 0 slot 0x1f, /dev/shm/fg_<uuid>
//! let added = inject(xml, &spec, Route::Shmem)?;
//! assert!(added.xml.contains("<shmem name='fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b'>"));
//! // Idempotent, and undo restores the original bytes.
//! assert!(!inject(&added.xml, &spec, Route::Shmem)?.changed);
//! assert_eq!(undo(&added.xml, &spec, Route::Shmem)?.xml, xml);
//! # Ok::<(), ivchan_provision::Error>(())
//! ```
//!
//! Routes (see `provision/README.md` for the operator's guide):
//!
//! 1. `<shmem>` in the domain XML — [`inject()`] with [`Route::Shmem`].
//! 2. `<qemu:commandline>` — [`inject()`] with [`Route::Cmdline`] (taints the domain).
//! 3. XML filter (stdin → stdout) — the same functions, driven by the CLI.
//! 4. A defined or running domain through `virsh` — [`virsh`].
//! 5. The QEMU monitor, over QMP or `virsh qemu-monitor-command` — [`qmp`].
//! 6. A libvirt hook that prepares the region file — [`hook`], with the host
//!    crate's [`RegionFile`](ivchan_host::RegionFile).
//! 7. A QEMU wrapper binary — [`wrapper`].
//! 8. An `LD_PRELOAD` `execve` shim — the separate `ivchan-preload` crate.

#![warn(missing_docs)]

pub mod error;
pub mod fsutil;
pub mod hook;
pub mod inject;
pub mod qmp;
pub mod spec;
pub mod virsh;
pub mod wrapper;
pub mod xml;

pub use error::{Error, Result};
pub use inject::{inject, status, undo, Outcome, Route, Status};
pub use ivchan_protocol::VmUuid;
pub use spec::{ArgForm, Model, Spec};
