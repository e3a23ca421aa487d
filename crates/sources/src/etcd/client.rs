//! The few etcd v3 gRPC calls tresor makes (count keys, stream a snapshot,
//! member status, authenticate), with their messages declared by hand.
//!
//! A generated client would need `protoc` at build time; these six
//! messages are all tresor reads, so they are written out here, each field
//! numbered as in etcd's `rpc.proto` and `kv.proto` (package
//! `etcdserverpb`). Fields tresor never reads are left out: protobuf skips
//! unknown fields on decode.

use std::path::PathBuf;
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status as GrpcStatus, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
    #[prost(bool, tag = "9")]
    count_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(int64, tag = "4")]
    count: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotResponse {
    #[prost(bytes = "vec", tag = "3")]
    pub blob: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(int64, tag = "3")]
    db_size: i64,
    #[prost(uint64, tag = "4")]
    leader: u64,
    #[prost(bool, tag = "10")]
    is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthenticateResponse {
    #[prost(string, tag = "2")]
    token: String,
}

/// Where and how to reach etcd: endpoints tried in order, TLS files, a user.
#[derive(Clone, Default)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub tls: Option<Tls>,
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// Client TLS as etcdctl takes it: a CA, and a certificate with its key
/// for servers started with `--client-cert-auth`.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What a member says of itself.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    pub version: String,
    pub member_id: u64,
    pub leader: u64,
    pub db_size: i64,
    pub is_learner: bool,
}

/// A failed exchange with etcd: what to say, and whether the server was
/// out of reach (refused, reset, timed out), which a retry may cure.
#[derive(Debug)]
pub struct Failure {
    pub text: String,
    pub unreachable: bool,
}

impl From<String> for Failure {
    fn from(text: String) -> Failure {
        Failure { text, unreachable: false }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether an error came of the server being out of reach: an
/// `io::Error` of such a kind among its causes.
fn out_of_reach(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::TimedOut | K::HostUnreachable | K::NetworkUnreachable
            )
        })
    })
}

pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// What a server that ends the connection right after the TLS
    /// handshake means, for this client's certificate (or its absence).
    refused: Option<String>,
    answered: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects to the first endpoint that answers, and authenticates when
    /// a user is given.
    pub async fn connect(config: &Config) -> Result<Client, Failure> {
        let mut last = Failure::from(String::from("no endpoint given"));
        for endpoint in &config.endpoints {
            match channel(endpoint, config.tls.as_ref()).await {
                Ok(channel) => {
                    let refused = config.tls.as_ref().map(refusal);
                    let mut client = Client { grpc: tonic::client::Grpc::new(channel), token: None, refused, answered: false };
                    if let Some((name, password)) = &config.user {
                        client.authenticate(name, password).await?;
                    }
                    return Ok(client);
                }
                Err(e) => last = Failure { text: format!("{endpoint}: {}", e.text), ..e },
            }
        }
        Err(last)
    }

    async fn authenticate(&mut self, name: &str, password: &str) -> Result<(), Failure> {
        let req = AuthenticateRequest { name: name.into(), password: password.into() };
        let resp: AuthenticateResponse = self.unary(req, "/etcdserverpb.Auth/Authenticate").await?;
        self.token = Some(resp.token.parse().map_err(|_| "etcd returned an unusable auth token".to_string())?);
        Ok(())
    }

    fn request<M>(&self, message: M) -> Request<M> {
        let mut req = Request::new(message);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("token", token.clone());
        }
        req
    }

    async fn unary<Q, R>(&mut self, message: Q, path: &'static str) -> Result<R, Failure>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let req = self.request(message);
        self.grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let resp = self.grpc.unary(req, PathAndQuery::from_static(path), ProstCodec::default()).await.map_err(|s| self.status_text(s))?;
        self.answered = true;
        Ok(resp.into_inner())
    }

    /// With TLS 1.3 a server checks the client's certificate after the
    /// handshake, so its refusal ends the connection during the first call:
    /// as its alert, a broken pipe or a cancelled stream, depending on
    /// what the client was doing. A call the server answered itself has
    /// a gRPC status and no transport cause.
    fn status_text(&self, s: GrpcStatus) -> Failure {
        let cause = std::error::Error::source(&s);
        let transport = cause.is_some() || s.code() == tonic::Code::Cancelled;
        let unreachable = cause.is_some_and(out_of_reach);
        let text = match (&self.refused, cause) {
            (Some(refused), _) if transport && !self.answered && !unreachable => refused.clone(),
            (_, Some(cause)) if s.message().is_empty() || s.code() == tonic::Code::Unknown => error_chain(cause),
            _ => s.message().to_string(),
        };
        Failure { text, unreachable }
    }

    /// The number of keys and the revision they were counted at.
    pub async fn count_keys(&mut self) -> Result<(i64, i64), Failure> {
        // A key and range end of one zero byte each mean every key.
        let req = RangeRequest { key: vec![0], range_end: vec![0], count_only: true };
        let resp: RangeResponse = self.unary(req, "/etcdserverpb.KV/Range").await?;
        Ok((resp.header.map_or(0, |h| h.revision), resp.count))
    }

    pub async fn snapshot(&mut self) -> Result<Streaming<SnapshotResponse>, Failure> {
        let req = self.request(SnapshotRequest {});
        self.grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let path = PathAndQuery::from_static("/etcdserverpb.Maintenance/Snapshot");
        let resp = self.grpc.server_streaming(req, path, ProstCodec::default()).await.map_err(|s| self.status_text(s))?;
        self.answered = true;
        Ok(resp.into_inner())
    }

    pub async fn status(&mut self) -> Result<MemberStatus, Failure> {
        let resp: StatusResponse = self.unary(StatusRequest {}, "/etcdserverpb.Maintenance/Status").await?;
        Ok(MemberStatus {
            version: resp.version,
            member_id: resp.header.map_or(0, |h| h.member_id),
            leader: resp.leader,
            db_size: resp.db_size,
            is_learner: resp.is_learner,
        })
    }
}

async fn channel(endpoint: &str, tls: Option<&Tls>) -> Result<Channel, Failure> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
        .map_err(|e| format!("not an endpoint: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(600))
        // A connection whose peer vanished is found within a minute, not at TCP's leisure.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls_config(tls)?).map_err(|e| format!("TLS: {}", error_chain(&e)))?;
    }
    ep.connect().await.map_err(|e| match untrusted(&e) {
        Some(why) => format!("the server's certificate is not trusted ({why:?}): is cacert= the CA that signed it?").into(),
        None => Failure { text: error_chain(&e), unreachable: out_of_reach(&e) },
    })
}

fn untrusted(e: &(dyn std::error::Error + 'static)) -> Option<rustls::CertificateError> {
    causes(e).find_map(|c| match c.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(why)) => Some(why.clone()),
        _ => None,
    })
}

/// An error and its causes, including the error an `io::Error` wraps
/// (which its `source()` skips).
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(e);
    std::iter::from_fn(move || {
        let c = next?;
        let wrapped =
            c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|inner| inner as &(dyn std::error::Error + 'static));
        next = wrapped.or_else(|| c.source());
        Some(c)
    })
}

fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Ok(config.identity(Identity::from_pem(read(cert)?, read(key)?))),
        (None, None) => Ok(config),
        _ => Err("a client certificate needs its key, and a key its certificate (cert= and key=)".into()),
    }
}

/// A transport error with its causes, whose last one usually says what
/// went wrong (refused, unknown issuer, certificate required).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        cause = c.source();
    }
    text
}

fn refusal(tls: &Tls) -> String {
    match &tls.cert {
        Some(cert) => {
            format!("the server refused the client certificate {} (expired, or not signed by a CA the server trusts)", cert.display())
        }
        None => "the server wants a client certificate: give cert= and key= (or TRESOR_ETCD_CERT and TRESOR_ETCD_KEY)".into(),
    }
}
