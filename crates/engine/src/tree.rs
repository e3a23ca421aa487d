//! Trees and nodes: the directory structure of a snapshot.
//!
//! A tree is one directory's entries, sorted by name, serialised as JSON and
//! stored as a blob; its id is the keyed hash of that JSON, so identical
//! directories are stored once.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    #[default]
    File,
    Dir,
    Symlink,
    /// Block device.
    Dev,
    Chardev,
    Fifo,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    /// base64 of the raw value.
    pub value: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// The name as UTF-8 (lossy if the real name is not UTF-8).
    pub name: String,
    /// base64 of the exact name bytes when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Nanoseconds since the Unix epoch.
    pub mtime: i64,
    pub atime: i64,
    pub ctime: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target_raw: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Files backed up from an object store: the object's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Box<ObjectMeta>>,
}

/// What an object store says about an object, beside its bytes (its size
/// is the node's `size`, its last-modified time the node's `mtime`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub user_metadata: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Unkeyed BLAKE3 of the content as it was read, in hex: what a drill
    /// compares restored bytes with (an ETag is not a content hash once a
    /// multipart upload made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// Store bytes as UTF-8 where possible, with an exact base64 copy otherwise.
fn split_name(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(B64.encode(bytes))),
    }
}

fn join_name(text: &str, raw: &Option<String>) -> OsString {
    match raw.as_ref().and_then(|r| B64.decode(r).ok()) {
        Some(b) => OsString::from_vec(b),
        None => OsString::from(text),
    }
}

impl Node {
    pub fn set_name(&mut self, name: &OsStr) {
        (self.name, self.name_raw) = split_name(name.as_bytes());
    }

    pub fn name_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.name_raw {
            None => std::borrow::Cow::Borrowed(self.name.as_bytes()),
            Some(_) => std::borrow::Cow::Owned(self.os_name().into_vec()),
        }
    }

    pub fn os_name(&self) -> OsString {
        join_name(&self.name, &self.name_raw)
    }

    pub fn set_link_target(&mut self, target: &OsStr) {
        let (t, raw) = split_name(target.as_bytes());
        self.link_target = Some(t);
        self.link_target_raw = raw;
    }

    pub fn os_link_target(&self) -> Option<OsString> {
        self.link_target.as_ref().map(|t| join_name(t, &self.link_target_raw))
    }

    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }

    pub fn is_file(&self) -> bool {
        self.kind == NodeKind::File
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Entries are kept sorted by their name bytes, which makes the encoding
    /// deterministic (identical directories dedup) and lookups binary searches.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name_bytes().cmp(&b.name_bytes()));
    }

    /// Binary search: nodes are sorted by name bytes (see [`Tree::sort`]).
    pub fn find(&self, name: &OsStr) -> Option<&Node> {
        let want = name.as_bytes();
        let i = self.nodes.binary_search_by(|n| n.name_bytes().as_ref().cmp(want)).ok()?;
        Some(&self.nodes[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_survive() {
        let raw = OsStr::from_bytes(b"caf\xe9");
        let mut n = Node::default();
        n.set_name(raw);
        let t = Tree { nodes: vec![n] };
        let back: Tree = serde_json::from_slice(&t.encode()).unwrap();
        assert_eq!(back.nodes[0].os_name(), raw);
        assert!(back.find(raw).is_some());
    }
}
