#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresor_engine::fuzzing::tree(data));
