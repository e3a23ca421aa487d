//! Repository locations: a local path or a backend URL.

use std::fmt;
use std::path::PathBuf;

use opendal::{Operator, services};

use crate::StorageError;
use crate::octet::OctetStreamLayer;
use crate::sftp::{HostKeyCheck, SftpSettings};

/// Where a repository lives. Credentials are never part of this value: they
/// come from the environment when the operator is built, so printing or
/// logging a location can never leak a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Fs(PathBuf),
    S3 { bucket: String, root: String, endpoint: Option<String>, region: Option<String> },
    Azblob { container: String, root: String },
    Gcs { bucket: String, root: String, endpoint: Option<String>, predefined_acl: Option<String>, storage_class: Option<String> },
    Webdav { endpoint: String, root: String },
    Sftp { endpoint: String, user: Option<String>, root: String },
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Fs(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, root, .. } => write!(f, "s3://{bucket}{root}"),
            Location::Azblob { container, root } => write!(f, "azblob://{container}{root}"),
            Location::Gcs { bucket, root, .. } => write!(f, "gcs://{bucket}{root}"),
            Location::Webdav { endpoint, root } => write!(f, "webdav {endpoint}{root}"),
            Location::Sftp { endpoint, root, .. } => write!(f, "sftp://{endpoint}{root}"),
        }
    }
}

impl Location {
    /// Parse `s3://bucket/prefix?endpoint=URL&region=R`, `azblob://container/prefix`,
    /// `gcs://bucket/prefix?endpoint=URL&predefined_acl=A&storage_class=C`, `webdav://host/path` (`webdavs://` for TLS),
    /// `sftp://[user@]host[:port]/path`, or else a local path.
    pub fn parse(text: &str) -> Result<Location, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidLocation { location: without_password(text), reason: reason.to_string() };
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err(invalid("empty location"));
            }
            return Ok(Location::Fs(PathBuf::from(text)));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) => (h.to_string(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_string(), "/".to_string()),
        };
        if host.is_empty() {
            return Err(invalid("missing bucket or host after the scheme"));
        }
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        let root = if path == "/" { "/".to_string() } else { format!("{path}/") };
        if let Some(hint) = credentials_hint(scheme, &host, without_password(text) != text) {
            return Err(invalid(&format!("put credentials in {hint}, not in the URL")));
        }
        match scheme {
            "s3" => Ok(Location::S3 { bucket: host, root, endpoint: param("endpoint"), region: param("region") }),
            "azblob" => Ok(Location::Azblob { container: host, root }),
            "gcs" | "gs" => Ok(Location::Gcs {
                bucket: host,
                root,
                endpoint: param("endpoint"),
                predefined_acl: param("predefined_acl"),
                storage_class: param("storage_class"),
            }),
            "webdav" => Ok(Location::Webdav { endpoint: format!("http://{host}"), root }),
            "webdavs" => Ok(Location::Webdav { endpoint: format!("https://{host}"), root }),
            "sftp" => {
                let (user, endpoint) = match host.split_once('@') {
                    Some((u, h)) => (Some(u.to_string()), h.to_string()),
                    None => (None, host),
                };
                Ok(Location::Sftp { endpoint, user, root })
            }
            "file" => Ok(Location::Fs(PathBuf::from(format!("/{}{}", host, path)))),
            other => Err(invalid(&format!("unknown scheme {other:?} (supported: a path, s3, azblob, gcs, webdav, webdavs, sftp)"))),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Location::Fs(_) => "fs",
            Location::S3 { .. } => "s3",
            Location::Azblob { .. } => "azblob",
            Location::Gcs { .. } => "gcs",
            Location::Webdav { .. } => "webdav",
            Location::Sftp { .. } => "sftp",
        }
    }

    /// The local path of an `fs` repository.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Location::Fs(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn operator(&self, p: &str, timeout: std::time::Duration) -> Result<Operator, StorageError> {
        let built = match self {
            Location::Fs(path) => {
                let root = path.to_string_lossy().to_string();
                // Writes land in a temp file and are renamed into place, so a
                // killed process never leaves a truncated object under its final name.
                let tmp = path.join(".tmp").to_string_lossy().to_string();
                build(services::Fs::default().root(&root).atomic_write_dir(&tmp))
            }
            Location::S3 { bucket, root, endpoint, region } => build(s3_builder(p, bucket, root, endpoint, region)),
            Location::Azblob { container, root } => {
                let mut b = services::Azblob::default().container(container).root(root);
                if let Some(v) = env(p, "AZURE_STORAGE_ACCOUNT") {
                    b = b.account_name(&v).endpoint(&format!("https://{v}.blob.core.windows.net"));
                }
                if let Some(v) = env(p, "AZURE_STORAGE_KEY") {
                    b = b.account_key(&v);
                }
                if let Some(v) = env(p, "AZURE_STORAGE_ENDPOINT") {
                    b = b.endpoint(&v);
                }
                build(b)
            }
            Location::Gcs { bucket, root, endpoint, predefined_acl, storage_class } => {
                let gcs = GcsSettings { bucket, root, endpoint, predefined_acl, storage_class };
                build(gcs_builder(p, &gcs).map_err(|reason| self.invalid_setting(reason))?).map(|op| op.layer(OctetStreamLayer))
            }
            Location::Webdav { endpoint, root } => {
                let mut b = services::Webdav::default().endpoint(endpoint).root(root);
                if let Some(v) = env(p, "TRESOR_WEBDAV_USER") {
                    b = b.username(&v);
                }
                if let Some(v) = env(p, "TRESOR_WEBDAV_PASSWORD") {
                    b = b.password(&v);
                }
                build(b)
            }
            Location::Sftp { endpoint, user, root } => {
                return Ok(crate::sftp::operator(self.sftp_settings(p, endpoint, user, root, timeout)?));
            }
        };
        built.map_err(|source| StorageError::Setup { scheme: self.scheme(), location: self.to_string(), source: Box::new(source) })
    }
}

impl Location {
    fn invalid_setting(&self, reason: String) -> StorageError {
        StorageError::Setup {
            scheme: self.scheme(),
            location: self.to_string(),
            source: Box::new(opendal::Error::new(opendal::ErrorKind::ConfigInvalid, reason).with_operation("setup")),
        }
    }

    fn sftp_settings(
        &self,
        p: &str,
        endpoint: &str,
        user: &Option<String>,
        root: &str,
        timeout: std::time::Duration,
    ) -> Result<SftpSettings, StorageError> {
        let setup = |reason: String| self.invalid_setting(reason);
        let (host, port) = split_port(endpoint).ok_or_else(|| setup(format!("cannot read the port in {endpoint:?}")))?;
        let check_text = env(p, "TRESOR_SFTP_HOST_KEY_CHECK").unwrap_or_default();
        let check = HostKeyCheck::parse(&check_text)
            .ok_or_else(|| setup(format!("TRESOR_SFTP_HOST_KEY_CHECK={check_text:?} is not one of strict, accept-new, off")))?;
        // `/~/dir` names a directory under the login directory; any other path
        // is absolute, as the server (or its chroot) sees it.
        let root = match root.strip_prefix("/~/") {
            Some(rel) => rel.to_string(),
            None => root.to_string(),
        };
        Ok(SftpSettings {
            host,
            port,
            user: user.clone(),
            key: env(p, "TRESOR_SFTP_KEY"),
            known_hosts: env(p, "TRESOR_SFTP_KNOWN_HOSTS"),
            check,
            root,
            timeout,
        })
    }
}

/// Where a scheme's credentials come from, when the URL's user part carries
/// any: a password for every scheme (it would be quoted in each error and
/// audit entry), and for the buckets and WebDAV any user part at all (a
/// bucket name cannot hold `@`; WebDAV's user is read from the environment
/// too). An sftp user without a password is the login name and stays.
fn credentials_hint(scheme: &str, host: &str, password: bool) -> Option<&'static str> {
    if !password && !host.contains('@') {
        return None;
    }
    let hint = match scheme {
        "s3" => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "azblob" => "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY",
        "gcs" | "gs" => "GOOGLE_APPLICATION_CREDENTIALS",
        "webdav" | "webdavs" => "TRESOR_WEBDAV_USER and TRESOR_WEBDAV_PASSWORD",
        "sftp" if password => "TRESOR_SFTP_KEY",
        _ => return None,
    };
    Some(hint)
}

/// `host`, `host:port`, `[v6addr]` or `[v6addr]:port`.
fn split_port(endpoint: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        return match tail.strip_prefix(':') {
            Some(port) => Some((host.to_string(), Some(port.parse().ok()?))),
            None if tail.is_empty() => Some((host.to_string(), None)),
            None => None,
        };
    }
    match endpoint.split_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((endpoint.to_string(), None)),
    }
}

fn build<B: opendal::Builder>(builder: B) -> opendal::Result<Operator> {
    Ok(Operator::new(builder)?.finish())
}

/// A setting from the environment: `<prefix><name>` first, then `<name>`.
impl Location {
    /// The server an HTTP backend talks to, as its builder is given it
    /// (`None`: the service's own default, or no server at all).
    pub(crate) fn endpoint(&self, p: &str) -> Option<String> {
        match self {
            Location::S3 { endpoint, .. } => {
                endpoint.clone().or_else(|| env(p, "AWS_ENDPOINT_URL_S3")).or_else(|| env(p, "AWS_ENDPOINT_URL"))
            }
            Location::Azblob { .. } => env(p, "AZURE_STORAGE_ENDPOINT")
                .or_else(|| env(p, "AZURE_STORAGE_ACCOUNT").map(|a| format!("https://{a}.blob.core.windows.net"))),
            Location::Gcs { endpoint, .. } => endpoint.clone(),
            Location::Webdav { endpoint, .. } => Some(endpoint.clone()),
            Location::Fs(_) | Location::Sftp { .. } => None,
        }
    }
}

fn env(prefix: &str, name: &str) -> Option<String> {
    let get = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    (!prefix.is_empty()).then(|| get(&format!("{prefix}{name}"))).flatten().or_else(|| get(name))
}

struct GcsSettings<'a> {
    bucket: &'a str,
    root: &'a str,
    endpoint: &'a Option<String>,
    predefined_acl: &'a Option<String>,
    storage_class: &'a Option<String>,
}

/// Credentials come from `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
/// application default credentials, else the metadata server (a GCE VM or
/// GKE workload identity). Google's own clients treat
/// `STORAGE_EMULATOR_HOST` as an emulator that wants no credentials; so
/// does tresor, unless a credentials file is given.
fn gcs_builder(p: &str, s: &GcsSettings) -> Result<services::Gcs, String> {
    let mut b = services::Gcs::default().bucket(s.bucket).root(s.root);
    let emulator = env(p, "STORAGE_EMULATOR_HOST").map(|h| if h.contains("://") { h } else { format!("http://{h}") });
    if let Some(e) = s.endpoint.clone().or_else(|| emulator.clone()) {
        b = b.endpoint(&e);
    }
    match env(p, "GOOGLE_APPLICATION_CREDENTIALS") {
        Some(path) => {
            check_gcs_credentials(&path)?;
            b = b.credential_path(&path);
        }
        None if emulator.is_some() => b = b.allow_anonymous().disable_vm_metadata().disable_config_load(),
        None => {}
    }
    if let Some(acl) = s.predefined_acl {
        b = b.predefined_acl(acl);
    }
    if let Some(class) = s.storage_class {
        b = b.default_storage_class(class);
    }
    Ok(b)
}

/// OpenDAL skips a credentials file it cannot read and falls back to the
/// metadata server, which would turn a typo into a confusing error later.
fn check_gcs_credentials(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read GOOGLE_APPLICATION_CREDENTIALS={path}: {e}"))?;
    let typed = text.trim_start().starts_with('{') && text.contains("\"type\"");
    if !typed {
        return Err(format!("GOOGLE_APPLICATION_CREDENTIALS={path} is not a Google credentials file (JSON with a \"type\")"));
    }
    Ok(())
}

fn s3_builder(p: &str, bucket: &str, root: &str, endpoint: &Option<String>, region: &Option<String>) -> services::S3 {
    let mut b = services::S3::default().bucket(bucket).root(root);
    if let Some(e) = endpoint.clone().or_else(|| env(p, "AWS_ENDPOINT_URL_S3")).or_else(|| env(p, "AWS_ENDPOINT_URL")) {
        b = b.endpoint(&e);
    }
    let region = region.clone().or_else(|| env(p, "AWS_REGION")).or_else(|| env(p, "AWS_DEFAULT_REGION"));
    b = b.region(region.as_deref().unwrap_or("us-east-1"));
    if let (Some(k), Some(s)) = (env(p, "AWS_ACCESS_KEY_ID"), env(p, "AWS_SECRET_ACCESS_KEY")) {
        b = b.access_key_id(&k).secret_access_key(&s);
        if let Some(t) = env(p, "AWS_SESSION_TOKEN") {
            b = b.session_token(&t);
        }
    }
    b
}

/// `text` with the password of a URL's user part shown as `***`. The user
/// part ends at the last `@` of the text, not the first one before the
/// path: a password may hold `/`, `?` or `#` (an AWS secret key often holds
/// `/`), and showing too little of a URL is safe where too much is not.
pub fn without_password(text: &str) -> String {
    let Some(start) = text.find("://").map(|s| s + 3) else { return text.to_string() };
    match text[start..].rfind('@').map(|at| start + at) {
        Some(at) => match text[start..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &text[..start], &text[at..]),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

/// A URL without its secrets: the password in its user part and the values
/// of credential-like query parameters (`token=`, `password=`,
/// `X-Amz-Signature=`, …) shown as `***`: for every message, log line and
/// record that names a URL.
pub fn redact(url: &str) -> String {
    let url = without_password(url);
    let Some(s) = url.find("://").map(|s| s + 3) else { return url };
    match url[s..].split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query.split('&').map(redact_param).collect();
            format!("{}{path}?{}", &url[..s], params.join("&"))
        }
        None => url,
    }
}

/// `name=value`, its value `***` when the name says it is a credential. Not
/// `key` or `secret` alone: an etcd URL's `key` names a file, a `pvc://`
/// URL's `secret` a Kubernetes Secret.
fn redact_param(param: &str) -> String {
    const PARTS: [&str; 9] = ["password", "passwd", "token", "apikey", "api_key", "signature", "credential", "secret_key", "access_key"];
    const NAMES: [&str; 6] = ["pass", "pwd", "sig", "auth", "authorization", "client_secret"];
    match param.split_once('=') {
        Some((name, _)) => {
            let n = name.to_ascii_lowercase().replace('-', "_");
            if PARTS.iter().any(|p| n.contains(p)) || NAMES.contains(&n.as_str()) { format!("{name}=***") } else { param.to_string() }
        }
        None => param.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_refused_for_its_credentials_is_quoted_without_the_password() {
        let err = Location::parse("webdavs://backup:hunter2@dav.example/repo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid repository location \"webdavs://backup:***@dav.example/repo\": \
             put credentials in TRESOR_WEBDAV_USER and TRESOR_WEBDAV_PASSWORD, not in the URL"
        );
        assert!(!format!("{err:?}").contains("hunter2"));
        let aws = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";
        let cases = [
            ("s3://key:hunter2@bucket/prefix", "s3://key:***@bucket/prefix", aws),
            ("s3://key@bucket", "s3://key@bucket", aws),
            ("sftp://backup:hunter2@far:2222/~/repo", "sftp://backup:***@far:2222/~/repo", "TRESOR_SFTP_KEY"),
            ("gs://k:hunter2@bkt", "gs://k:***@bkt", "GOOGLE_APPLICATION_CREDENTIALS"),
            ("azblob://acct:hunter2@container/x", "azblob://acct:***@container/x", "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"),
            // A secret key holding `/` or `?`, where the host or the query
            // would otherwise end; a credential in the endpoint's URL.
            ("s3://AKIA:wJal/rK7x@bucket/prefix", "s3://AKIA:***@bucket/prefix", aws),
            ("s3://AKIA:wJa?lrK7x@bucket/p", "s3://AKIA:***@bucket/p", aws),
            ("s3://bkt/x?endpoint=http://u:hunter2@minio:9000", "s3://bkt/x?endpoint=http:***@minio:9000", aws),
        ];
        for (url, shown, hint) in cases {
            let err = Location::parse(url).unwrap_err().to_string();
            assert_eq!(err, format!("invalid repository location \"{shown}\": put credentials in {hint}, not in the URL"));
        }
        let sftp = Location::parse("sftp://backup@far/repo").unwrap();
        assert_eq!(sftp, Location::Sftp { endpoint: "far".into(), user: Some("backup".into()), root: "/repo/".into() });
        let err = Location::parse("ftp://u:p@ss@host/x").unwrap_err().to_string();
        assert!(err.starts_with("invalid repository location \"ftp://u:***@host/x\": unknown scheme"), "{err}");
    }

    #[test]
    fn parses_paths_and_urls() {
        assert_eq!(Location::parse("/srv/repo").unwrap(), Location::Fs("/srv/repo".into()));
        assert_eq!(
            Location::parse("s3://bkt/team/prod?endpoint=http://127.0.0.1:9000&region=eu").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                root: "/team/prod/".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu".into())
            }
        );
        assert_eq!(Location::parse("s3://bkt").unwrap().to_string(), "s3://bkt/");
        assert_eq!(
            Location::parse("gs://bkt/x?endpoint=http://127.0.0.1:4443&storage_class=NEARLINE&predefined_acl=projectPrivate").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                root: "/x/".into(),
                endpoint: Some("http://127.0.0.1:4443".into()),
                predefined_acl: Some("projectPrivate".into()),
                storage_class: Some("NEARLINE".into())
            }
        );
        let err = Location::parse("ftp://x/y").unwrap_err().to_string();
        assert!(err.contains("unknown scheme \"ftp\""), "{err}");
        assert!(Location::parse("s3:///nobucket").is_err());
    }

    #[test]
    fn splits_sftp_ports() {
        assert_eq!(split_port("h"), Some(("h".into(), None)));
        assert_eq!(split_port("h:2222"), Some(("h".into(), Some(2222))));
        assert_eq!(split_port("[::1]:22"), Some(("::1".into(), Some(22))));
        assert_eq!(split_port("h:ssh"), None);
    }
}
