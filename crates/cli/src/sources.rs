//! `restore --to URL`: a data-source snapshot back into a running service.

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::{NodeKind, Repository, Snapshot};
use tresor_sources::Target;

use crate::commands::print_json;
use crate::opts::Global;

/// Restore the snapshot's one stream into the service a URL names.
pub async fn restore_to(g: &Global, repo: &Repository, snap: &Snapshot, to: &str, flush: bool, jobs: usize) -> Result<u8> {
    let mut target = tresor_sources::target_from_url(to, tresor_sources::TargetOptions { jobs })?;
    let (name, size, said) = stream_into(repo, snap, target.as_mut(), flush).await?;
    if g.json {
        print_json(&json!({"snapshot": snap.id, "bytes": size, "result": said}))?;
    } else {
        println!("restored {name} ({size} bytes) from snapshot {}: {said}", snap.id.short());
    }
    Ok(0)
}

/// Stream the snapshot's one file into a target, blob by blob: the file's
/// name and size, and what the target said.
pub async fn stream_into(repo: &Repository, snap: &Snapshot, target: &mut dyn Target, flush: bool) -> Result<(String, u64, String)> {
    let root = repo.load_tree(&snap.tree).await?;
    let files: Vec<_> = root.nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
    let [file] = files.as_slice() else {
        bail!("snapshot {} holds {} files at its root; --to takes a snapshot of one data-source stream", snap.id.short(), files.len());
    };
    tokio::task::block_in_place(|| target.begin(file.size, flush))?;
    for id in &file.content {
        let blob = repo.load_blob(id).await?;
        tokio::task::block_in_place(|| target.write(&blob))?;
    }
    let said = tokio::task::block_in_place(|| target.finish())?;
    Ok((file.name.clone(), file.size, said))
}
