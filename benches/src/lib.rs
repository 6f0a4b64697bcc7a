//! The measurement code behind ivchan's benchmarks, shared by the criterion
//! benches (`cargo bench -p ivchan-benches`) and the report runner
//! (`cargo xtask bench-report`, which runs the `bench-report-runner` binary).
//!
//! Every transport is driven through the same two entry points:
//!
//! - [`thread::ThreadBench`]: two pinned threads in one process, one ring
//!   or queue between them (ivchan over a heap region, rtrb, ringbuf,
//!   crossbeam, and [`plain_ring`], ivchan's format without its checks).
//! - [`process::Session`]: this binary re-executed as a pinned child
//!   process; the parent produces, the child consumes or echoes (ivchan over
//!   a real `/dev/shm` region file, Unix socket pair, pipe, TCP loopback,
//!   iceoryx2 with the `iceoryx2` feature).
//!
//! plus the machine's limits in [`limits`]. A binary that uses
//! [`process::Session`] must call [`process::child_main`] first thing in
//! `main`.

pub mod ivchan;
pub mod limits;
pub mod measure;
pub mod pin;
pub mod plain_ring;
pub mod process;
pub mod thread;
pub mod wait;

#[cfg(feature = "iceoryx2")]
pub mod iox;

/// Message sizes measured for throughput, in bytes.
pub const SIZES: &[usize] = &[8, 64, 256, 1024, 4096, 64 * 1024, 1024 * 1024];

/// Message sizes measured for round-trip latency, in bytes.
pub const LATENCY_SIZES: &[usize] = &[64, 4096];

/// Size of every ivchan region used here (in-process and `/dev/shm`).
pub const REGION_SIZE: usize = 16 << 20;

/// Data area of each ivchan ring, and the capacity of every peer queue:
/// room for two 1 MiB messages.
pub const RING_SIZE: usize = 4 << 20;
