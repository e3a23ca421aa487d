//! Test harness for tresor: real servers on free loopback ports, torn down on drop.
//!
//! - [`S3Server`]: an in-process S3 endpoint (s3s + s3s-fs) backed by a temp directory,
//!   optionally with S3 Object Lock retention enforced.
//! - [`RedisServer`]: a real `redis-server` on a free port, in a temp directory.
//! - [`net::free_port`]: a free loopback port for harnesses that spawn external servers.

pub mod net;
mod object_lock;
mod redis;
mod s3;

pub use redis::RedisServer;
pub use s3::S3Server;
