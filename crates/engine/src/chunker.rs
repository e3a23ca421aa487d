//! Content-defined chunking with a keyed gear table.
//!
//! The cut-point search is FastCDC 2020 (`fastcdc::v2020::cut_gear`), but the
//! gear table is filled from BLAKE3's output stream keyed with a repository
//! secret: without the key, the chunk boundaries (and so the sizes an observer
//! of the storage sees) say nothing about the content.

use std::io::{self, Read};

use fastcdc::v2020::MASKS;

use crate::config::ChunkerParams;

/// The most [`Chunker::chunk_owned`] reads at once: the bytes past a cut are
/// copied, and reads this small keep them to an eighth of a 1 MiB chunk on
/// average (half a read).
const READ_STEP: usize = 256 << 10;

pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub fn new(seed: &[u8; 32], params: ChunkerParams) -> Chunker {
        let mut stream = blake3::Hasher::new_keyed(seed).update(b"gear").finalize_xof();
        let mut gear = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        let mut word = [0u8; 8];
        for i in 0..256 {
            stream.fill(&mut word);
            gear[i] = u64::from_le_bytes(word);
            gear_ls[i] = gear[i] << 1;
        }
        // Normalisation level 1, as FastCDC recommends: sizes cluster around
        // the average without forcing many cuts at the bounds.
        let bits = params.avg.max(256).ilog2() as usize;
        Chunker { gear, gear_ls, params, mask_s: MASKS[bits + 1], mask_l: MASKS[bits - 1] }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Where the search for the next cut starts: FastCDC never cuts before
    /// `min`, so the first pair of bytes it looks at is at `min / 2 * 2`.
    fn search(&self) -> Search {
        Search { hash: 0, pair: self.params.min as usize / 2 }
    }

    /// The cut of a chunk whose first `data.len()` bytes are known (all of
    /// them when `eof`), or `None` while it depends on bytes not read yet.
    /// The search goes on from where `s` left it, so each byte is looked at
    /// once however the chunk arrives, and the cut is the one `cut_gear`
    /// finds in the whole window (§7 of FORMAT.md).
    fn resume(&self, s: &mut Search, data: &[u8], eof: bool) -> Option<usize> {
        let p = self.params;
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        if eof && data.len() <= min {
            return Some(data.len());
        }
        let limit = data.len().min(max);
        // Before `avg` the stricter mask; `cut_gear` narrows that phase to a
        // window shorter than `avg`, which is only ever the stream's end,
        // and there `limit` stops the search at the same pair.
        let cut = s
            .scan(data, (avg / 2).min(limit / 2), self.mask_s, &self.gear, &self.gear_ls)
            .or_else(|| s.scan(data, limit / 2, self.mask_l, &self.gear, &self.gear_ls));
        match cut {
            Some(n) => Some(n),
            None if data.len() >= max => Some(max),
            None if eof => Some(data.len()),
            None => None,
        }
    }

    /// Split everything `reader` yields into chunks and hand each to `sink`.
    ///
    /// `buf` is the caller's reusable buffer. It starts at four average
    /// chunks (or the stream's `size_hint` + 1 bytes, if smaller) and grows
    /// only when one chunk fills it, never past the maximum chunk (and back
    /// when the stream ends): a chunk must be contiguous, but the bytes after
    /// it need not be read yet.
    pub fn chunk_stream<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        size_hint: Option<u64>,
        buf: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max as usize;
        let start = (4 * self.params.avg as usize).min(max);
        let want = size_hint.map_or(start, |h| usize::try_from(h).unwrap_or(usize::MAX).saturating_add(1).min(start));
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let (mut pos, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        let mut search = self.search();
        loop {
            if let Some(n) = self.resume(&mut search, &buf[pos..end], eof) {
                if n == 0 {
                    // A chunk longer than `start` is rare; the next streams
                    // should not all hold the buffer it needed.
                    if buf.len() > start {
                        buf.truncate(start);
                        buf.shrink_to_fit();
                    }
                    return Ok(total);
                }
                sink(&buf[pos..pos + n])?;
                pos += n;
                total += n as u64;
                search = self.search();
                continue;
            }
            if end == buf.len() {
                buf.copy_within(pos..end, 0);
                end -= pos;
                pos = 0;
                if end == buf.len() {
                    // One undecided chunk fills the buffer; it is shorter
                    // than `max`, or `resume` would have cut it.
                    buf.resize((2 * end).max(start).min(max), 0);
                }
            }
            match read_retrying(&mut reader, &mut buf[end..])? {
                0 => eof = true,
                n => end += n,
            }
        }
    }

    /// Split everything `reader` yields into chunks, each read straight into
    /// a buffer of its own from `take` and handed to `sink` with its length.
    ///
    /// For a consumer on another thread: no buffer of this side's, and no
    /// copy of a chunk but the bytes read past its cut, which start the next
    /// buffer (reads of at most [`READ_STEP`] keep those few). A buffer's
    /// length is what was ever zeroed in it, not its content, so a recycled
    /// buffer is not zeroed again.
    pub fn chunk_owned<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        mut take: impl FnMut() -> Result<Vec<u8>, E>,
        mut sink: impl FnMut(Vec<u8>, usize) -> Result<(), E>,
    ) -> Result<u64, E> {
        let (mut cur, mut filled, mut eof, mut total) = (take()?, 0usize, false, 0u64);
        let mut search = self.search();
        loop {
            if let Some(n) = self.resume(&mut search, &cur[..filled], eof) {
                if n == 0 {
                    return Ok(total);
                }
                let (mut next, tail) = (take()?, filled - n);
                if next.len() < tail {
                    next.resize(tail, 0);
                }
                next[..tail].copy_from_slice(&cur[n..filled]);
                sink(cur, n)?;
                total += n as u64;
                (cur, filled) = (next, tail);
                search = self.search();
                continue;
            }
            if cur.len() < filled + READ_STEP {
                cur.resize(filled + READ_STEP, 0);
            }
            match read_retrying(&mut reader, &mut cur[filled..filled + READ_STEP])? {
                0 => eof = true,
                n => filled += n,
            }
        }
    }
}

/// A cut-point search paused at the end of the bytes read so far: the gear
/// hash, and the index of the next pair of bytes (the hash takes two bytes
/// per step, as in `cut_gear`).
struct Search {
    hash: u64,
    pair: usize,
}

impl Search {
    /// Go on up to (not including) pair `until` with `mask` (and `mask << 1`
    /// for a pair's first byte); the cut, if one is found on the way.
    fn scan(&mut self, data: &[u8], until: usize, mask: u64, gear: &[u64; 256], gear_ls: &[u64; 256]) -> Option<usize> {
        if self.pair >= until {
            return None;
        }
        let mask_ls = mask << 1;
        let mut hash = self.hash;
        let first = self.pair;
        for (k, pair) in data[2 * first..2 * until].chunks_exact(2).enumerate() {
            let a = 2 * (first + k);
            hash = (hash << 2).wrapping_add(gear_ls[pair[0] as usize]);
            if hash & mask_ls == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(gear[pair[1] as usize]);
            if hash & mask == 0 {
                return Some(a + 1);
            }
        }
        self.hash = hash;
        self.pair = until;
        None
    }
}

fn read_retrying<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
        out
    }

    fn cuts(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut buf = Vec::new();
        c.chunk_stream::<_, io::Error>(data, Some(1000), &mut buf, |ch| {
            sizes.push(ch.len());
            Ok(())
        })
        .unwrap();
        sizes
    }

    #[test]
    fn sizes_within_bounds_and_boundaries_resync_after_an_insert() {
        let p = ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };
        let c = Chunker::new(&[7; 32], p);
        let data = pseudo_random(4 << 20, 1);
        let sizes = cuts(&c, &data);
        assert_eq!(sizes.iter().sum::<usize>(), data.len());
        assert!(sizes[..sizes.len() - 1].iter().all(|&s| (16 * 1024..=256 * 1024).contains(&s)));
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let later = cuts(&c, &shifted);
        // After the first boundary the chunks line up again: dedup survives inserts.
        assert_eq!(&later[later.len() - 10..], &sizes[sizes.len() - 10..]);
    }

    /// The cuts of `cut_gear` itself, called on the whole rest of the stream
    /// at every step: what FORMAT.md §7 defines.
    fn reference(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let p = c.params;
        let (mut pos, mut sizes) = (0, Vec::new());
        while pos < data.len() {
            let (_, n) = fastcdc::v2020::cut_gear(
                &data[pos..],
                p.min as usize,
                p.avg as usize,
                p.max as usize,
                c.mask_s,
                c.mask_l,
                c.mask_s << 1,
                c.mask_l << 1,
                &c.gear,
                &c.gear_ls,
            );
            sizes.push(n);
            pos += n;
        }
        sizes
    }

    /// A reader that hands out pieces of 1 to `most` bytes, as a pipe or a
    /// slow disk may.
    struct Trickle<'a> {
        data: &'a [u8],
        state: u64,
        most: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = (1 + (self.state >> 33) as usize % self.most).min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_are_cut_gears_however_the_stream_arrives() {
        let p = ChunkerParams { min: 256, avg: 1024, max: 4096 };
        let c = Chunker::new(&[3; 32], p);
        let mut data = pseudo_random(200_000, 3);
        // A run of zeros has no cut point: chunks of exactly `max`.
        data[50_000..70_000].fill(0);
        // Ends of every kind: empty, within `min`, before `avg`, odd, long.
        for len in [0, 1, 255, 256, 257, 700, 1023, 1025, 4095, 4097, 9_999, 50_001, 71_234, 200_000] {
            let data = &data[..len];
            let want = reference(&c, data);
            for (most, hint) in [(1 << 20, Some(len as u64)), (7, None), (300, Some(10)), (5000, Some(1 << 30))] {
                let (mut sizes, mut joined, mut buf) = (Vec::new(), Vec::new(), Vec::new());
                let reader = Trickle { data, state: len as u64, most };
                let total = c
                    .chunk_stream::<_, io::Error>(reader, hint, &mut buf, |ch| {
                        sizes.push(ch.len());
                        joined.extend_from_slice(ch);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!((total, &sizes), (len as u64, &want), "len {len}, reads of <= {most}, hint {hint:?}");
                assert!(joined == data, "len {len}, reads of <= {most}: other bytes than the stream's");
                assert!(buf.len() <= 4096, "the buffer grew to {} bytes", buf.len());
            }
            for most in [7, 300, 1 << 20] {
                // Two buffers taking turns, as the pipeline's recycle them.
                let (mut sizes, mut joined) = (Vec::new(), Vec::new());
                let pool = std::cell::RefCell::new(vec![Vec::new(), Vec::new()]);
                let reader = Trickle { data, state: len as u64, most };
                let take = || Ok(pool.borrow_mut().pop().expect("a buffer is back before the next is taken"));
                let total = c
                    .chunk_owned::<_, io::Error>(reader, take, |b, n| {
                        sizes.push(n);
                        joined.extend_from_slice(&b[..n]);
                        pool.borrow_mut().push(b);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!((total, &sizes), (len as u64, &want), "owned buffers, len {len}, reads of <= {most}");
                assert!(joined == data, "owned buffers, len {len}, reads of <= {most}: other bytes than the stream's");
            }
        }
    }

    #[test]
    fn the_key_moves_the_boundaries() {
        let p = ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };
        let data = pseudo_random(2 << 20, 2);
        assert_ne!(cuts(&Chunker::new(&[1; 32], p), &data), cuts(&Chunker::new(&[2; 32], p), &data));
    }
}
