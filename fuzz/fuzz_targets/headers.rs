#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_fuzz::headers(data));
