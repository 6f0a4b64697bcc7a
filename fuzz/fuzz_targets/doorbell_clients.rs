//! libFuzzer entry point; the check is `ivchan_fuzz::doorbell_clients`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ivchan_fuzz::doorbell_clients(data));
