//! What the head of an RDB says of the data set it holds: Redis writes,
//! before the keys of each database, the number of keys the database held
//! when the save forked (`RESIZEDB`). That is the count a restore must
//! load, exactly, where the counts taken before and after the transfer
//! only bound it while the instance's writes go on.

/// The head read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// The head goes on past the bytes given.
    More,
    /// The first database's number, the keys it held at the fork, and how
    /// many of those had a TTL.
    FirstDb { db: u64, keys: u64, expires: u64 },
    /// No database: the data set was empty at the fork.
    Empty,
    /// A head this reader does not follow (a module's data, an RDB older
    /// than `RESIZEDB`): the count is not known from it.
    Unknown,
}

const AUX: u8 = 0xFA;
const MODULE_AUX: u8 = 0xF7;
const FUNCTION: u8 = 0xF5;
const SELECT_DB: u8 = 0xFE;
const RESIZE_DB: u8 = 0xFB;
const EOF: u8 = 0xFF;

/// Read the head of an RDB whose first `bytes` are given.
pub(crate) fn read(bytes: &[u8]) -> Head {
    match first_db(&mut Cursor { bytes, at: 0 }) {
        Ok(head) => head,
        Err(Stop::Short) => Head::More,
        Err(Stop::Unknown) => Head::Unknown,
    }
}

enum Stop {
    Short,
    Unknown,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], Stop> {
        let n = usize::try_from(n).map_err(|_| Stop::Short)?;
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(Stop::Short)?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }

    fn number(&mut self, n: u64) -> Result<u64, Stop> {
        Ok(self.take(n)?.iter().fold(0, |v, &b| (v << 8) | u64::from(b)))
    }

    /// A length: `Err(encoding)` for a string's special encoding.
    fn length(&mut self) -> Result<Result<u64, u8>, Stop> {
        let first = self.byte()?;
        Ok(match first >> 6 {
            0 => Ok(u64::from(first & 0x3F)),
            1 => Ok((u64::from(first & 0x3F) << 8) | u64::from(self.byte()?)),
            2 if first == 0x80 => Ok(self.number(4)?),
            2 if first == 0x81 => Ok(self.number(8)?),
            2 => return Err(Stop::Unknown),
            _ => Err(first & 0x3F),
        })
    }

    fn count(&mut self) -> Result<u64, Stop> {
        self.length()?.map_err(|_| Stop::Unknown)
    }

    /// Step over a module's aux data (Redis Stack's modules write them
    /// before the keys): its id and when-fields, then typed values up to
    /// the module's end mark.
    fn skip_module_aux(&mut self) -> Result<(), Stop> {
        const END: u64 = 0;
        const SIGNED: u64 = 1;
        const UNSIGNED: u64 = 2;
        const FLOAT: u64 = 3;
        const DOUBLE: u64 = 4;
        const STRING: u64 = 5;
        // The module id, then `when` as a typed unsigned value.
        self.count()?;
        if self.count()? != UNSIGNED {
            return Err(Stop::Unknown);
        }
        self.count()?;
        loop {
            match self.count()? {
                END => return Ok(()),
                SIGNED | UNSIGNED => _ = self.count()?,
                FLOAT => _ = self.take(4)?,
                DOUBLE => _ = self.take(8)?,
                STRING => self.skip_string()?,
                _ => return Err(Stop::Unknown),
            }
        }
    }

    /// Step over a string: raw, an integer, or LZF-compressed.
    fn skip_string(&mut self) -> Result<(), Stop> {
        let len = match self.length()? {
            Ok(len) => len,
            Err(0) => 1,
            Err(1) => 2,
            Err(2) => 4,
            Err(3) => {
                let compressed = self.count()?;
                self.count()?;
                compressed
            }
            Err(_) => return Err(Stop::Unknown),
        };
        self.take(len).map(|_| ())
    }
}

fn first_db(c: &mut Cursor) -> Result<Head, Stop> {
    let magic = c.take(9)?;
    if &magic[..5] != b"REDIS" {
        return Err(Stop::Unknown);
    }
    loop {
        match c.byte()? {
            AUX => {
                c.skip_string()?;
                c.skip_string()?;
            }
            FUNCTION => c.skip_string()?,
            MODULE_AUX => c.skip_module_aux()?,
            SELECT_DB => {
                let db = c.count()?;
                if c.byte()? != RESIZE_DB {
                    return Err(Stop::Unknown);
                }
                let keys = c.count()?;
                return Ok(Head::FirstDb { db, keys, expires: c.count()? });
            }
            EOF => return Ok(Head::Empty),
            _ => return Err(Stop::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RDB head as Redis 7 writes it: aux fields (one an encoded
    /// integer, one long enough for a 14-bit length, one compressed), a
    /// function library, a module's aux data, then database 3 with 70,000
    /// keys (a 32-bit length).
    fn head() -> Vec<u8> {
        let mut b = b"REDIS0011".to_vec();
        b.extend([AUX, 9]);
        b.extend(b"redis-ver");
        b.extend([6]);
        b.extend(b"7.0.15");
        b.extend([AUX, 10]);
        b.extend(b"redis-bits");
        b.extend([0xC0, 64]);
        b.extend([AUX, 4]);
        b.extend(b"note");
        b.extend([0x41, 0x2C]);
        b.extend([b'x'; 300]);
        b.extend([AUX, 2]);
        b.extend(b"lz");
        b.extend([0xC3, 3, 20, 1, 2, 3]);
        b.extend([FUNCTION, 5]);
        b.extend(b"#!lua");
        // A module's aux data: id, when (unsigned 2), then an unsigned, a
        // double, a float, a string, the end mark.
        b.extend([MODULE_AUX, 0x81, 1, 2, 3, 4, 5, 6, 7, 8, 2, 2, 2, 7, 4]);
        b.extend([0; 8]);
        b.extend([3, 0, 0, 0, 0, 5, 3]);
        b.extend(b"abc");
        b.extend([0]);
        b.extend([SELECT_DB, 3, RESIZE_DB, 0x80, 0, 1, 0x11, 0x70, 2]);
        b
    }

    #[test]
    fn the_first_database_and_its_keys_at_the_fork() {
        let bytes = head();
        assert_eq!(read(&bytes), Head::FirstDb { db: 3, keys: 70_000, expires: 2 });
        for cut in 0..bytes.len() {
            assert_eq!(read(&bytes[..cut]), Head::More, "cut at {cut}");
        }
    }

    #[test]
    fn an_empty_data_set_and_heads_not_followed() {
        assert_eq!(read(b"REDIS0011\xFA\x01a\x01b\xFF"), Head::Empty);
        assert_eq!(read(b"REDIS0011\xF7\x01\x01\x02\xFF\x09"), Head::Unknown, "a module value of a type Redis does not write");
        assert_eq!(read(b"REDIS0006\xFE\x00\x00\x01a"), Head::Unknown, "no RESIZEDB (Redis before 3.2)");
        assert_eq!(read(b"RDB000011\xFF"), Head::Unknown);
        assert_eq!(read(b"REDIS0011\xFA\xC7"), Head::Unknown, "an encoding Redis does not write");
        assert_eq!(read(b"REDIS0011\xFA\x81\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF"), Head::More, "a length past the end");
    }
}
