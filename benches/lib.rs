//! Shared helpers for the ivchan benchmarks: an in-process region with a
//! header, and the two ends of a ring over it.

use ivchan_protocol::{Header, InitParams, Region};

/// A heap buffer laid out as an ivchan region.
pub struct HeapRegion {
    words: Vec<u64>,
}

impl HeapRegion {
    /// A zeroed region of `size` bytes (a power of two, at least 1 MiB).
    pub fn new(size: usize) -> Self {
        Self {
            words: vec![0u64; size / 8],
        }
    }

    /// Writes a fresh header and returns it.
    pub fn header(&mut self) -> Header<'_> {
        let params = InitParams {
            uuid: [0; 16],
            name: "bench",
            ring_size: None,
        };
        Header::create(Region::from_words(&mut self.words), &params)
            .expect("bench region has a valid size")
    }
}
