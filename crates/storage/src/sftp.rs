//! SFTP through the system's OpenSSH client.
//!
//! OpenDAL's own sftp service hangs where it should fail: it hands `host:port`
//! to ssh as a host name, sets no ConnectTimeout, and its connection pool
//! retries a failed login for 30 seconds and then reports only "timeout",
//! which the retry layer repeats; an unknown host key looked like a frozen
//! command. Here a failed login ends at once with ssh's own reason and how to
//! fix it, the user chooses the known_hosts file and how strictly it is
//! checked, and one session is shared, since SFTP multiplexes requests.

use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use opendal::raw::*;
use opendal::{Buffer, EntryMode, Error, ErrorKind, Metadata, Operator, OperatorBuilder, Result};
use openssh::{KnownHosts, SessionBuilder};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::{File, TokioCompatFile};
use openssh_sftp_client::fs::ReadDir;
use openssh_sftp_client::metadata::MetaData;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// How the server's host key is checked against known_hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Only hosts already in known_hosts (ssh's StrictHostKeyChecking=yes).
    Strict,
    /// Unknown hosts are trusted once and recorded; changed keys are refused.
    AcceptNew,
    /// Any key is accepted: for throw-away test servers only.
    Off,
}

impl HostKeyCheck {
    pub fn parse(text: &str) -> Option<HostKeyCheck> {
        match text {
            "" | "strict" | "yes" => Some(HostKeyCheck::Strict),
            "accept-new" => Some(HostKeyCheck::AcceptNew),
            "off" | "no" => Some(HostKeyCheck::Off),
            _ => None,
        }
    }

    fn known_hosts(self) -> KnownHosts {
        match self {
            HostKeyCheck::Strict => KnownHosts::Strict,
            HostKeyCheck::AcceptNew => KnownHosts::Add,
            HostKeyCheck::Off => KnownHosts::Accept,
        }
    }
}

/// Everything needed to reach one SFTP repository.
#[derive(Debug, Clone)]
pub struct SftpSettings {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Private key file; ssh's own defaults (agent, ~/.ssh/id_*) when unset.
    pub key: Option<String>,
    /// known_hosts file; ssh's own (~/.ssh/known_hosts) when unset.
    pub known_hosts: Option<String>,
    pub check: HostKeyCheck,
    /// `/abs/dir/`, `rel/dir/` (under the login directory) or empty.
    pub root: String,
    /// The storage timeout: ssh gives up connecting a little earlier, and
    /// drops the session after about as long without an answer.
    pub timeout: Duration,
}

impl SftpSettings {
    /// Shorter than the storage timeout, so that ssh's own reason is what the user reads.
    fn connect_timeout(&self) -> Duration {
        Duration::from_secs((self.timeout.as_secs() * 2 / 3).max(1))
    }

    fn target(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

pub fn operator(settings: SftpSettings) -> Operator {
    let info = AccessorInfo::default();
    info.set_root(&settings.root).set_scheme("sftp").set_native_capability(opendal::Capability {
        stat: true,
        read: true,
        write: true,
        write_can_multi: true,
        create_dir: true,
        delete: true,
        list: true,
        shared: true,
        ..Default::default()
    });
    let core = Core { info: Arc::new(info), settings, session: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) };
    OperatorBuilder::new(SftpBackend { core: Arc::new(core) }).finish()
}

struct Core {
    info: Arc<AccessorInfo>,
    settings: SftpSettings,
    session: Mutex<Option<Arc<Sftp>>>,
    /// Held while logging in, so concurrent requests wait for one ssh process.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpCore").field("target", &self.settings.target()).field("root", &self.settings.root).finish()
    }
}

impl Core {
    fn current(&self) -> Option<Arc<Sftp>> {
        self.session.lock().expect("not poisoned").clone()
    }

    async fn sftp(&self) -> Result<Arc<Sftp>> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one_login = self.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let sftp = Arc::new(self.connect().await?);
        *self.session.lock().expect("not poisoned") = Some(sftp.clone());
        Ok(sftp)
    }

    async fn connect(&self) -> Result<Sftp> {
        let s = &self.settings;
        let mut b = SessionBuilder::default();
        b.known_hosts_check(s.check.known_hosts())
            .connect_timeout(s.connect_timeout())
            .server_alive_interval((s.timeout / 3).max(Duration::from_secs(1)))
            .control_directory(std::env::temp_dir());
        if let Some(p) = s.port {
            b.port(p);
        }
        if let Some(u) = &s.user {
            b.user(u.clone());
        }
        if let Some(k) = &s.key {
            b.keyfile(k);
        }
        if let Some(k) = &s.known_hosts {
            b.user_known_hosts_file(k);
        }
        let session = b.connect(&s.host).await.map_err(|e| login_error(s, &e))?;
        let sftp = Sftp::from_session(session, SftpOptions::default()).await.map_err(|e| {
            Error::new(ErrorKind::Unexpected, format!("ssh {}: logged in, but the server offers no SFTP subsystem: {e}", s.target()))
        })?;
        self.make_root(&sftp).await?;
        Ok(sftp)
    }

    /// Creates the repository directory and its parents, as `init` needs and
    /// the other services do; a directory that cannot be made is reported here
    /// rather than as a puzzling failure of the first write.
    async fn make_root(&self, sftp: &Sftp) -> Result<()> {
        let root = self.settings.root.trim_end_matches('/');
        if root.is_empty() || root == "/" {
            return Ok(());
        }
        let mut fs = sftp.fs();
        let mut dirs: Vec<&Path> = Path::new(root).ancestors().filter(|p| !p.as_os_str().is_empty() && *p != Path::new("/")).collect();
        dirs.reverse();
        for dir in dirs {
            // An existing directory answers with an error too; the stat below decides.
            let _ = fs.create_dir(dir).await;
        }
        match fs.metadata(root).await {
            Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::NotADirectory,
                format!("sftp {}: {root} on the server is not a directory", self.settings.target()),
            )),
            Err(e) => Err(Error::new(
                sftp_kind(&e),
                format!("sftp {}: the directory {root} does not exist on the server and cannot be created ({e})", self.settings.target()),
            )),
        }
    }

    /// Maps an SFTP failure; a failure of the session itself (not an answer
    /// from the server) drops the session, so the next request logs in anew.
    fn fail(&self, e: SftpError) -> Error {
        if !matches!(e, SftpError::SftpError(..)) {
            self.session.lock().expect("not poisoned").take();
            return Error::new(ErrorKind::Unexpected, format!("sftp {}: the session broke: {e}", self.settings.target())).set_temporary();
        }
        Error::new(sftp_kind(&e), e.to_string())
    }

    fn path(&self, path: &str) -> String {
        format!("{}{}", self.settings.root, path.trim_start_matches('/'))
    }
}

fn sftp_kind(e: &SftpError) -> ErrorKind {
    match e {
        SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => ErrorKind::NotFound,
        SftpError::SftpError(SftpErrorKind::PermDenied, _) => ErrorKind::PermissionDenied,
        SftpError::SftpError(SftpErrorKind::OpUnsupported, _) => ErrorKind::Unsupported,
        _ => ErrorKind::Unexpected,
    }
}

/// One line from ssh's log, with what to do about it. Not temporary: a login
/// that failed this way fails the same way when repeated.
fn login_error(s: &SftpSettings, e: &openssh::Error) -> Error {
    let text = match e {
        openssh::Error::Connect(io) => io.to_string(),
        other => other.to_string(),
    };
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently added"))
        .unwrap_or("ssh failed without a message")
        .trim_end_matches('.');
    let target = s.target();
    let keyscan = match s.port {
        Some(p) => format!("ssh-keyscan -p {p} {}", s.host),
        None => format!("ssh-keyscan {}", s.host),
    };
    let file = s.known_hosts.as_deref().unwrap_or("~/.ssh/known_hosts");
    let (kind, what) = if text.contains("IDENTIFICATION HAS CHANGED") {
        (
            ErrorKind::PermissionDenied,
            format!(
                "the host key of {target} differs from the one in {file}: if the server was reinstalled, remove the old entry with ssh-keygen -R and add the new one"
            ),
        )
    } else if line.contains("Host key verification failed") || line.contains("No ED25519 host key is known") {
        (
            ErrorKind::PermissionDenied,
            format!(
                "the host key of {target} is not in {file} (strict checking): verify and add it with `{keyscan} >> {file}`, name another file in TRESOR_SFTP_KNOWN_HOSTS, or set TRESOR_SFTP_HOST_KEY_CHECK=accept-new"
            ),
        )
    } else if line.contains("Permission denied") {
        let key = s.key.as_deref().unwrap_or("ssh's default keys");
        (
            ErrorKind::PermissionDenied,
            format!(
                "{target} refused the login with {key} ({line}): add its public key to the server's authorized_keys, or set TRESOR_SFTP_KEY"
            ),
        )
    } else if ["Connection reset", "Connection closed", "kex_exchange_identification"].iter().any(|w| line.contains(w)) {
        (
            ErrorKind::Unexpected,
            format!(
                "{target} closed the connection before login ({line}): is it an SSH server that lets this client in (AllowUsers, MaxStartups)?"
            ),
        )
    } else if line.contains("timed out") {
        (ErrorKind::Unexpected, format!("no answer from {target} within {}s ({line})", s.connect_timeout().as_secs()))
    } else {
        (ErrorKind::Unexpected, format!("cannot log in to {target}: {line}"))
    };
    Error::new(kind, format!("ssh: {what}"))
}

#[derive(Debug, Clone)]
struct SftpBackend {
    core: Arc<Core>,
}

impl Access for SftpBackend {
    type Reader = SftpReader;
    type Writer = SftpWriter;
    type Lister = Option<SftpLister>;
    type Deleter = oio::OneShotDeleter<SftpDeleter>;

    fn info(&self) -> Arc<AccessorInfo> {
        self.core.info.clone()
    }

    async fn create_dir(&self, path: &str, _: OpCreateDir) -> Result<RpCreateDir> {
        let sftp = self.core.sftp().await?;
        let mut fs = sftp.fs();
        let full = self.core.path(path);
        let mut dir = self.core.settings.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir.push_str(part);
            dir.push('/');
            let _ = fs.create_dir(&dir).await;
        }
        fs.metadata(&full).await.map_err(|e| self.core.fail(e))?;
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, path: &str, _: OpStat) -> Result<RpStat> {
        let sftp = self.core.sftp().await?;
        let meta = sftp.fs().metadata(self.core.path(path)).await.map_err(|e| self.core.fail(e))?;
        Ok(RpStat::new(metadata(meta)))
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        let sftp = self.core.sftp().await?;
        let mut file = sftp.open(self.core.path(path)).await.map_err(|e| self.core.fail(e))?;
        if args.range().offset() != 0 {
            file.seek(SeekFrom::Start(args.range().offset())).await.map_err(new_std_io_error)?;
        }
        let size = args.range().size().map(|s| s as usize);
        Ok((RpRead::default(), SftpReader { core: self.core.clone(), _sftp: sftp, file, size, read: 0, buf: BytesMut::new() }))
    }

    /// Writes go to a temporary name and are renamed into place on close, so
    /// a killed process never leaves a truncated object under its final name.
    async fn write(&self, path: &str, _: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.create_dir(&format!("{dir}/"), OpCreateDir::default()).await?;
        }
        let sftp = self.core.sftp().await?;
        let full = self.core.path(path);
        let tmp = format!("{full}.tmp-{:016x}", rand::random::<u64>());
        let file = sftp.options().create(true).write(true).truncate(true).open(&tmp).await.map_err(|e| self.core.fail(e))?;
        let writer = SftpWriter { core: self.core.clone(), sftp, file: Box::pin(TokioCompatFile::new(file)), tmp, full };
        Ok((RpWrite::new(), writer))
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        Ok((RpDelete::default(), oio::OneShotDeleter::new(SftpDeleter { core: self.core.clone() })))
    }

    async fn list(&self, path: &str, _: OpList) -> Result<(RpList, Self::Lister)> {
        let sftp = self.core.sftp().await?;
        let dir = match sftp.fs().open_dir(self.core.path(path)).await {
            Ok(dir) => dir.read_dir(),
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Ok((RpList::default(), None)),
            Err(e) => return Err(self.core.fail(e)),
        };
        let prefix = if path == "/" { String::new() } else { path.to_string() };
        Ok((RpList::default(), Some(SftpLister { core: self.core.clone(), dir: Box::pin(dir), prefix })))
    }
}

fn metadata(meta: MetaData) -> Metadata {
    let mode = match meta.file_type() {
        Some(t) if t.is_file() => EntryMode::FILE,
        Some(t) if t.is_dir() => EntryMode::DIR,
        _ => EntryMode::Unknown,
    };
    let mut m = Metadata::new(mode);
    if let Some(len) = meta.len() {
        m.set_content_length(len);
    }
    if let Some(t) = meta.modified().and_then(|t| Timestamp::try_from(t.as_system_time()).ok()) {
        m.set_last_modified(t);
    }
    m
}

struct SftpReader {
    core: Arc<Core>,
    /// The session must outlive the open file.
    _sftp: Arc<Sftp>,
    file: File,
    size: Option<usize>,
    read: usize,
    buf: BytesMut,
}

impl oio::Read for SftpReader {
    async fn read(&mut self) -> Result<Buffer> {
        const CHUNK: usize = 2 << 20;
        let want = match self.size {
            Some(size) if self.read >= size => return Ok(Buffer::new()),
            Some(size) => (size - self.read).min(CHUNK),
            None => CHUNK,
        };
        self.buf.reserve(want);
        let Some(bytes) = self.file.read(want as u32, self.buf.split_off(0)).await.map_err(|e| self.core.fail(e))? else {
            return Ok(Buffer::new());
        };
        self.read += bytes.len();
        self.buf = bytes;
        Ok(Buffer::from(self.buf.split().freeze()))
    }
}

struct SftpWriter {
    core: Arc<Core>,
    sftp: Arc<Sftp>,
    file: Pin<Box<TokioCompatFile>>,
    tmp: String,
    full: String,
}

impl oio::Write for SftpWriter {
    async fn write(&mut self, mut bs: Buffer) -> Result<()> {
        while bs.has_remaining() {
            let n = self.file.write(bs.chunk()).await.map_err(new_std_io_error)?;
            bs.advance(n);
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.file.shutdown().await.map_err(new_std_io_error)?;
        self.sftp.fs().rename(&self.tmp, &self.full).await.map_err(|e| self.core.fail(e))?;
        Ok(Metadata::default())
    }

    async fn abort(&mut self) -> Result<()> {
        match self.sftp.fs().remove_file(&self.tmp).await {
            Ok(()) | Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => Ok(()),
            Err(e) => Err(self.core.fail(e)),
        }
    }
}

struct SftpLister {
    core: Arc<Core>,
    dir: Pin<Box<ReadDir>>,
    prefix: String,
}

impl oio::List for SftpLister {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        while let Some(item) = self.dir.next().await {
            let e = item.map_err(|e| self.core.fail(e))?;
            let name = e.filename().to_string_lossy();
            let path = match name.as_ref() {
                ".." => continue,
                "." if self.prefix.is_empty() => "/".to_string(),
                "." => self.prefix.clone(),
                n if e.file_type().is_some_and(|t| t.is_dir()) => format!("{}{n}/", self.prefix),
                n => format!("{}{n}", self.prefix),
            };
            return Ok(Some(oio::Entry::new(&path, metadata(e.metadata()))));
        }
        Ok(None)
    }
}

struct SftpDeleter {
    core: Arc<Core>,
}

impl oio::OneShotDelete for SftpDeleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        let sftp = self.core.sftp().await?;
        let mut fs = sftp.fs();
        let full = self.core.path(&path);
        let res = if path.ends_with('/') { fs.remove_dir(&full).await } else { fs.remove_file(&full).await };
        match res {
            Ok(()) | Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => Ok(()),
            Err(e) => Err(self.core.fail(e)),
        }
    }
}
