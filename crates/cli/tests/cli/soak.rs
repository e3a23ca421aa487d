//! The crash soak (scripts/soak.sh, docs/RELIABILITY.md) in small, so CI
//! keeps the script working: two rounds of killed commands beside a
//! concurrent backup (and in the second a reader: check and a restore),
//! each followed by check, exact restores of every snapshot and a rerun; then twelve byte flips, each found by
//! `check --read-data`. Seed 9 draws a backup first, so the source's
//! large file goes through the packer pipeline (whether the kill lands
//! inside it depends on timing, so that is reported, not asserted).

use super::*;

#[test]
fn a_short_crash_soak_passes() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/soak.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(["2", "9", "12"])
        .env("TRESOR_BIN", BIN)
        .env("SOAK_DIR", dir.path().join("work"))
        .env_remove("TRESOR_REPOSITORY")
        .env_remove("TRESOR_PASSWORD_FILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a line per round and the summary: {stdout}");
    assert!(lines[..2].iter().all(|l| l.ends_with("snapshots restored, rerun ok")), "{stdout}");
    assert!(lines[0].starts_with("round 1: backup "), "{stdout}");
    let summary = lines[2];
    assert!(summary.starts_with("soak seed 9: 2 rounds, "), "{summary}");
    assert!(summary.contains(", concurrent readers exact: 1, "), "round 2 had a reader beside it: {summary}");
    assert!(summary.contains("; 12 of 12 byte flips found by check --read-data"), "{summary}");
}
