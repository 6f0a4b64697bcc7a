//! ivchan's host side: the region file of each VM (create, open, check,
//! lock, map), and later channels and many-VM supervision.
//!
//! ```no_run
//! use ivchan_host::{RegionOptions, VmUuid};
//!
//! let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse()?;
//! // /dev/shm/fg_<uuid>, 8 MiB, 0600; QEMU may have created it already.
//! let file = RegionOptions::new().open_or_create(&uuid)?;
//! let header = file.attach_or_init("agent")?;
//! println!("{}", ivchan_protocol::report::describe(&header));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! All `unsafe` code (the mappings) is in [`region_file`].

pub mod region_file;

pub use region_file::{
    list_regions, InspectedRegion, RegionError, RegionFile, RegionOptions, UuidError, VmUuid,
};
