//! libFuzzer entry point; the check is `ivchan_fuzz::qmp_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ivchan_fuzz::qmp_reply(data));
