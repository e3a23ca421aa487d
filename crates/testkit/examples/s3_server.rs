//! The in-process S3 server as a program, for benchmarks (bench/bucket.py):
//! prints its endpoint, bucket, keys and store directory as one line of
//! JSON, and serves until its standard input closes.

use std::io::Read;

fn main() {
    let server = tresor_testkit::S3Server::start();
    println!(
        "{{\"endpoint\":\"{}\",\"bucket\":\"{}\",\"access_key\":\"{}\",\"secret_key\":\"{}\",\"region\":\"{}\",\"root\":\"{}\"}}",
        server.endpoint(),
        server.bucket(),
        server.access_key(),
        server.secret_key(),
        server.region(),
        server.root().display()
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
