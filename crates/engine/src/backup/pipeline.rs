//! One large file (or a stream) on several threads.
//!
//! A single worker reading, chunking, hashing, compressing, encrypting and
//! packing a multi-gigabyte file uses one core however many there are. For
//! such inputs the worker only reads and finds the cut points; packer
//! threads beside it hash each chunk, check it against the index,
//! compress, encrypt and pack it. On incompressible data the two halves
//! cost about the same, but compression makes the packing half several
//! times the reading half (a 2 GiB tar of `/usr/lib`: 9.7 s of user time on
//! 1.2 cores with one packer), so [`PIPELINE_PACKERS`] share it, chunks
//! dealt to whichever is free and put back in order by sequence number.
//! Chunks travel in a fixed set of recycled buffers, read straight into
//! them ([`Chunker::chunk_owned`](crate::chunker::Chunker::chunk_owned)), so
//! memory stays bounded (`PIPELINE_BUFFERS` × the largest chunk and one
//! read) and nothing is allocated or copied whole per chunk. Each packer has
//! its own [`ThreadCtx`] (its own open packs), kept by the worker between
//! files and flushed with the worker's.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::{Receiver, Sender};

use super::{Shared, ThreadCtx};
use crate::pack::BlobKind;
use crate::{Error, Id, Result};

/// Inputs at least this large (or of unknown size) are pipelined; below it
/// a file is a few chunks and a second thread would cost more than it saves.
pub(super) const PIPELINE_MIN: u64 = 16 << 20;

/// Packer threads per pipelined input. Each holds an open pack and a
/// compression buffer, and every worker may be pipelining a file at once,
/// so each one more costs memory times the worker count.
pub(super) const PIPELINE_PACKERS: usize = 2;

/// Chunk buffers between reader and packers: enough that no thread waits
/// for another on an uneven chunk, few enough to bound memory.
const PIPELINE_BUFFERS: usize = 4;

/// A chunk on its way to a packer: its place in the file, its buffer and
/// how much of the buffer it fills.
type Chunk = (usize, Vec<u8>, usize);

impl Shared {
    /// Chunk `reader` with packer threads beside this one; the total size
    /// and the blob ids, in order.
    pub(super) fn chunk_pipelined(&self, ctx: &mut ThreadCtx, reader: impl Read) -> Result<(u64, Vec<Id>)> {
        let mut packers = std::mem::take(&mut ctx.packers);
        while packers.len() < PIPELINE_PACKERS {
            packers.push(ThreadCtx::new(self.repo.config().compression)?);
        }
        let (full_tx, full_rx) = crossbeam_channel::bounded::<Chunk>(PIPELINE_BUFFERS);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            free_tx.send(Vec::new()).expect("room for every buffer");
        }
        let failed = AtomicBool::new(false);
        let (read, packed) = std::thread::scope(|s| {
            // The packers own the only other ends of the channels: when they
            // stop (done, or one failed) the reader's next send or receive
            // fails at once.
            let handles: Vec<_> = packers
                .iter_mut()
                .map(|packer_ctx| {
                    let (full_rx, free_tx, failed) = (full_rx.clone(), free_tx.clone(), &failed);
                    s.spawn(move || self.pack_chunks(packer_ctx, full_rx, free_tx, failed))
                })
                .collect();
            drop((full_rx, free_tx));
            let mut next = 0;
            let read = self.chunker.chunk_owned(
                reader,
                || free_rx.recv().map_err(|_| Error::Interrupted),
                |buf, len| {
                    next += 1;
                    full_tx.send((next - 1, buf, len)).map_err(|_| Error::Interrupted)
                },
            );
            drop(full_tx);
            let packed: Vec<_> = handles.into_iter().map(|h| h.join().expect("a packer thread does not panic")).collect();
            (read, packed)
        });
        ctx.packers = packers;
        // A packer's error explains the reader's `Interrupted`.
        let mut content = Vec::new();
        for ids in packed {
            content.extend(ids?);
        }
        content.sort_unstable_by_key(|&(n, _)| n);
        Ok((read?, content.into_iter().map(|(_, id)| id).collect()))
    }

    /// One packer's share of the chunks, each with its place in the file.
    fn pack_chunks(
        &self,
        ctx: &mut ThreadCtx,
        full: Receiver<Chunk>,
        free: Sender<Vec<u8>>,
        failed: &AtomicBool,
    ) -> Result<Vec<(usize, Id)>> {
        let mut content = Vec::new();
        for (n, buf, len) in full {
            // Another packer failed: stop, so that the channels close.
            if failed.load(Relaxed) {
                break;
            }
            match self.add_blob(ctx, BlobKind::Data, &buf[..len]) {
                Ok(id) => content.push((n, id)),
                Err(e) => {
                    failed.store(true, Relaxed);
                    return Err(e);
                }
            }
            self.progress.bytes.fetch_add(len as u64, Relaxed);
            let _ = free.send(buf);
        }
        Ok(content)
    }
}
