//! libFuzzer entry point; the check is `ivchan_fuzz::header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ivchan_fuzz::header(data));
