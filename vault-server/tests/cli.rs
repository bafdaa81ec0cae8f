//! The operator subcommands of the binary. (Also makes cargo build the binary for the
//! workspace's end-to-end tests in the root `tests/`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vault-server"))
}

#[test]
fn keygen_prints_usable_keys() {
    let out = bin().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.trim().len(), 44, "{key}");
    let out = bin().args(["keygen", "--ed25519"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("private (seed): ") && text.contains("public: "), "{text}");
}

#[test]
fn check_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let out = bin().arg("keygen").output().unwrap();
    std::fs::write(&key, &out.stdout).unwrap();
    let data = dir.path().join("data");
    let out =
        bin().args(["check", "--read-data", "--data"]).arg(&data).arg("--master-key-file").arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems found"));
    // A wrong key for the existing vault: clear message, exit 2.
    let other = dir.path().join("other.key");
    std::fs::write(&other, bin().arg("keygen").output().unwrap().stdout).unwrap();
    let out = bin().args(["check", "--data"]).arg(&data).arg("--master-key-file").arg(&other).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key does not open this vault"));
    // A malformed key file.
    std::fs::write(&other, "not a key").unwrap();
    let out = bin().args(["check", "--data"]).arg(&data).arg("--master-key-file").arg(&other).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("base64 of exactly 32 bytes"));
    // No key at all.
    let out = bin().args(["check", "--data"]).arg(&data).env_remove("VAULT_MASTER_KEY_FILE").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no master key"));
    // Rotation, then the old key no longer opens it and the new one does.
    let new = dir.path().join("new.key");
    std::fs::write(&new, bin().arg("keygen").output().unwrap().stdout).unwrap();
    let out = bin()
        .args(["rotate-master-key", "--data"])
        .arg(&data)
        .arg("--master-key-file")
        .arg(&key)
        .arg("--new-master-key-file")
        .arg(&new)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(["check", "--data"]).arg(&data).arg("--master-key-file").arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["check", "--data"]).arg(&data).arg("--master-key-file").arg(&new).output().unwrap();
    assert!(out.status.success());
}
