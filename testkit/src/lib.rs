//! What ivchan's tests, examples and agents share: the test traffic
//! ([`traffic`]), the checksum it carries ([`checksum`]), re-running the
//! current test binary as a child process ([`child`]), fake sysfs trees
//! for ivshmem discovery ([`sysfs`]), and process measurements and a seeded
//! random stream ([`process`]).
//!
//! Unpublished and free of ivchan crates, so any crate in the workspace may
//! dev-depend on it without a cycle.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod checksum;
pub mod child;
pub mod process;
pub mod sysfs;
pub mod traffic;
