//! Synthetic repositories for the index benchmark (bench/index.py): many
//! tiny blobs in valid packs, indexed as a backup indexes them, and one
//! snapshot whose trees reach them all, so that check walks every one and
//! prune keeps every one. Nothing here reads real data, which is what makes
//! 50 M blobs a matter of minutes.

use chrono::Utc;
use std::sync::Arc;

use tokio::task::{JoinError, JoinSet};

use crate::index::{IndexedPack, Unindexed};
use crate::pack::{BlobKind, PackWriter};
use crate::snapshot::SourceInfo;
use crate::tree::{Node, NodeKind, Tree};
use crate::{Id, Repository, Result, Snapshot};

/// About what a backup of 1 MiB chunks puts in a 1 GiB pack... scaled to
/// tiny blobs: the per-pack costs (interned pack ids) then count as they
/// would in a real repository of this many blobs. The default 16 MiB packs
/// hold about 16 such chunks: `blobs_per_pack` measures that too.
pub const BLOBS_PER_PACK: usize = 1000;
const BLOBS_PER_FILE: usize = 10;
const NODES_PER_TREE: usize = 1000;
/// Packs being written at once: each write ends in an fsync, and at 16
/// blobs to a pack one after another they, not the hashing, set the pace.
/// Each is a task of its own: a write that moved on only when the generator
/// polled it spent the storage timeout waiting for the generator.
const IN_FLIGHT: usize = 32;

/// What [`generate`] made.
#[derive(Debug, serde::Serialize)]
pub struct Generated {
    pub snapshot: Id,
    pub blobs: u64,
    pub trees: u64,
    pub packs: u64,
    pub index_files: u64,
}

/// Blobs of one kind on their way into packs and index files.
struct Packer {
    repo: Arc<Repository>,
    kind: BlobKind,
    per_pack: usize,
    writer: Option<PackWriter>,
    in_pack: usize,
    writing: JoinSet<Result<IndexedPack>>,
    indexed: Unindexed,
    packs: u64,
    index_files: u64,
}

impl Packer {
    fn new(repo: &Arc<Repository>, kind: BlobKind, per_pack: usize) -> Packer {
        Packer {
            repo: repo.clone(),
            kind,
            per_pack,
            writer: None,
            in_pack: 0,
            writing: JoinSet::new(),
            indexed: Unindexed::default(),
            packs: 0,
            index_files: 0,
        }
    }

    async fn put(&mut self, plain: &[u8]) -> Result<Id> {
        let crypto = self.repo.crypto();
        let id = crypto.blob_id(plain);
        let target = self.repo.config().pack_target(self.kind);
        let w = self.writer.get_or_insert_with(|| PackWriter::new(self.kind, target));
        w.add(crypto, id, plain.len(), 0, plain);
        self.in_pack += 1;
        if self.in_pack >= self.per_pack || w.len() >= target {
            self.seal().await?;
        }
        Ok(id)
    }

    async fn seal(&mut self) -> Result<()> {
        self.in_pack = 0;
        if let Some(w) = self.writer.take() {
            let (repo, sealed) = (self.repo.clone(), w.finish(self.repo.crypto()));
            self.writing.spawn(async move { repo.save_pack(sealed).await });
            self.packs += 1;
        }
        while let Some(done) = self.writing.try_join_next() {
            self.written(joined(done)?).await?;
        }
        while self.writing.len() >= IN_FLIGHT {
            if let Some(done) = self.writing.join_next().await {
                self.written(joined(done)?).await?;
            }
        }
        Ok(())
    }

    /// An index file lists only packs already written.
    async fn written(&mut self, pack: IndexedPack) -> Result<()> {
        self.indexed.push(pack);
        if self.indexed.due() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.indexed.is_empty() {
            self.repo.save_index(&self.indexed.take()).await?;
            self.index_files += 1;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.seal().await?;
        while let Some(done) = self.writing.join_next().await {
            self.written(joined(done)?).await?;
        }
        self.flush().await
    }
}

/// A write task's result; the generator never aborts one, so only a panic
/// ends one early, and it goes on as the generator's own.
fn joined(done: std::result::Result<Result<IndexedPack>, JoinError>) -> Result<IndexedPack> {
    done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn node(name: String, kind: NodeKind) -> Node {
    Node { name, kind, mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 }, ..Default::default() }
}

async fn put_tree(trees: &mut Packer, nodes: Vec<Node>) -> Result<Id> {
    let mut t = Tree { nodes };
    t.sort();
    trees.put(&t.encode()).await
}

/// Write `blobs` distinct data blobs of 16 bytes into `repo`, `per_pack` to
/// a data pack, and a snapshot tagged `synthetic` whose files (10 blobs
/// each, 1000 to a directory) reference them all.
#[doc(hidden)]
pub async fn generate(repo: &Arc<Repository>, blobs: u64, per_pack: usize) -> Result<Generated> {
    if blobs == 0 || per_pack == 0 {
        return Err(crate::Error::Invalid("a synthetic repository needs at least one blob, and at least one to a pack".into()));
    }
    // A different seed per run: a second generation adds new blobs.
    let seed = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let (mut data, mut trees) = (Packer::new(repo, BlobKind::Data, per_pack), Packer::new(repo, BlobKind::Tree, BLOBS_PER_PACK));
    let (mut level, mut nodes, mut file) = (Vec::new(), Vec::new(), node(String::new(), NodeKind::File));
    let mut tree_count = 0u64;
    for n in 0..blobs {
        let mut plain = [0u8; 16];
        plain[..8].copy_from_slice(&seed.to_le_bytes());
        plain[8..].copy_from_slice(&n.to_le_bytes());
        file.content.push(data.put(&plain).await?);
        file.size += 16;
        if file.content.len() == BLOBS_PER_FILE || n + 1 == blobs {
            file.name = format!("f{n:012}");
            nodes.push(std::mem::replace(&mut file, node(String::new(), NodeKind::File)));
        }
        if nodes.len() == NODES_PER_TREE || (n + 1 == blobs && !nodes.is_empty()) {
            level.push(put_tree(&mut trees, std::mem::take(&mut nodes)).await?);
            tree_count += 1;
        }
    }
    // Directories of directories up to a single root.
    loop {
        let mut up = Vec::new();
        for (c, chunk) in level.chunks(NODES_PER_TREE).enumerate() {
            let dirs = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| Node { subtree: Some(*id), ..node(format!("d{:09}", c * NODES_PER_TREE + i), NodeKind::Dir) });
            up.push(put_tree(&mut trees, dirs.collect()).await?);
            tree_count += 1;
        }
        level = up;
        if level.len() <= 1 {
            break;
        }
    }
    data.finish().await?;
    trees.finish().await?;
    let snap = Snapshot {
        id: Id([0; 32]),
        time: Utc::now().fixed_offset(),
        tree: level[0],
        paths: vec!["/synthetic".into()],
        hostname: crate::hostname(),
        username: crate::username(),
        uid: 0,
        gid: 0,
        tags: vec!["synthetic".into()],
        name: None,
        source: SourceInfo { kind: "synthetic".into(), url: None, consistency: Default::default() },
        parent: None,
        original: None,
        evidence: None,
        excludes: Vec::new(),
        program_version: env!("CARGO_PKG_VERSION").into(),
        summary: None,
        errors: Vec::new(),
    };
    Ok(Generated {
        snapshot: repo.save_snapshot(&snap).await?,
        blobs,
        trees: tree_count,
        packs: data.packs + trees.packs,
        index_files: data.index_files + trees.index_files,
    })
}
