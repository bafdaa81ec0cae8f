//! The `vault` command line without a server: usage, keys, tokens, exit codes. (Also makes
//! cargo build the binary for the workspace's end-to-end tests in the root `tests/`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::Command;

fn vault() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vault"));
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

#[test]
fn keygen_writes_a_private_key_file_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agency.key");
    let out = vault().args(["--json", "keygen", "-o"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["public_key"].as_str().unwrap().len(), 44);
    assert!(v["secret_key"].is_null(), "a key written to a file is not also printed");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = vault().args(["keygen", "-o"]).arg(&key).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwriting"));
}

#[test]
fn tokens_are_minted_from_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    assert!(vault().args(["keygen", "-o"]).arg(&key).output().unwrap().status.success());
    let out = vault()
        .args(["token", "--agency", "so-tp", "--key-id", "k1", "--lifetime", "60", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    assert_eq!(t.trim().split('.').count(), 3);
    // Without the key file, or with a malformed one: exit 1 and what to do.
    let out = vault().args(["token", "--agency", "so-tp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-file"));
    std::fs::write(&key, "garbage").unwrap();
    let out = vault().args(["token", "--agency", "so-tp", "--key-id", "k1", "--key-file"]).arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_errors_and_unreachable_servers_have_their_exit_codes() {
    // Wrong usage: clap's 2.
    assert_eq!(vault().arg("no-such-command").output().unwrap().status.code(), Some(2));
    assert_eq!(vault().args(["list", "citizen:12"]).output().unwrap().status.code(), Some(2));
    assert_eq!(vault().args(["reuse", "citizen:001099012345"]).output().unwrap().status.code(), Some(2));
    // Deposit without owner/type: 1, with the fix in the message.
    let out = vault().args(["deposit", "x.pdf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--owner"));
    // Nobody listening: 6, with a hint, and --json gets a JSON error on standard output.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = vault()
        .args(["--json", "--server", &format!("http://127.0.0.1:{port}"), "list", "citizen:001099012345"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["exit_code"], 6);
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint"));
}

#[test]
fn verify_export_rejects_what_is_not_an_export() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.tar");
    std::fs::write(&f, vec![0u8; 2048]).unwrap();
    let key = "vault+01020304+AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let out = vault().args(["verify-export", "--vault-key", key]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let out = vault().arg("verify-export").arg(&f).env("VAULT_STATE", dir.path().join("s.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn digests_match_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a");
    std::fs::write(&f, b"abc").unwrap();
    let out = vault().arg("digest").arg(&f).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&vault::Digest::of(b"abc").to_string()));
}
