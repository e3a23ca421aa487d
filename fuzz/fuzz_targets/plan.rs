#![no_main]

// The plan (tresor.yaml, or a BackupPlan's spec) as the daemon reads it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tresor_controller::plan::Plan::parse(text, std::path::Path::new("plan.yaml"));
    }
});
