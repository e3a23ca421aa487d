#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresor_sources::fuzzing::k8s_object(data));
