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

#[test]
fn config_file_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, bin().arg("keygen").output().unwrap().stdout).unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("vault.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nmaster_key_file = {:?}\naudience = \"vault\"\n[identity_providers]\nvneid = \"AAAA\"\n",
            data, key
        ),
    )
    .unwrap();
    // Everything from the file.
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("VAULT_MASTER_KEY_FILE")
        .env_remove("VAULT_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("meta").exists(), "the data folder of the file was used");
    // A flag beats the file; the environment beats the file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("data = {:?}\nmaster_key_file = \"/nonexistent\"\n", data)).unwrap();
    let out = bin().args(["check", "--config"]).arg(&bad).arg("--master-key-file").arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(["check", "--config"]).arg(&bad).env("VAULT_MASTER_KEY_FILE", &key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(["check", "--config"]).arg(&bad).env_remove("VAULT_MASTER_KEY_FILE").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    // Malformed files and unknown settings are clear errors.
    std::fs::write(&bad, "data = [").unwrap();
    let out = bin().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config file"));
    std::fs::write(&bad, "colour = \"blue\"\n").unwrap();
    let out = bin().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "{}", String::from_utf8_lossy(&out.stderr));
    // A busy port is a clear error.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = bin()
        .args(["--data"])
        .arg(dir.path().join("d2"))
        .arg("--master-key-file")
        .arg(&key)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
