//! `%XX` escapes in the user, password, host and path of connection URLs,
//! undone strictly: a bad escape is an error, as libpq makes it, never
//! text passed on as it stands.

/// Undo `%XX` escapes, as libpq does in every part of a URL (and Redis
/// clients in a URL's user part).
pub(crate) fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_are_undone_and_bad_ones_refused() {
        assert_eq!(decode("p%40ss%2Fw%3Ad"), Ok("p@ss/w:d".into()));
        assert_eq!(decode("caf%C3%A9"), Ok("café".into()));
        assert_eq!(decode("100%"), Err("a bad %-escape".into()));
        assert_eq!(decode("%zz"), Err("a bad %-escape".into()));
        assert_eq!(decode("%FF"), Err("a %-escape that is not UTF-8".into()));
    }
}
