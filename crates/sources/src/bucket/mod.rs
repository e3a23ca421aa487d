//! Object-storage buckets as a data source: `bucket+s3://BUCKET/PREFIX`,
//! `bucket+azblob://CONTAINER/PREFIX`, `bucket+gcs://BUCKET/PREFIX`, with
//! the query settings repositories take (`?endpoint=…&region=…`).
//!
//! The bucket is reached through the storage crate's operator for the same
//! URL without `bucket+`, its credentials read as `TRESOR_SOURCE_<NAME>`
//! before `<NAME>` (`TRESOR_SOURCE_AWS_ACCESS_KEY_ID`), so the source and
//! the repository may belong to different accounts. Objects become files
//! (keys as paths, [`names`]) with their metadata on the node; a backup
//! streams the listing ([`list`]) and downloads only what changed since the
//! parent snapshot; a restore writes them back into a bucket ([`restore`]).

mod list;
pub mod names;
mod restore;

use tresor_storage::{Location, Operator, StorageOptions};

use crate::{Error, ErrorKind, Result};

pub use list::{Listing, ListingReport};
pub use restore::{BucketRestore, RestoreReport, restore_into};

/// The kind a bucket snapshot records.
pub const KIND: &str = "bucket";
const SCHEME: &str = "bucket+";
/// Where a source's credentials are looked up first.
pub const ENV_PREFIX: &str = "TRESOR_SOURCE_";

/// Whether a URL names a bucket source or target.
pub fn is_bucket(url: &str) -> bool {
    url.starts_with(SCHEME)
}

/// An opened bucket: its location (printable, no secrets) and operator,
/// rooted at the prefix.
pub struct Bucket {
    pub location: Location,
    pub op: Operator,
}

impl Bucket {
    /// `bucket+s3://…` and the like; `storage` brings the timeout and
    /// limits the repository uses, its credentials prefix is replaced.
    pub fn open(url: &str, storage: &StorageOptions) -> Result<Bucket> {
        let rest = url.strip_prefix(SCHEME).ok_or_else(|| Error::Unknown(url.to_string()))?;
        let location = Location::parse(rest).map_err(|e| Error::failed(url_name(url), e))?;
        if !matches!(location, Location::S3 { .. } | Location::Azblob { .. } | Location::Gcs { .. }) {
            return Err(Error::failed(url_name(url), "a bucket source is bucket+s3://, bucket+azblob:// or bucket+gcs://"));
        }
        let options = StorageOptions { env_prefix: Some(ENV_PREFIX), faults: None, ..storage.clone() };
        let op = tresor_storage::open(&location, &options).map_err(|e| Error::failed(format!("bucket+{location}"), e))?;
        Ok(Bucket { location, op })
    }

    /// The URL as snapshots and messages show it.
    pub fn name(&self) -> String {
        format!("bucket+{}", self.location)
    }

    fn error(&self, e: opendal::Error) -> Error {
        Error::of(kind_of(&e), self.name(), e)
    }
}

/// Up to the query string, which is noise, and without a password in the
/// user part (which `Location::parse` refuses, naming the URL this way).
fn url_name(url: &str) -> String {
    tresor_storage::without_password(url.split('?').next().unwrap_or(url))
}

/// A refused login is the credentials' fault; what no retry overcame is
/// an outage; the rest (a missing bucket) needs a person.
fn kind_of(e: &opendal::Error) -> ErrorKind {
    match e.kind() {
        opendal::ErrorKind::PermissionDenied => ErrorKind::Auth,
        opendal::ErrorKind::NotFound | opendal::ErrorKind::ConfigInvalid => ErrorKind::Other,
        _ => ErrorKind::Unreachable,
    }
}
