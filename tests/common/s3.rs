//! A real S3-compatible server for the tests: `s3s-fs` (built once by `tests/s3-setup.sh`,
//! found through `VAULT_S3_SERVER`), on a free port of 127.0.0.1 over a temporary folder, with
//! SigV4 credentials; stopped and removed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    _root: Option<tempfile::TempDir>,
    root: PathBuf,
    pub port: u16,
    pub bucket: String,
}

pub const ACCESS_KEY: &str = "vault-test-access";
pub const SECRET_KEY: &str = "vault-test-secret-key-0123456789";

fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("VAULT_S3_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let p = PathBuf::from(cache).join("vault-ci/s3s-fs-0.14.1/bin/s3s-fs");
    assert!(p.exists(), "no S3 server: run tests/s3-setup.sh (tests/all.sh does) or set VAULT_S3_SERVER");
    p
}

impl S3Server {
    /// Starts a server with one empty bucket.
    pub fn start(bucket: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut s = Self::start_in(root.path(), bucket);
        s._root = Some(root);
        s
    }

    /// Starts a server over the folder `root` (kept: a restart over it finds its objects),
    /// creating `bucket` in it if missing.
    pub fn start_in(root: &std::path::Path, bucket: &str) -> Self {
        // s3s-fs keeps a bucket as a folder of its root.
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Self::spawn(root, port);
        Self { child, _root: None, root: root.to_path_buf(), port, bucket: bucket.to_owned() }
    }

    /// Stops the server (SIGKILL): its clients see connections refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and folder.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.root, self.port);
    }

    /// The folder where the server keeps its buckets.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    fn spawn(root: &std::path::Path, port: u16) -> Child {
        let child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the S3 server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `object_store` settings for this server.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("endpoint", self.endpoint()),
            ("region", "us-east-1".into()),
            ("access_key_id", ACCESS_KEY.into()),
            ("secret_access_key", SECRET_KEY.into()),
            ("allow_http", "true".into()),
        ]
    }

    /// The same as the `AWS_*` environment of a server process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub fn blobs(&self, prefix: &str, spool: PathBuf) -> vault::storage::s3_store::S3Blobs {
        let s = self.settings();
        let settings: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vault::storage::s3_store::S3Blobs::open_with(&format!("s3://{}/{prefix}", self.bucket), spool, &settings)
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
