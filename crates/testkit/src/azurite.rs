//! Microsoft's Azurite (the npm package's `azurite-blob`) over a temp
//! directory, with the well-known development account and one container.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::net::free_port;
use crate::tcp::{Spawned, spawn_listening};

/// Azurite's development account and its published key (the same in every
/// Azurite, so nothing secret).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "tresor";
const API_VERSION: &str = "2021-08-06";

/// Where azurite-blob is; `TRESOR_AZURITE` overrides (scripts/test.sh installs it with npm).
fn azurite_bin() -> PathBuf {
    std::env::var_os("TRESOR_AZURITE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("azurite-blob"))
}

/// An Azure Blob endpoint on a free loopback port with the container
/// [`container`](Self::container). Azurite keeps blobs in extent files, not
/// by name, so tests reach stored objects through [`corrupt`](Self::corrupt).
/// Dropping it stops Azurite and deletes its files.
pub struct AzuriteServer {
    _child: Spawned,
    port: u16,
    _dir: TempDir,
}

impl AzuriteServer {
    pub fn start() -> AzuriteServer {
        let dir = tempfile::Builder::new().prefix("tresor-azurite-").tempdir().expect("temp dir for azurite");
        let port = free_port();
        let mut cmd = Command::new(azurite_bin());
        // --skipApiVersionCheck: OpenDAL may speak a newer API version than this Azurite knows.
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck", "--location"])
            .arg(dir.path());
        let child = spawn_listening(cmd, port, &dir.path().join("azurite.log"));
        let server = AzuriteServer { _child: child, port, _dir: dir };
        server.create_container(CONTAINER);
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container that exists.
    pub fn container(&self) -> &'static str {
        CONTAINER
    }

    /// The account key: tests check that no error prints it.
    pub fn key(&self) -> &'static str {
        KEY
    }

    /// The account's blob endpoint, path-style as Azurite serves it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The variables tresor reads the account from.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT".into(), ACCOUNT.into()),
            ("AZURE_STORAGE_KEY".into(), KEY.into()),
            ("AZURE_STORAGE_ENDPOINT".into(), self.endpoint()),
        ]
    }

    /// Creates a container through the Blob API (Shared Key signed).
    pub fn create_container(&self, name: &str) {
        let date = http_date(SystemTime::now());
        let resource = format!("/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container");
        // Verb, eleven empty standard headers, the x-ms- headers, the resource.
        let to_sign = format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}");
        let key = B64.decode(KEY).expect("account key is base64");
        let signature = B64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\n\
             x-ms-version: {API_VERSION}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect to azurite");
        conn.write_all(request.as_bytes()).expect("send create container");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read azurite's answer");
        assert!(answer.starts_with("HTTP/1.1 201"), "create container {name}: {answer}");
    }

    /// Flips one byte in the middle of the biggest blob under `prefix`
    /// (through the API: Azurite's files do not map to blob names); returns
    /// its name.
    pub fn corrupt(&self, prefix: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let builder =
            opendal::services::Azblob::default().container(CONTAINER).endpoint(&self.endpoint()).account_name(ACCOUNT).account_key(KEY);
        let op = opendal::Operator::new(builder).expect("azblob operator").finish();
        runtime.block_on(async {
            let entries = op.list_with(prefix).recursive(true).await.expect("list blobs");
            let mut biggest = (String::new(), 0);
            for e in entries.iter().filter(|e| e.metadata().is_file()) {
                let size = op.stat(e.path()).await.expect("stat blob").content_length();
                if size > biggest.1 {
                    biggest = (e.path().to_string(), size);
                }
            }
            let mut bytes = op.read(&biggest.0).await.expect("read blob").to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            op.write(&biggest.0, bytes).await.expect("write blob back");
            biggest.0
        })
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // RFC 2104 with SHA-256's 64-byte block; Azure keys are shorter than a block.
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// RFC 1123 date, as the `x-ms-date` header wants it.
fn http_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + std::time::Duration::from_secs(1_796_028_537)), "Mon, 30 Nov 2026 08:48:57 GMT");
    }

    #[test]
    fn signs_like_rfc_4231() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(B64.encode(mac), "sDRMYdjbOFNcqK/OrwvxK4gdwgDJgz2nJuk3bC4yz/c=");
    }
}
