//! An S3-protocol server for the tests: s3s-fs (which `scripts/test` installs) on a loopback
//! port, serving a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// The access key the server accepts.
pub const ACCESS: &str = "sluice-test";
/// Its secret key.
pub const SECRET: &str = "sluice-test-secret";

/// An s3s-fs server on a loopback port, serving a temporary directory.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    child: Child,
    /// The directory it serves: a bucket is a folder, an object a file.
    pub dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo"));
    let p = home.join("bin/s3s-fs");
    assert!(
        p.exists(),
        "the s3 tests need s3s-fs ({}); scripts/test installs it: cargo install --locked s3s-fs@0.14.1 --features binary",
        p.display()
    );
    p
}

/// Starts s3s-fs on a free port, serving a new temporary directory.
pub fn start_s3() -> S3Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS, "--secret-key", SECRET])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting s3s-fs");
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "s3s-fs did not start"
    );
    S3Server { url: format!("http://127.0.0.1:{port}"), port, child, dir }
}
