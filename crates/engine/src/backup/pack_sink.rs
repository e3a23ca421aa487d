//! A data pack's way to storage, with one piece in flight: the thread that
//! fills the pack seals the next piece while storage takes the last one.
//!
//! OpenDAL's own `concurrent` writes do not serve here: the local backend's
//! positional writer keeps every finished write's buffer until the close
//! (it may buffer up to 8,192 results), so a 16 MiB pack would be held
//! whole and no piece's buffer would come back to the pool.

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::objects::Kind;
use crate::repo::storage_err;
use crate::{Error, Id, Result};

type Written = (opendal::Writer, opendal::Result<()>);

/// Exactly one of `idle` and `busy` holds the writer, except after a write
/// task was lost (a panic, the runtime shutting down).
pub(super) struct PackSink {
    path: String,
    idle: Option<opendal::Writer>,
    busy: Option<JoinHandle<Written>>,
}

impl PackSink {
    pub(super) fn new(pack: Id, writer: opendal::Writer) -> PackSink {
        PackSink { path: Kind::Pack.path(&pack), idle: Some(writer), busy: None }
    }

    /// Once the write before it has ended, start writing the piece `piece`
    /// makes; its failure is reported by the next write or the close. The
    /// piece is made only then, so it can take the buffer that the ended
    /// write let go of.
    pub(super) fn write(&mut self, rt: &Handle, piece: impl FnOnce() -> bytes::Bytes) -> Result<()> {
        rt.block_on(self.settle())?;
        let mut w = self.idle.take().ok_or(Error::Interrupted)?;
        let piece = piece();
        self.busy = Some(rt.spawn(async move {
            let written = w.write(piece).await;
            (w, written)
        }));
        Ok(())
    }

    /// Finish the pack; on failure nothing is left behind.
    pub(super) async fn close(mut self) -> Result<()> {
        let closed = match self.settle().await {
            Ok(w) => w.close().await.map(drop).map_err(storage_err("write", &self.path)),
            Err(e) => Err(e),
        };
        if closed.is_err() {
            self.abort().await;
        }
        closed
    }

    pub(super) async fn abort(mut self) {
        let _ = self.settle().await;
        if let Some(w) = self.idle.as_mut() {
            let _ = w.abort().await;
        }
    }

    /// Wait for the write in flight; the writer is idle afterwards, also
    /// when that write failed (so the pack can still be aborted).
    async fn settle(&mut self) -> Result<&mut opendal::Writer> {
        if let Some(task) = self.busy.take() {
            let (w, written) = task.await.map_err(|_| Error::Interrupted)?;
            self.idle = Some(w);
            written.map_err(storage_err("write", &self.path))?;
        }
        self.idle.as_mut().ok_or(Error::Interrupted)
    }
}

#[cfg(test)]
mod tests {
    use tresor_storage::{Location, StorageOptions};

    use super::*;

    fn sink_at(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> PackSink {
        let op = tresor_storage::open(&Location::Fs(dir.to_path_buf()), &StorageOptions::default()).unwrap();
        PackSink::new(Id([7; 32]), rt.block_on(op.writer("pack")).unwrap())
    }

    /// Each piece is written while the next is made, yet the pack holds
    /// them whole and in order.
    #[test]
    fn pieces_written_in_flight_land_whole_and_in_order() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink_at(&rt, dir.path());
        let mut want = Vec::new();
        for i in 0..64u8 {
            let piece = vec![i; 1000 + usize::from(i) * 37];
            want.extend_from_slice(&piece);
            sink.write(rt.handle(), || piece.into()).unwrap();
        }
        rt.block_on(sink.close()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("pack")).unwrap(), want);
    }

    /// An aborted pack leaves no file behind (the storage's empty `.tmp`
    /// folder stays), also with a write in flight.
    #[test]
    fn an_aborted_pack_leaves_no_file() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink_at(&rt, dir.path());
        for i in 0..3u8 {
            sink.write(rt.handle(), || vec![i; 300_000].into()).unwrap();
        }
        rt.block_on(sink.abort());
        let files = |d: &std::path::Path| std::fs::read_dir(d).map_or(0, |e| e.count());
        assert_eq!((files(dir.path()), files(&dir.path().join(".tmp"))), (1, 0));
    }
}
