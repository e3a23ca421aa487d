//! Object keys as file names, and back.
//!
//! A key is split at `/`; each piece becomes one name. Most pieces are
//! kept as they are. What a file system cannot hold, or would read as
//! something else, is escaped with `%` and two hex digits: `%` itself
//! (`%25`), NUL (`%00`), and the whole pieces `.` (`%2E`) and `..`
//! (`%2E%2E`). An empty piece (`a//b`, a trailing `/`) is the name `%`. An
//! object named as a directory beside it (`a` and `a/b`) is a file with one
//! more `%` at its end (`a%`), which no escape ends with. So every name is
//! valid on a file system, stays inside its directory, and gives back its
//! key exactly.

use std::ffi::{OsStr, OsString};

/// The names a key (relative to the source's prefix) is stored under.
pub fn key_to_names(key: &str) -> Vec<OsString> {
    key.split('/').map(|piece| OsString::from(encode(piece))).collect()
}

/// The key a path of names was stored from; None if a name is not one
/// [`key_to_names`] makes.
pub fn names_to_key<'a>(names: impl IntoIterator<Item = &'a OsStr>) -> Option<String> {
    let pieces: Option<Vec<String>> = names.into_iter().map(|n| decode(n.to_str()?)).collect();
    Some(pieces?.join("/"))
}

pub fn encode(piece: &str) -> String {
    match piece {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(piece.len());
    for c in piece.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

/// The name a file takes beside a directory of its own name.
pub fn mark_clash(name: &OsStr) -> OsString {
    let mut marked = name.to_os_string();
    marked.push("%");
    marked
}

pub fn decode(name: &str) -> Option<String> {
    let base = match name.strip_suffix('%') {
        Some(rest) if !rest.is_empty() => rest,
        _ => name,
    };
    if base == "%" {
        return Some(String::new());
    }
    let bytes = base.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = base.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_through_safe_names() {
        let keys =
            ["a/b.txt", "../../etc/passwd", "a/./b", "a//b", "dir/", "/lead", "100%/x%2E", "nul\0byte", "ü/日本/ space ", "%", ".", ""];
        for key in keys {
            let names = key_to_names(key);
            for n in &names {
                let b = n.as_encoded_bytes();
                assert!(!matches!(b, b"" | b"." | b"..") && !b.contains(&b'/') && !b.contains(&0), "{key:?} gives {n:?}");
            }
            assert_eq!(names_to_key(names.iter().map(OsString::as_os_str)).as_deref(), Some(key), "{key:?} from {names:?}");
        }
        assert_eq!(key_to_names("../x/"), ["%2E%2E", "x", "%"]);
    }

    #[test]
    fn a_clash_mark_comes_off_again() {
        for piece in ["a", "", "%", "..", "x%25"] {
            let marked = mark_clash(OsStr::new(&encode(piece)));
            assert_ne!(marked, OsString::from(encode(piece)));
            assert_eq!(decode(marked.to_str().unwrap()).as_deref(), Some(piece), "{marked:?}");
        }
        assert_eq!(decode("%zz"), None);
    }
}
