//! Proves `S3Server` against a real S3 client (OpenDAL, path-style SigV4).

use std::net::TcpStream;

use opendal::{EntryMode, ErrorKind, Operator, services::S3};
use tresor_testkit::{
    S3Server,
    net::{free_port, reserved_listener},
};

const MIB: usize = 1 << 20;

fn operator(server: &S3Server, secret: &str) -> Operator {
    let builder = S3::default()
        .root("/")
        .bucket(server.bucket())
        .endpoint(&server.endpoint())
        .region(server.region())
        .access_key_id(server.access_key())
        .secret_access_key(secret);
    Operator::new(builder).expect("build S3 operator").finish()
}

/// Deterministic incompressible bytes, distinct per `seed` (xorshift64).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sorted paths of all files in the bucket.
async fn files(op: &Operator) -> Vec<String> {
    let mut paths: Vec<String> = (op.list_with("").recursive(true).await)
        .expect("list")
        .into_iter()
        .filter(|e| e.metadata().mode() == EntryMode::FILE)
        .map(|e| e.path().to_owned())
        .collect();
    paths.sort();
    paths
}

/// PUT / GET / LIST / DELETE round trip, including pack-sized objects.
async fn exercise(server: &S3Server) {
    let op = operator(server, server.secret_key());
    let small = data(1000, 1);
    op.write("dir/small.bin", small.clone()).await.expect("put small");
    assert_eq!(op.read("dir/small.bin").await.expect("get small").to_vec(), small);
    assert_eq!(op.stat("dir/small.bin").await.expect("head").content_length(), 1000);
    // The object is a plain file on disk, so tests can inspect or corrupt it.
    let on_disk = server.root().join(server.bucket()).join("dir/small.bin");
    assert_eq!(std::fs::read(&on_disk).expect("object file"), small);
    assert_eq!(server.object_path("dir/small.bin"), on_disk);

    // A 20 MiB pack in one PutObject…
    let single = data(20 * MIB, 2);
    op.write("packs/single", single.clone()).await.expect("put 20 MiB");
    // …and one as a multipart upload (parts of 8, 8 and 4 MiB). No `.concurrent(n > 1)`:
    // without opendal's `executors-tokio` feature that panics.
    let multi = data(20 * MIB, 3);
    let mut writer = (op.writer_with("packs/multi").chunk(8 * MIB).await).expect("start multipart upload");
    for piece in multi.chunks(3 * MIB) {
        writer.write(piece.to_vec()).await.expect("upload part");
    }
    let meta = writer.close().await.expect("complete multipart upload");
    // Multipart ETags are `md5-of-part-md5s-<parts>`; this proves three parts were sent.
    assert!(meta.etag().expect("etag").ends_with("-3\""), "{meta:?}");
    // `assert!(==)`, not `assert_eq!`: a failure must not print 20 MiB.
    assert!(op.read("packs/single").await.expect("get single").to_vec() == single);
    assert!(op.read("packs/multi").await.expect("get multi").to_vec() == multi);
    let range = op.read_with("packs/multi").range(9 * MIB as u64..9 * MIB as u64 + 10).await;
    assert_eq!(range.expect("ranged get").to_vec(), &multi[9 * MIB..9 * MIB + 10]);

    assert_eq!(files(&op).await, ["dir/small.bin", "packs/multi", "packs/single"]);

    op.delete("dir/small.bin").await.expect("delete");
    assert_eq!(op.read("dir/small.bin").await.unwrap_err().kind(), ErrorKind::NotFound);
    // Batch delete (DeleteObjects), as pruning will use.
    op.delete_iter(["packs/single", "packs/multi"]).await.expect("batch delete");
    assert!(files(&op).await.is_empty());

    // A request signed with the wrong secret is refused with 403.
    let err = operator(server, "wrong-secret").write("intruder", vec![1u8]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(!server.object_path("intruder").exists());
}

#[tokio::test]
async fn two_servers_serve_a_real_s3_client() {
    let (a, b) = (S3Server::start(), S3Server::start());
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.root(), b.root());
    tokio::join!(exercise(&a), exercise(&b));
}

#[test]
fn drop_stops_server_and_removes_store() {
    let server = S3Server::start();
    let addr = server.endpoint().trim_start_matches("http://").to_owned();
    let root = server.root().to_owned();
    TcpStream::connect(&addr).expect("listener is bound once start returns");
    assert!(root.join("tresor-test").is_dir());

    let env = server.env();
    assert!(env.contains(&("AWS_ENDPOINT_URL".into(), server.endpoint())));
    assert!(env.contains(&("AWS_REGION".into(), "us-east-1".into())));

    drop(server);
    assert!(!root.exists());
    assert!(TcpStream::connect(&addr).is_err());
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    range.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_free_port_is_bindable_below_the_ephemeral_range_and_handed_out_once() {
    let port = free_port();
    assert!(port > 0 && port < ephemeral_low(), "{port} below {}", ephemeral_low());
    assert_ne!(free_port(), port);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
}

#[test]
fn a_reserved_port_lies_below_the_ephemeral_range_and_binds_again_once_closed() {
    let low = ephemeral_low();
    let first = reserved_listener();
    let port = first.local_addr().unwrap().port();
    assert!(port < low, "{port} below {low}");
    let second = reserved_listener();
    assert_ne!(second.local_addr().unwrap().port(), port, "a port is handed out once while held");
    drop(first);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the closed port binds again");
}
