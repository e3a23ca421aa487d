//! `restore --to URL`: a data-source snapshot back into a running service.

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::{NodeKind, Repository, Snapshot};

use crate::commands::print_json;
use crate::opts::Global;

/// Stream the snapshot's one file into the target, blob by blob.
pub async fn restore_to(g: &Global, repo: &Repository, snap: &Snapshot, to: &str, flush: bool) -> Result<u8> {
    let root = repo.load_tree(&snap.tree).await?;
    let files: Vec<_> = root.nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
    let [file] = files.as_slice() else {
        bail!("snapshot {} holds {} files at its root; --to takes a snapshot of one data-source stream", snap.id.short(), files.len());
    };
    let mut target = tresor_sources::target_from_url(to)?;
    tokio::task::block_in_place(|| target.begin(file.size, flush))?;
    for id in &file.content {
        let blob = repo.load_blob(id).await?;
        tokio::task::block_in_place(|| target.write(&blob))?;
    }
    let said = tokio::task::block_in_place(|| target.finish())?;
    if g.json {
        print_json(&json!({"snapshot": snap.id, "bytes": file.size, "result": said}))?;
    } else {
        println!("restored {} ({} bytes) from snapshot {}: {said}", file.name, file.size, snap.id.short());
    }
    Ok(0)
}
