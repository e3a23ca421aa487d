//! Buffers lent to storage and taken back when storage lets go of them.
//!
//! A buffer handed to an OpenDAL writer as `Bytes` may be kept after the
//! write returns: the local backend's writer holds each piece until the
//! next write or the close. A buffer that is freed there and allocated anew
//! for the next piece costs a page fault for every 4 KiB written (large
//! allocations are fresh mappings), which dominated a large file's backup.
//! Lent through [`BufPool::lend`], a buffer comes back to the pool whenever
//! its last holder drops it, and its pages are reused.

use std::sync::{Arc, Mutex};

/// A bounded stack of spare buffers; past `keep`, returned buffers are freed.
pub struct BufPool {
    spare: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufPool {
    pub fn new(keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool { spare: Mutex::new(Vec::with_capacity(keep)), keep })
    }

    /// An empty buffer, one that has been used before where there is one.
    pub fn take(&self) -> Vec<u8> {
        self.spare.lock().expect("not poisoned").pop().unwrap_or_default()
    }

    /// `buf` as `Bytes` that return it here when the last clone is dropped.
    pub fn lend(self: &Arc<Self>, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(Lent { buf, pool: self.clone() })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().expect("not poisoned");
        if spare.len() < self.keep {
            spare.push(buf);
        }
    }
}

struct Lent {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same allocation comes back once every holder has let go.
    #[test]
    fn a_lent_buffer_returns_when_its_last_holder_drops_it() {
        let pool = BufPool::new(2);
        let mut buf = pool.take();
        buf.extend_from_slice(b"piece");
        let at = buf.as_ptr();
        let bytes = pool.lend(buf);
        let kept = bytes.clone();
        drop(bytes);
        assert_eq!(pool.take().capacity(), 0, "still held by a clone");
        assert_eq!(&kept[..], b"piece");
        drop(kept);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len(), again.capacity() >= 5), (at, 0, true));
    }

    /// The pool keeps at most `keep` buffers: memory stays bounded when
    /// more come back than are taken.
    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let pool = BufPool::new(1);
        let lent: Vec<_> = (0..3).map(|_| pool.lend(vec![0u8; 16])).collect();
        drop(lent);
        assert_eq!(pool.take().capacity(), 16);
        assert_eq!(pool.take().capacity(), 0);
    }
}
