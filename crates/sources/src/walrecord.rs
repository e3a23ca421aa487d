//! Reading the records in a WAL segment, as far as the archive needs them:
//! where the valid WAL in it ends, whether it ends in a segment switch, and
//! when its last transaction committed. `wal-push` records these with
//! each segment, so the achieved RPO of a WAL-archiving cluster is known
//! without decrypting WAL again.
//!
//! The layout (PostgreSQL 15, `access/xlog_internal.h`, `xlogrecord.h`):
//! every 8 KiB page starts with a header (24 bytes; 40 on a segment's first
//! page), and records follow one another at 8-byte alignment, spilling over
//! page boundaries. A record is a 24-byte header (total length, xid,
//! previous record's address, info, resource manager, CRC-32C) followed by
//! block references and its main data, which comes last. A commit
//! (`RM_XACT_ID`, `XLOG_XACT_COMMIT` or `_COMMIT_PREPARED`) starts its main
//! data with the commit time: microseconds since 2000-01-01 UTC.
//!
//! Reading stops at the first thing that is not a valid record: a zero
//! length (the rest of the segment is unwritten), a page that is not this
//! segment's, a broken back link or CRC (bytes left over from a recycled
//! segment), or a record that runs past the segment's end.

const SHORT_PAGE_HEADER: usize = 24;
const LONG_PAGE_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// Block ids of the record header's data references (`xlogrecord.h`).
const BLOCK_ID_MAX: u8 = 32;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// PostgreSQL 15's compression bits (PGLZ, LZ4, zstd).
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// What a segment's records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecords {
    /// The WAL position just after the last valid record (8-byte aligned),
    /// or the segment's end when it ends in a switch.
    pub end_lsn: u64,
    /// The segment ends in `XLOG_SWITCH`: nothing more was written to it.
    pub switched: bool,
    /// Commit records in the segment.
    pub commits: u64,
    /// The newest commit's time, in microseconds since the Unix epoch.
    pub last_commit_unix_micros: Option<i64>,
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}

fn u32_at(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(d[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(d: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(d[o..o + 8].try_into().expect("8 bytes"))
}

/// One segment's bytes, read as the stream of record data its pages hold.
struct Pages<'a> {
    data: &'a [u8],
    start_lsn: u64,
    page: usize,
}

impl Pages<'_> {
    /// The size of the header of the page starting at `off`, if the page
    /// is this segment's.
    fn header(&self, off: usize) -> Option<usize> {
        let d = self.data.get(off..off + SHORT_PAGE_HEADER)?;
        if u16_at(d, 0) == 0 || u64_at(d, 8) != self.start_lsn + off as u64 {
            return None;
        }
        Some(if u16_at(d, 2) & XLP_LONG_HEADER != 0 { LONG_PAGE_HEADER } else { SHORT_PAGE_HEADER })
    }

    /// `n` bytes of record data from `pos`, skipping page headers; the
    /// bytes and the position after them. None past the segment's end.
    fn read(&self, mut pos: usize, mut n: usize, out: &mut Vec<u8>) -> Option<usize> {
        while n > 0 {
            if pos.is_multiple_of(self.page) {
                pos += self.header(pos)?;
            }
            let room = self.page - pos % self.page;
            let take = room.min(n);
            out.extend_from_slice(self.data.get(pos..pos + take)?);
            pos += take;
            n -= take;
        }
        Some(pos)
    }

    /// The position of the next record at or after `pos`.
    fn next_record(&self, pos: usize) -> Option<usize> {
        let pos = maxalign(pos);
        if pos.is_multiple_of(self.page) { Some(pos + self.header(pos)?) } else { Some(pos) }
    }
}

/// The length of a record's main data, from its block headers.
fn main_data_len(rec: &[u8]) -> Option<usize> {
    let mut at = RECORD_HEADER;
    loop {
        if at >= rec.len() {
            return Some(0);
        }
        match rec[at] {
            BLOCK_ID_DATA_SHORT => return rec.get(at + 1).map(|&n| usize::from(n)),
            BLOCK_ID_DATA_LONG => return rec.get(at + 1..at + 5).map(|b| u32_at(b, 0) as usize),
            BLOCK_ID_ORIGIN => at += 3,
            BLOCK_ID_TOPLEVEL_XID => at += 5,
            id if id <= BLOCK_ID_MAX => {
                let fork_flags = *rec.get(at + 1)?;
                at += 4;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_info = *rec.get(at + 4)?;
                    at += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & BKPIMAGE_COMPRESSED != 0 {
                        at += 2;
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    at += 12;
                }
                at += 4;
            }
            _ => return None,
        }
    }
}

/// The commit time of a commit record, in microseconds since the Unix epoch.
fn commit_time(rec: &[u8]) -> Option<i64> {
    let (info, rmid) = (rec[16], rec[17]);
    let op = info & XLOG_XACT_OPMASK;
    if rmid != RM_XACT_ID || (op != XLOG_XACT_COMMIT && op != XLOG_XACT_COMMIT_PREPARED) {
        return None;
    }
    let main = rec.len().checked_sub(main_data_len(rec)?)?;
    let time = i64::from_le_bytes(rec.get(main..main + 8)?.try_into().ok()?);
    Some(time + PG_EPOCH_UNIX_MICROS)
}

/// Read a whole segment (`data`, starting at WAL position `start_lsn`).
pub fn read_segment(data: &[u8], start_lsn: u64) -> SegmentRecords {
    let page = if data.len() >= LONG_PAGE_HEADER && u16_at(data, 2) & XLP_LONG_HEADER != 0 { u32_at(data, 36) as usize } else { 8192 };
    let pages = Pages { data, start_lsn, page: page.max(SHORT_PAGE_HEADER * 2) };
    let mut out = SegmentRecords { end_lsn: start_lsn, switched: false, commits: 0, last_commit_unix_micros: None };
    let Some(first) = pages.header(0) else { return out };
    let mut pos = first;
    if u16_at(data, 2) & XLP_FIRST_IS_CONTRECORD != 0 {
        // The tail of a record begun in the previous segment.
        let rem = u32_at(data, 16) as usize;
        let mut skipped = Vec::new();
        let Some(after) = pages.read(pos, rem, &mut skipped) else { return out };
        pos = after;
    }
    let mut prev: Option<u64> = None;
    let mut rec = Vec::new();
    while let Some(at) = pages.next_record(pos) {
        if prev.is_none() {
            // Valid WAL starts here; after a record, it ends where that record ends.
            out.end_lsn = start_lsn + at as u64;
        }
        rec.clear();
        let Some(_) = pages.read(at, RECORD_HEADER, &mut rec) else { break };
        let total = u32_at(&rec, 0) as usize;
        let lsn = start_lsn + at as u64;
        if total < RECORD_HEADER || prev.is_some_and(|p| u64_at(&rec, 8) != p) {
            break;
        }
        rec.clear();
        let Some(after) = pages.read(at, total, &mut rec) else { break };
        if crc32c(crc32c(0, &rec[RECORD_HEADER..]), &rec[..20]) != u32_at(&rec, 20) {
            break;
        }
        if rec[17] == RM_XLOG_ID && rec[16] & 0xF0 == XLOG_SWITCH {
            out.switched = true;
            out.end_lsn = start_lsn + data.len() as u64;
            break;
        }
        if let Some(t) = commit_time(&rec) {
            out.commits += 1;
            out.last_commit_unix_micros = Some(out.last_commit_unix_micros.map_or(t, |o| o.max(t)));
        }
        prev = Some(lsn);
        pos = after;
        out.end_lsn = start_lsn + maxalign(after) as u64;
    }
    out
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli), continued from `crc` as PostgreSQL's
/// `COMP_CRC32C` continues over the record data, then its header.
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 8192;
    const SEG: usize = 4 * PAGE;

    /// A segment at `start` with `records` (rmid, info, main data) laid out
    /// as PostgreSQL lays them: page headers, alignment, spills.
    fn segment(start: u64, records: &[(u8, u8, Vec<u8>)], cont: usize) -> Vec<u8> {
        let mut d = vec![0u8; SEG];
        for p in 0..SEG / PAGE {
            let o = p * PAGE;
            d[o..o + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info = if p == 0 { XLP_LONG_HEADER } else { 0 } | if p == 0 && cont > 0 { XLP_FIRST_IS_CONTRECORD } else { 0 };
            d[o + 2..o + 4].copy_from_slice(&info.to_le_bytes());
            d[o + 8..o + 16].copy_from_slice(&(start + o as u64).to_le_bytes());
        }
        d[16..20].copy_from_slice(&(cont as u32).to_le_bytes());
        d[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        let mut stream = vec![0xEEu8; cont];
        stream.resize(maxalign(LONG_PAGE_HEADER + cont) - LONG_PAGE_HEADER, 0);
        let mut prev = 0u64;
        let mut logical_to_lsn = Vec::new();
        for (rmid, info, main) in records {
            let mut rec = vec![0u8; RECORD_HEADER];
            if main.len() < 256 {
                rec.extend_from_slice(&[BLOCK_ID_DATA_SHORT, main.len() as u8]);
            } else {
                rec.push(BLOCK_ID_DATA_LONG);
                rec.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            rec.extend_from_slice(main);
            let total = rec.len() as u32;
            rec[0..4].copy_from_slice(&total.to_le_bytes());
            rec[16] = *info;
            rec[17] = *rmid;
            logical_to_lsn.push(stream.len());
            rec[8..16].copy_from_slice(&prev.to_le_bytes());
            let crc = crc32c(crc32c(0, &rec[RECORD_HEADER..]), &rec[..20]);
            rec[20..24].copy_from_slice(&crc.to_le_bytes());
            let at = stream.len();
            stream.extend_from_slice(&rec);
            stream.resize(maxalign(stream.len()), 0);
            prev = start + physical(at) as u64;
        }
        // Lay the stream into the pages after their headers.
        let (mut pos, mut i) = (LONG_PAGE_HEADER, 0);
        while i < stream.len() && pos < SEG {
            if pos.is_multiple_of(PAGE) {
                pos += SHORT_PAGE_HEADER;
            }
            d[pos] = stream[i];
            pos += 1;
            i += 1;
        }
        d
    }

    /// Where the `n`th byte of record data lands in a segment.
    fn physical(n: usize) -> usize {
        let first = PAGE - LONG_PAGE_HEADER;
        if n < first {
            LONG_PAGE_HEADER + n
        } else {
            PAGE + (n - first) / (PAGE - SHORT_PAGE_HEADER) * PAGE + SHORT_PAGE_HEADER + (n - first) % (PAGE - SHORT_PAGE_HEADER)
        }
    }

    fn commit(pg_micros: i64) -> (u8, u8, Vec<u8>) {
        let mut main = pg_micros.to_le_bytes().to_vec();
        main.extend_from_slice(&[0u8; 4]);
        (RM_XACT_ID, XLOG_XACT_COMMIT, main)
    }

    const START: u64 = 0x3000000;

    #[test]
    fn the_last_commit_and_the_end_of_valid_wal_are_found() {
        let filler = (0x0A, 0x00, vec![7u8; 10_000]); // spills over two pages
        let recs = [commit(1_000_000), filler.clone(), commit(2_000_000), (0x0A, 0x00, vec![1u8; 30])];
        let seg = segment(START, &recs, 0);
        let got = read_segment(&seg, START);
        assert_eq!(got.commits, 2);
        assert_eq!(got.last_commit_unix_micros, Some(PG_EPOCH_UNIX_MICROS + 2_000_000));
        assert!(!got.switched);
        // Four records: 8 + 10 032 + 8 + 56 bytes of aligned record data after the long header.
        let data = maxalign(24 + 2 + 12) + maxalign(24 + 5 + 10_000) + maxalign(24 + 2 + 12) + maxalign(24 + 2 + 30);
        assert_eq!(got.end_lsn, START + physical(data) as u64);
    }

    #[test]
    fn wal_that_ends_at_a_page_boundary_ends_there_not_after_the_next_header() {
        // One record filling the first page exactly: 8192 - 40 bytes.
        let main = vec![3u8; PAGE - LONG_PAGE_HEADER - RECORD_HEADER - 5];
        let got = read_segment(&segment(START, &[(0x0A, 0x00, main)], 0), START);
        assert_eq!((got.commits, got.end_lsn), (0, START + PAGE as u64));
    }

    #[test]
    fn a_switch_ends_the_segment_and_stale_bytes_after_it_do_not_count() {
        let seg = segment(START, &[commit(5), (RM_XLOG_ID, XLOG_SWITCH, vec![]), commit(9)], 0);
        let got = read_segment(&seg, START);
        assert_eq!((got.switched, got.end_lsn, got.commits), (true, START + SEG as u64, 1));
        assert_eq!(got.last_commit_unix_micros, Some(PG_EPOCH_UNIX_MICROS + 5));
    }

    #[test]
    fn a_continued_record_is_skipped_and_broken_records_end_the_reading() {
        let seg = segment(START, &[commit(3), commit(4)], 100);
        let got = read_segment(&seg, START);
        assert_eq!((got.commits, got.last_commit_unix_micros), (2, Some(PG_EPOCH_UNIX_MICROS + 4)));
        // A flipped bit in the second commit's time: its CRC fails and the
        // valid WAL ends before it.
        let mut bad = seg.clone();
        let second = physical(maxalign(100) + maxalign(24 + 2 + 12) + 26);
        bad[second] ^= 1;
        let got = read_segment(&bad, START);
        assert_eq!((got.commits, got.last_commit_unix_micros), (1, Some(PG_EPOCH_UNIX_MICROS + 3)));
        assert_eq!(got.end_lsn, START + physical(maxalign(100) + maxalign(24 + 2 + 12)) as u64);
        // Another segment's pages are no WAL of this one.
        assert_eq!(read_segment(&seg, START + SEG as u64).commits, 0);
    }

    #[test]
    fn block_references_are_skipped_to_find_the_main_data() {
        let mut rec = vec![0u8; RECORD_HEADER];
        rec[17] = RM_XACT_ID;
        // Block 0 with an image (hole, compressed) and its own relation, then the origin, then main data.
        rec.extend_from_slice(&[0, BKPBLOCK_HAS_IMAGE, 4, 0]);
        rec.extend_from_slice(&[10, 0, 0, 0, BKPIMAGE_HAS_HOLE | 0x04, 2, 0]);
        rec.extend_from_slice(&[0u8; 12 + 4]);
        rec.extend_from_slice(&[BLOCK_ID_ORIGIN, 1, 0, BLOCK_ID_DATA_SHORT, 12]);
        rec.extend_from_slice(&[0u8; 14]);
        rec.extend_from_slice(&77i64.to_le_bytes());
        rec.extend_from_slice(&[0u8; 4]);
        assert_eq!(main_data_len(&rec), Some(12));
        assert_eq!(commit_time(&rec), Some(PG_EPOCH_UNIX_MICROS + 77));
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
    }
}
