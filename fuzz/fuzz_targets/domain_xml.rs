//! libFuzzer entry point; the check is `ivchan_fuzz::domain_xml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ivchan_fuzz::domain_xml(data));
