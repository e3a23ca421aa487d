#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresor_sources::fuzzing::wal_segment(data));
