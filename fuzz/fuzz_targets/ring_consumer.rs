//! libFuzzer entry point; the check is `ivchan_fuzz::ring_consumer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ivchan_fuzz::ring_consumer(data));
