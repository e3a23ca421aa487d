//! Large files (and streams) on several threads.
//!
//! A single worker reading, chunking, hashing, compressing, encrypting and
//! packing a multi-gigabyte file uses one core however many there are. For
//! such inputs the worker only reads and finds the cut points; packer
//! threads hash each chunk, check it against the index, compress, encrypt
//! and pack it. On incompressible data the two halves cost about the same,
//! but compression makes the packing half several times the reading half
//! (a 2 GiB tar of `/usr/lib`: 9.7 s of user time on 1.2 cores with one
//! packer), so several packers share it ([`packer_count`]). They serve
//! every worker: a backup has that many packer threads and open packs
//! beside its workers' however many large files are read at once, and when
//! one file ends the packers go on with the others'. Chunks are dealt to whichever packer is
//! free and put back in order by sequence number. Chunks travel in a fixed
//! set of buffers per file, read straight into
//! ([`Chunker::chunk_owned`](crate::chunker::Chunker::chunk_owned)) and
//! handed back with each chunk's id, so memory stays bounded
//! (`PIPELINE_BUFFERS` × the largest chunk and one read, per file being
//! read) and nothing is allocated or copied whole per chunk.

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::{Receiver, Sender};

use super::{Shared, ThreadCtx};
use crate::pack::BlobKind;
use crate::{Error, Id, Result};

/// Inputs at least this large (or of unknown size) are pipelined; below it
/// a file is a few chunks and a second thread would cost more than it saves.
pub(super) const PIPELINE_MIN: u64 = 16 << 20;

/// Packer threads of a backup, shared by its workers: as many as the
/// workers, but no more than the cores, since packing is all CPU (a
/// bucket's backup runs more workers than cores, for its downloads). Each
/// holds an open pack and a compression context once it has packed a chunk.
pub(super) fn packer_count(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    workers.min(cores).max(1)
}

/// The name of a packer thread (at most 15 bytes, Linux's limit).
pub(super) const PACKER_THREAD: &str = "backup-packer";

/// Chunk buffers per file being read: enough that no thread waits for
/// another on an uneven chunk, few enough to bound memory.
const PIPELINE_BUFFERS: usize = 4;

/// A chunk on its way to a packer: its place in its file, its buffer, how
/// much of the buffer it fills, and where the packer reports.
pub(super) struct PackJob {
    n: usize,
    buf: Vec<u8>,
    len: usize,
    done: Sender<Packed>,
}

/// A chunk packed: its place, its id (or why it has none), and its buffer,
/// free for the next chunk.
type Packed = (usize, Result<Id>, Vec<u8>);

/// A packer thread: packs chunks of any file until the workers and the
/// walker are done, then closes its open packs.
pub(super) fn packer(shared: &Shared, jobs: Receiver<PackJob>) {
    let mut ctx = None;
    for PackJob { n, buf, len, done } in jobs {
        let packed = shared.pack_chunk(&mut ctx, &buf[..len]);
        // The file's reader keeps room for every chunk it has out, and one
        // that has gone (its file failed) needs no answer.
        let _ = done.send((n, packed, buf));
    }
    if let Some(mut ctx) = ctx
        && let Err(e) = shared.flush(&mut ctx)
    {
        shared.fail(e);
    }
}

impl Shared {
    /// Chunk `reader`, its chunks packed by the packer threads behind
    /// `jobs`; the total size and the blob ids, in order.
    pub(super) fn chunk_pipelined(&self, jobs: &Sender<PackJob>, reader: impl Read) -> Result<(u64, Vec<Id>)> {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Packed>(PIPELINE_BUFFERS);
        let mut chunks = FileChunks { free: vec![Vec::new(); PIPELINE_BUFFERS], ids: Vec::new(), failure: None, back: 0 };
        let mut sent = 0;
        let read = self.chunker.chunk_owned(
            reader,
            || chunks.take(&done_rx),
            |buf, len| {
                let job = PackJob { n: sent, buf, len, done: done_tx.clone() };
                jobs.send(job).map_err(|_| Error::Interrupted)?;
                sent += 1;
                Ok(())
            },
        );
        // Without this end a packer that died with a chunk would leave the
        // wait below hanging; with it, the wait ends.
        drop(done_tx);
        while chunks.back < sent && chunks.wait(&done_rx) {}
        if chunks.back < sent {
            chunks.failure.get_or_insert(Error::Interrupted);
        }
        // A packer's error explains the reader's `Interrupted`.
        if let Some(e) = chunks.failure {
            return Err(e);
        }
        chunks.ids.sort_unstable_by_key(|&(n, _)| n);
        Ok((read?, chunks.ids.into_iter().map(|(_, id)| id).collect()))
    }

    /// Pack one chunk with this packer's context, made at its first chunk.
    fn pack_chunk(&self, ctx: &mut Option<ThreadCtx>, chunk: &[u8]) -> Result<Id> {
        if ctx.is_none() {
            *ctx = Some(ThreadCtx::new(self.repo.config().compression, None)?);
        }
        let ctx = ctx.as_mut().expect("made above");
        let id = self.add_blob(ctx, BlobKind::Data, chunk)?;
        self.progress.bytes.fetch_add(chunk.len() as u64, Relaxed);
        Ok(id)
    }
}

/// One file's side of the pipeline: its free buffers, the ids of its
/// chunks packed so far, the first error a packer met with one of them.
struct FileChunks {
    free: Vec<Vec<u8>>,
    ids: Vec<(usize, Id)>,
    failure: Option<Error>,
    back: usize,
}

impl FileChunks {
    /// A buffer for the next chunk, once one is free; none once a chunk of
    /// this file failed, so that the reader stops.
    fn take(&mut self, done: &Receiver<Packed>) -> Result<Vec<u8>> {
        if self.free.is_empty() && !self.wait(done) {
            return Err(Error::Interrupted);
        }
        match self.failure {
            Some(_) => Err(Error::Interrupted),
            None => Ok(self.free.pop().expect("a buffer came back")),
        }
    }

    /// Wait for the next packed chunk of this file; false if the packers
    /// are gone.
    fn wait(&mut self, done: &Receiver<Packed>) -> bool {
        let Ok((n, packed, buf)) = done.recv() else {
            return false;
        };
        self.back += 1;
        self.free.push(buf);
        match packed {
            Ok(id) => self.ids.push((n, id)),
            Err(e) => {
                self.failure.get_or_insert(e);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::packer_count;

    #[test]
    fn packers_follow_the_workers_up_to_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(packer_count(1), 1);
        assert_eq!(packer_count(cores), cores);
        assert_eq!(packer_count(cores + 6), cores, "a bucket's extra workers wait on downloads, not on the CPU");
    }
}
