//! The drill of a bucket snapshot: its objects restored into the scratch
//! directory (keys as paths), counted and summed against what the backup
//! listed, and a sample read back against the content hashes the backup
//! recorded (BLAKE3 of the bytes read; an ETag says nothing once a
//! multipart upload made it).

use std::path::Path;

use serde_json::Value;

use crate::child::Tresor;
use crate::model::DrillReport as Report;

pub fn drill_bucket(t: &Tresor, id: &str, target: &Path, point: &Value, r: &mut Report) -> Result<(), String> {
    t.restore_to_dir(id, target)?;
    let (files, bytes) = count(target).map_err(|e| format!("cannot read the restored objects in {}: {e}", target.display()))?;
    r.bytes = bytes;
    let n = |k: &str| point[k].as_u64().unwrap_or(0);
    let want = n("objects") - n("vanished");
    if files != want {
        return Err(format!("{files} objects restored, the backup listed {} and lost {} of them", n("objects"), n("vanished")));
    }
    if n("vanished") + n("changed_count") == 0 && bytes != n("bytes") {
        return Err(format!("{bytes} bytes restored, the backup listed {}", n("bytes")));
    }
    r.checks.push(format!("{files} objects ({bytes} bytes) restored, as the backup listed"));
    let sample = point["sample"].as_array().cloned().unwrap_or_default();
    for s in &sample {
        let (key, path) = (s["key"].as_str().unwrap_or_default(), s["path"].as_str().unwrap_or_default());
        let data = std::fs::read(target.join(path)).map_err(|e| format!("object {key}: cannot read it restored: {e}"))?;
        if blake3::hash(&data).to_hex().as_str() != s["blake3"].as_str().unwrap_or_default() {
            return Err(format!("object {key}: the restored bytes differ from the content hash recorded at backup"));
        }
    }
    r.checks.push(format!("{} sampled objects read back and matched the content hashes recorded at backup", sample.len()));
    Ok(())
}

/// Files and their bytes below `root`.
fn count(root: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                files += 1;
                bytes += md.len();
            }
        }
    }
    Ok((files, bytes))
}
