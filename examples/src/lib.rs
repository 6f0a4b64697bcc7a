//! Shared helpers for the ivchan example agents.
