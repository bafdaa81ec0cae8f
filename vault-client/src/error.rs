//! The client's errors, and the exit codes the `vault` command maps them to.

use std::path::PathBuf;

/// Everything that can go wrong talking to a vault server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body (api.md: `{"error": {"code", "message"}}`).
    #[error("the server refused ({status} {code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The contract's error code (`forbidden`, `grant_required`, ...).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server could not be reached, or the transfer broke off.
    #[error("cannot talk to the server: {0}")]
    Transport(String),
    /// The server answered something that is not the contract.
    #[error("the server's answer is not what the contract says: {0}")]
    Protocol(String),
    /// What the server sent does not verify: a content whose digest differs, an issuer
    /// signature that fails, a checkpoint signed by another key, an inconsistent log.
    #[error("verification failed: {0}")]
    Verification(String),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bad input from the caller (a malformed manifest, id, key file...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The exit code of the `vault` command for this error (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) | Error::Io { .. } => 1,
            Error::Api { status: 404 | 410, .. } => 4,
            Error::Api { status, .. } if *status >= 500 => 6,
            Error::Api { .. } => 3,
            Error::Verification(_) => 5,
            Error::Transport(_) | Error::Protocol(_) => 6,
        }
    }

    /// The contract's error code, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What a person should do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Api { code, .. } => match code.as_str() {
                "unauthenticated" => "check the token (VAULT_TOKEN) or the agency key file, key id and clock",
                "grant_required" => "the owner must grant this agency access for this purpose (vault grant)",
                "purpose_required" => "agencies state a purpose: --purpose <procedure code> or VAULT_PURPOSE",
                "forbidden" => "this caller may not do that for this owner",
                "conflict" => "upload the content first (vault deposit does both)",
                "sealed" => "the server is starting; try again in a moment",
                _ => return None,
            },
            Error::Transport(_) => "is the server running? check --server / VAULT_SERVER",
            Error::Verification(_) => "do not trust this answer; report it to the vault's operator",
            _ => return None,
        })
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        // The chain holds the useful part ("connection refused").
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Transport(msg)
    }
}
