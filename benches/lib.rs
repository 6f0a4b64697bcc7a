//! Shared helpers for the ivchan benchmarks.
