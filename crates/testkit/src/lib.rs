//! Test harness for tresor: real servers on free loopback ports, torn down on drop.
//!
//! - [`S3Server`]: an in-process S3 endpoint (s3s + s3s-fs) backed by a temp directory,
//!   optionally with S3 Object Lock retention enforced.
//! - [`KubeServer`]: an in-process fake Kubernetes API server, faithful enough for `kubectl`,
//!   with bearer-token authentication, RBAC and a request log for least-privilege checks.
//! - [`AlertmanagerServer`]: a real Prometheus Alertmanager, for what it holds active.
//! - [`EtcdServer`]: a real single-member etcd on free ports.
//! - [`PostgresServer`]: a real PostgreSQL 15 cluster (initdb in a temp dir).
//! - [`RedisServer`]: a real `redis-server` on a free port, in a temp directory.
//! - [`reachable_by_all`]: a copy of a program that other users (postgres, nobody) can run.
//! - [`net::free_port`]: a free loopback port for harnesses that spawn external servers.
//! - [`imports::import_cycle`]: an import cycle between a crate's modules, from its source text.

mod alertmanager;
mod azurite;
mod certs;
mod etcd;
mod gcs;
pub mod imports;
mod kube;
mod kube_admission;
mod kube_audit;
mod kube_auth;
mod kube_controllers;
mod kube_store;
mod kube_tls;
mod kube_validate;
pub mod net;
mod postgres;
mod reach;
mod redis;
mod s3;
mod s3_rules;
mod sshd;
mod tcp;
mod webdav;

pub use alertmanager::AlertmanagerServer;
pub use azurite::AzuriteServer;
pub use certs::Certs;
pub use etcd::{EtcdServer, EtcdTls};
pub use gcs::GcsServer;
pub use kube::KubeServer;
pub use kube_audit::{AUDIT_LOG_VAR, Coverage};
pub use postgres::PostgresServer;
pub use reach::reachable_by_all;
pub use redis::RedisServer;
pub use s3::S3Server;
pub use sshd::SshServer;
pub use tcp::{RudeServer, Rudeness};
pub use webdav::WebdavServer;
