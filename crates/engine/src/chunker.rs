//! Content-defined chunking with a keyed gear table.
//!
//! The cut-point search is FastCDC 2020 (`fastcdc::v2020::cut_gear`), but the
//! gear table is filled from BLAKE3's output stream keyed with a repository
//! secret: without the key, the chunk boundaries (and so the sizes an observer
//! of the storage sees) say nothing about the content.

use std::io::{self, Read};

use fastcdc::v2020::{MASKS, cut_gear};

use crate::config::ChunkerParams;

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

    /// Length of the next chunk at the start of `data`; `data` holds at least
    /// `max` bytes unless it is the end of the stream.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        let p = self.params;
        let (_, n) = cut_gear(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n
    }

    /// Split everything `reader` yields into chunks and hand each to `sink`.
    ///
    /// `buf` is the caller's reusable buffer: at most twice the maximum chunk
    /// size is ever held, whatever the size of the stream, and no more than
    /// `size_hint` + 1 bytes when the stream is known to be small.
    pub fn chunk_stream<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        size_hint: Option<u64>,
        buf: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max as usize;
        let want = size_hint.map_or(2 * max, |h| usize::try_from(h).unwrap_or(usize::MAX).saturating_add(1).min(2 * max));
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let (mut pos, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - pos < max {
                if buf.len() - end < max && pos > 0 {
                    buf.copy_within(pos..end, 0);
                    end -= pos;
                    pos = 0;
                }
                while end < buf.len() {
                    let n = read_retrying(&mut reader, &mut buf[end..])?;
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    end += n;
                }
                if !eof && buf.len() < 2 * max {
                    // The stream is larger than its hint said (a growing file).
                    buf.resize(2 * max, 0);
                    continue;
                }
            }
            if pos == end {
                return Ok(total);
            }
            let n = self.next_cut(&buf[pos..end]);
            sink(&buf[pos..pos + n])?;
            pos += n;
            total += n as u64;
        }
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

    #[test]
    fn the_key_moves_the_boundaries() {
        let p = ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };
        let data = pseudo_random(2 << 20, 2);
        assert_ne!(cuts(&Chunker::new(&[1; 32], p), &data), cuts(&Chunker::new(&[2; 32], p), &data));
    }
}
