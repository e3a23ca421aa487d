//! One large file (or a stream) on two threads.
//!
//! A single worker reading, chunking, hashing, compressing, encrypting and
//! packing a multi-gigabyte file uses one core however many there are. For
//! such inputs the worker only reads and finds the cut points; a packer
//! thread beside it hashes each chunk, checks it against the index,
//! compresses, encrypts and packs it. The two halves cost about the same.
//! Chunks travel in a fixed set of recycled buffers, read straight into
//! them ([`Chunker::chunk_owned`](crate::chunker::Chunker::chunk_owned)), so
//! memory stays bounded (`PIPELINE_BUFFERS` × the largest chunk and one
//! read) and nothing is allocated or copied whole per chunk. The packer has
//! its own [`ThreadCtx`] (its own open packs), kept by the worker between
//! files and flushed with the worker's.

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;

use super::{Shared, ThreadCtx};
use crate::pack::BlobKind;
use crate::{Error, Id, Result};

/// Inputs at least this large (or of unknown size) are pipelined; below it
/// a file is a few chunks and a second thread would cost more than it saves.
pub(super) const PIPELINE_MIN: u64 = 16 << 20;

/// Chunk buffers between reader and packer: enough that neither waits for
/// the other on an uneven chunk, few enough to bound memory.
const PIPELINE_BUFFERS: usize = 4;

impl Shared {
    /// Chunk `reader` with a packer thread beside this one; the total size
    /// and the blob ids, in order.
    pub(super) fn chunk_pipelined(&self, ctx: &mut ThreadCtx, reader: impl Read) -> Result<(u64, Vec<Id>)> {
        let mut packer_ctx = match ctx.packer.take() {
            Some(p) => p,
            None => Box::new(ThreadCtx::new(self.repo.config().compression)?),
        };
        let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(PIPELINE_BUFFERS);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            free_tx.send(Vec::new()).expect("room for every buffer");
        }
        let (read, packed) = std::thread::scope(|s| {
            let packer_ctx = &mut *packer_ctx;
            // The packer owns its ends of the channels: when it stops (done
            // or failed) the reader's next send or receive fails at once.
            let packer = s.spawn(move || {
                let mut content = Vec::new();
                for (buf, len) in full_rx {
                    content.push(self.add_blob(packer_ctx, BlobKind::Data, &buf[..len])?);
                    self.progress.bytes.fetch_add(len as u64, Relaxed);
                    let _ = free_tx.send(buf);
                }
                Ok::<_, Error>(content)
            });
            let read = self.chunker.chunk_owned(
                reader,
                || free_rx.recv().map_err(|_| Error::Interrupted),
                |buf, len| full_tx.send((buf, len)).map_err(|_| Error::Interrupted),
            );
            drop(full_tx);
            (read, packer.join().expect("the packer thread does not panic"))
        });
        ctx.packer = Some(packer_ctx);
        // The packer's error explains the reader's `Interrupted`.
        let content = packed?;
        Ok((read?, content))
    }
}
